"""Project corrections applied to the loaded database (documented in database/README.md).

Metadata, caching and one numerical method; nothing here changes a number of the
database.

Particle lookup.  SModelS averages the particles of every cluster of SMS into a new
``MultiParticle``, whose constructor first scans all live particles for one with the same
attributes and constituents, copying each candidate's attribute dict and comparing
masses as ``Unum`` objects; on models with many clusters this scan took half of a walker
step.  ``fast_multiparticle_lookup`` makes the same scan with the same outcome (the same
particle returned, or the same new one made), rejecting candidates by their
constituents first and comparing attributes without copies.

SMS dictionary.  Loading builds SModelS' map between unique SMS and txnames
(``ExpSMSDict``), testing membership of each txname in a list or iterator of all ~4000
(``tx in self.getTx()``, ``tx in selectedTx``): quadratic, 2 s of a 5 s load.
``fast_sms_dictionary`` gives the same tests through hashing: txnames compare by
identity (SModelS defines no ``__eq__`` for them), so the outcome is the same.

Nuisance profile.  SModelS profiles the nuisances of its simplified likelihoods with two
general-purpose minimisers per call; ``nuisance.install`` solves the same convex problem
exactly by Newton's method (about 5x faster evaluations; likelihoods agree to 1e-9,
see ``protomodels/nuisance.py``).

Interpolation cache.  SModelS memoises its efficiency and upper-limit map lookups
(``TxNameData.getValueFor``: a Delaunay interpolation, up to several ms each, with the
point rounded to 2 digits) in one LRU of 128 entries shared by all ~4000 maps, so a
walker step that changes one particle still misses on almost every lookup.  We re-wrap
the same function with the same rounding and a larger LRU.

Workspace validation.  SModelS builds a new ``pyhf.Workspace`` (and model) from each
signal-patched workspace every time it evaluates a pyhf likelihood or limit, and pyhf
validates each against its JSON schema: 40-70 ms per workspace, two to ten per call,
two thirds of a cold evaluation of an electroweak model.  The workspaces patched are the
database's published ones or our simplified ones (validated when built), and SModelS'
patch only adds a sample: ``trusted_pyhf_workspaces`` makes SModelS' pyhf interface
build them without re-validation (the same numbers; pyhf still checks the structure
while building the model).

Control and validation regions.  SModelS' pyhf patch removes every channel that gets no
signal: validation regions always, control regions unless ``includeCRs``.  A full
workspace's free normalisation factors (mu_W, mu_ttbar...) are fixed by exactly those
channels: without them the background floats and the limits weaken (ATLAS-SUSY-2018-31
SRB, 10 signal events: UL on mu 0.68 instead of the 0.49 pyhf gives on the whole
workspace).  A simplified workspace in ATLAS' layout has one nuisance parameter shared
by all channels, which its control and validation bins constrain too (ATLAS keeps them
for that reason).  ``workspaces_keep_channels`` keeps every channel of every workspace,
the signal still only in the signal regions, as ATLAS' own fits do.  This is a physics
correction, not a speed-up, so ``smodels_as_shipped`` keeps it (like the region names);
it moves the limits of pyhf results from SModelS' own (2018-31 with ATLAS' simplified
workspaces: a few per cent).

pyhf region names.  Database 3.0.0 lists the signal regions of several pyhf results in
the old format (plain names, matched to the workspace's channels by order in older
SModelS).  SModelS 3.1 reads a plain name as the pyhf channel name itself; where the
workspace calls its channels differently (ATLAS-SUSY-2018-14 'SRee' vs 'SRee_cuts',
ATLAS-SUSY-2018-31 'SRA_L' vs bin 0 of 'SR_meff', ATLAS-SUSY-2019-09 'SRWZ_1' vs
'SR1_WZ_cuts', ...) no signal reaches the workspace and pyhf fails with "'mu_SIG' cannot
be fit".  For exactly those workspaces we drop the name-equals-channel default, so
that SModelS' own order-based matching (``PyhfData.updatePyhfNames``) applies again.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, Iterator, List

from . import nuisance

logger = logging.getLogger(__name__)

_APPLIED = "_protomodels_overrides"
INTERPOLATION_CACHE = 200_000  # entries (about 200 bytes each)


def _channel_names(workspace: Dict[str, Any]) -> set:
    names = set()
    for observation in workspace.get("observations", []):
        names.add(observation["name"])
        names.update(f"{observation['name']}[{i}]" for i in range(len(observation["data"])))
    return names


def restore_order_matching(json_files: Dict[str, List[Dict[str, Any]]],
                           jsons: List[Dict[str, Any]]) -> List[str]:
    """Drop the name-equals-channel default of the workspaces (file names, in place) whose
    signal-region names are not channels, so SModelS matches them by order again."""
    fixed = []
    for (name, regions), workspace in zip(json_files.items(), jsons):
        channels = _channel_names(workspace)
        if all(r.get("pyhf") in channels for r in regions if r.get("type", "SR") == "SR"):
            continue
        if any(r.get("pyhf") not in (None, r.get("smodels")) for r in regions):
            continue  # an explicit (new-format) mapping: not ours to change
        for region in regions:
            region.pop("pyhf", None)
        fixed.append(name)
    return fixed


def fix_pyhf_region_names(expresult: Any) -> List[str]:
    """Restore order-based matching for workspaces whose region names are not channels."""
    info = expresult.globalInfo
    if not hasattr(info, "jsonFiles") or not hasattr(info, "jsons"):
        return []
    return [f"{info.id}:{name}" for name in restore_order_matching(info.jsonFiles, info.jsons)]


def enlarge_interpolation_cache(maxsize: int = INTERPOLATION_CACHE) -> bool:
    """Give ``TxNameData.getValueFor`` a larger LRU (idempotent; True if it changed)."""
    from smodels.experiment.txnameDataObj import TxNameData
    from smodels.tools.caching import roundCache

    current = TxNameData.getValueFor
    if current.__wrapped__.cache_info().maxsize >= maxsize:
        return False
    original = current.__wrapped__.__wrapped__
    TxNameData.getValueFor = roundCache(argname="point", argpos=1, digits=2,
                                        maxsize=maxsize)(original)
    return True


_SKIPPED = frozenset(("_id", "_comp", "label", "particles"))


def _same_attributes(candidate: Dict[str, Any], wanted: Dict[str, Any]) -> bool:
    """``{k: v for k, v in candidate.items() if k not in _SKIPPED} == wanted``, without the
    copy, and comparing Unum values of equal units by their numbers (what Unum's own
    ``==`` does for them)."""
    from unum import Unum

    size = len(candidate) - sum(1 for key in _SKIPPED if key in candidate)
    if size != len(wanted):
        return False
    for key, value in wanted.items():
        if key in _SKIPPED or key not in candidate:
            return False
        other = candidate[key]
        if other is value:
            continue
        if type(other) is Unum and type(value) is Unum and other._unit == value._unit:
            if not other._value == value._value:
                return False
        elif not other == value:
            return False
    return True


def _multiparticle_new(cls, label=None, particles=[], attributesDict={}, **kwargs):
    """SModelS' ``MultiParticle.__new__`` with the faster scan (see the module docstring)."""
    import weakref

    from smodels.base.particle import MultiParticle, Particle

    particles = sorted(particles)
    if not label:
        label = "/".join(sorted(list(set([p.label for p in particles]))))
    attrDict = dict(attributesDict.items())
    attrDict.update(kwargs)
    attrDict.pop("_id", None)
    attrDict.pop("_comp", None)
    for obj in Particle.getinstances():
        if not isinstance(obj, MultiParticle):
            continue
        others = obj.particles
        if len(particles) != len(others) or any(a is not b for a, b in zip(particles, others)):
            continue
        if _same_attributes(obj.__dict__, attrDict):
            return obj
    new = super(Particle, cls).__new__(cls)
    for attr, value in attrDict.items():
        setattr(new, attr, value)
    new.particles = particles[:]
    new.label = label
    new._id = Particle.getID()
    new._comp = {new._id: 0}
    new._comp.update(dict([[ptc._id, 0] for ptc in particles]))
    Particle._instances.add(weakref.ref(new))
    return new


def fast_multiparticle_lookup() -> bool:
    """Install ``_multiparticle_new`` (idempotent; True if it changed)."""
    from smodels.base.particle import MultiParticle

    if MultiParticle.__dict__["__new__"] is _multiparticle_new:
        return False
    MultiParticle._protomodels_smodels_new = MultiParticle.__dict__["__new__"]
    MultiParticle.__new__ = _multiparticle_new
    return True


def _tx_keys(self):
    """``ExpSMSDict.getTx``: the txnames in the same order, as a view with hashed ``in``."""
    return self._txDict.keys()


def _filter(self, expResultList):
    """SModelS' ``ExpSMSDict.filter`` with the selected txnames in a set."""
    selected = set()
    for exp in expResultList:
        selected.update(exp.getTxNames())
    new = self.copy()
    for tx in list(new.getTx()):
        if tx in selected:
            continue
        sms_list = new[tx].values()
        del new[tx]
        for sms in sms_list:
            del new[sms][tx]
    for sms in list(new.getSMS()):
        if not new[sms]:
            del new[sms]
    return new


class _TrustedPyhf:
    """The ``pyhf`` name inside SModelS' pyhf interface: pyhf itself, except that its
    ``Workspace`` skips the JSON-schema validation of SModelS' patched workspaces."""

    def __init__(self, pyhf):
        self._pyhf = pyhf

        class TrustedWorkspace(pyhf.Workspace):
            def __init__(self, spec, validate: bool = False, **config_kwargs):
                super().__init__(spec, validate=False, **config_kwargs)

            def model(self, **config_kwargs):
                config_kwargs.setdefault("validate", False)
                return super().model(**config_kwargs)

        self.Workspace = TrustedWorkspace

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pyhf, name)


def trusted_pyhf_workspaces() -> bool:
    """Install ``_TrustedPyhf`` in SModelS' pyhf interface (idempotent; True if it changed)."""
    from smodels.statistics import pyhfInterface

    if isinstance(pyhfInterface.pyhf, _TrustedPyhf):
        return False
    pyhfInterface._protomodels_pyhf = pyhfInterface.pyhf
    pyhfInterface.pyhf = _TrustedPyhf(pyhfInterface.pyhf)
    return True


def _patch_maker_keeping_channels(self):
    """SModelS' ``PyhfUpperLimitComputer.patchMaker`` without its channel removals
    (module docstring)."""
    patches = self._protomodels_patch_maker()
    if not patches:
        return patches
    return [[op for op in patch if op.get("op") != "remove"] for patch in patches]


def workspaces_keep_channels() -> bool:
    """Install ``_patch_maker_keeping_channels`` (idempotent; True if it changed)."""
    from smodels.statistics.pyhfInterface import PyhfUpperLimitComputer

    if PyhfUpperLimitComputer.patchMaker is _patch_maker_keeping_channels:
        return False
    PyhfUpperLimitComputer._protomodels_patch_maker = PyhfUpperLimitComputer.patchMaker
    PyhfUpperLimitComputer.patchMaker = _patch_maker_keeping_channels
    return True


def fast_sms_dictionary() -> bool:
    """Install ``_tx_keys`` and ``_filter`` (idempotent; True if it changed).  They must be
    in place before SModelS' ``Database`` is made, so ``database.load`` calls this first."""
    from smodels.experiment.expSMSDict import ExpSMSDict

    if ExpSMSDict.filter is _filter:
        return False
    ExpSMSDict._protomodels_smodels = (ExpSMSDict.getTx, ExpSMSDict.filter)
    ExpSMSDict.getTx, ExpSMSDict.filter = _tx_keys, _filter
    return True


@contextlib.contextmanager
def smodels_as_shipped() -> Iterator[None]:
    """SModelS' own code for everything sped up here, inside the block: the benchmark's
    straightforward pipeline, and the tests that compare the two."""
    from smodels.base.particle import MultiParticle

    from smodels.experiment.expSMSDict import ExpSMSDict
    from smodels.statistics import pyhfInterface

    current = MultiParticle.__dict__["__new__"], ExpSMSDict.getTx, ExpSMSDict.filter
    current_pyhf = pyhfInterface.pyhf
    MultiParticle.__new__ = getattr(MultiParticle, "_protomodels_smodels_new", current[0])
    ExpSMSDict.getTx, ExpSMSDict.filter = getattr(ExpSMSDict, "_protomodels_smodels",
                                                  current[1:])
    pyhfInterface.pyhf = getattr(pyhfInterface, "_protomodels_pyhf", current_pyhf)
    try:
        with nuisance.original_profile():
            yield
    finally:
        MultiParticle.__new__ = current[0]
        ExpSMSDict.getTx, ExpSMSDict.filter = current[1:]
        pyhfInterface.pyhf = current_pyhf


def apply_overrides(db: Any) -> None:
    """Apply every correction to the SModelS database object ``db`` (idempotent)."""
    done: List[str] = list(getattr(db, _APPLIED, []))
    enlarge_interpolation_cache()
    if not any(item.startswith("interpolation cache") for item in done):
        done.append(f"interpolation cache of {INTERPOLATION_CACHE} entries")
    for name, install in (("exact nuisance profile", nuisance.install),
                          ("fast particle lookup", fast_multiparticle_lookup),
                          ("fast SMS dictionary", fast_sms_dictionary),
                          ("pyhf workspaces not re-validated", trusted_pyhf_workspaces),
                          ("pyhf workspaces keep their control and validation regions",
                           workspaces_keep_channels)):
        install()
        if name not in done:
            done.append(name)
    for expresult in db.expResultList:
        for item in fix_pyhf_region_names(expresult):
            logger.debug("pyhf channels matched by order for %s", item)
            done.append(f"pyhf order matching {item}")
    setattr(db, _APPLIED, done)


def applied(db: Any) -> List[str]:
    return list(getattr(db, _APPLIED, []))
