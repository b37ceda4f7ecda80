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

Lazy workspaces.  Every pyhf likelihood SModelS evaluates re-runs its computer's
``__init__``, which patches and builds *every* workspace of the result twice (observed
and expected data; ``jsonpatch`` deep-copies each whole workspace first), although the
call then uses one: ATLAS-SUSY-2019-09 has five, so an electroweak model spent a third of
its ``significance`` time copying JSON.  ``lazy_workspaces`` makes SModelS' ``wsMaker``
return a list that patches and builds workspace i when it is first read, sharing the
unpatched parts of the input workspace instead of copying them (the patch adds a sample to
a channel's sample list, or removes a channel; both lists are copied, nothing nested is
changed).  The same workspaces, so the same numbers.

Shared triangulations.  Each efficiency or upper-limit map interpolates on its own
Delaunay triangulation, and scipy computes a triangulation's barycentric transforms (one
per simplex, 25k-90k simplices for the large 3-dimensional maps, 40-60 ms) on its first
lookup.  A walker step that reaches new topologies (a gluino cascade) first-uses hundreds
of maps at once: 5.9 s of 6.6 s for one such step.  Most maps of a result are on the same
grid (one map per signal region): of the 3945 triangulations of database 3.0.0 only 1098
differ.  ``share_triangulations`` gives maps whose triangulations are identical (points,
simplices, neighbours and facet equations equal: qhull's output for the same input) one
shared object, so its transforms are computed, and held in memory, once.

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


def share_triangulations(db: Any) -> int:
    """Let the maps of ``db`` whose Delaunay triangulations are identical share one
    triangulation object (module docstring).  Returns how many were replaced (0 when
    already shared)."""
    import numpy as np

    groups: Dict[tuple, List[Any]] = {}
    replaced = 0
    for expresult in db.expResultList:
        for dataset in expresult.datasets:
            for txname in dataset.txnameList:
                data = txname.txnameData
                tri = getattr(data, "tri", None)
                if tri is None or not hasattr(tri, "nsimplex"):
                    continue  # none, or SModelS' own 1-dimensional interpolator
                key = (tri.npoints, tri.nsimplex, tri.ndim, tri.points[0].tobytes(),
                       tri.points[-1].tobytes())
                candidates = groups.setdefault(key, [])
                for shared in candidates:
                    if shared is tri:
                        break
                    if (np.array_equal(shared.points, tri.points)
                            and np.array_equal(shared.simplices, tri.simplices)
                            and np.array_equal(shared.neighbors, tri.neighbors)
                            and np.array_equal(shared.equations, tri.equations)):
                        data.tri = shared
                        replaced += 1
                        break
                else:
                    candidates.append(tri)
    return replaced


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


def _replace_method(cls: type, name: str, replacement: Any, saved_as: str) -> bool:
    """Make ``replacement`` the method ``name`` of ``cls``, SModelS' own kept as attribute
    ``saved_as`` (idempotent; True if it changed)."""
    if getattr(cls, name) is replacement:
        return False
    setattr(cls, saved_as, getattr(cls, name))
    setattr(cls, name, replacement)
    return True


def workspaces_keep_channels() -> bool:
    """Install ``_patch_maker_keeping_channels`` (idempotent; True if it changed)."""
    from smodels.statistics.pyhfInterface import PyhfUpperLimitComputer

    return _replace_method(PyhfUpperLimitComputer, "patchMaker", _patch_maker_keeping_channels,
                           "_protomodels_patch_maker")


def _patched_workspace(spec: Dict[str, Any], patch: List[Dict[str, Any]],
                       apriori: bool) -> Dict[str, Any]:
    """``spec`` with SModelS' signal ``patch`` applied, as ``jsonpatch.apply_patch`` gives
    it, copying only what the patch or ``apriori`` change: the top level, the channel and
    observation lists, each channel dict and sample list, each observation dict.  With
    ``apriori``, each channel's observed counts become its summed background (SModelS'
    ``wsMaker``)."""
    import jsonpatch

    doc = dict(spec)
    doc["channels"] = [dict(ch, samples=list(ch["samples"])) for ch in spec["channels"]]
    doc["observations"] = [dict(obs) for obs in spec["observations"]]
    jsonpatch.apply_patch(doc, patch, in_place=True)
    if apriori:
        channels = {ch["name"]: ch for ch in doc["channels"]}
        for obs in doc["observations"]:
            ch = channels.get(obs["name"])
            if ch is None:
                continue
            bkg = [0.0] * len(obs["data"])
            for sample in ch["samples"]:
                if sample["name"] == "bsm":
                    continue
                for i in range(len(obs["data"])):
                    bkg[i] += sample["data"][i]
            obs["data"] = bkg
    return doc


class _LazyWorkspaces(list):
    """SModelS' list of patched ``pyhf.Workspace`` objects (one per json file), each
    built when first read (module docstring)."""

    def __init__(self, computer: Any, apriori: bool):
        super().__init__([None] * computer.nWS)
        self._inputs = list(zip(computer.inputJsons, computer.patches))
        self._apriori = apriori
        self._built = [False] * computer.nWS

    def _build(self, index: int) -> None:
        from smodels.statistics import pyhfInterface

        spec, patch = self._inputs[index]
        try:
            workspace = pyhfInterface.pyhf.Workspace(_patched_workspace(spec, patch, self._apriori))
        except (pyhfInterface.pyhf.exceptions.InvalidSpecification, KeyError) as error:
            logger.error("pyhf workspace number %d is corrupted: %s", index, error)
            workspace = None
        list.__setitem__(self, index, workspace)
        self._built[index] = True

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        position = range(len(self))[index]
        if not self._built[position]:
            self._build(position)
        return list.__getitem__(self, position)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _lazy_ws_maker(self, apriori: bool = False):
    """SModelS' ``PyhfUpperLimitComputer.wsMaker``, each workspace built when first read."""
    if self.patches is None:
        return None
    return _LazyWorkspaces(self, apriori)


def lazy_workspaces() -> bool:
    """Install ``_lazy_ws_maker`` (idempotent; True if it changed)."""
    from smodels.statistics.pyhfInterface import PyhfUpperLimitComputer

    return _replace_method(PyhfUpperLimitComputer, "wsMaker", _lazy_ws_maker,
                           "_protomodels_ws_maker")


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

    computer = pyhfInterface.PyhfUpperLimitComputer
    current = MultiParticle.__dict__["__new__"], ExpSMSDict.getTx, ExpSMSDict.filter
    current_pyhf, current_ws_maker = pyhfInterface.pyhf, computer.wsMaker
    MultiParticle.__new__ = getattr(MultiParticle, "_protomodels_smodels_new", current[0])
    ExpSMSDict.getTx, ExpSMSDict.filter = getattr(ExpSMSDict, "_protomodels_smodels",
                                                  current[1:])
    pyhfInterface.pyhf = getattr(pyhfInterface, "_protomodels_pyhf", current_pyhf)
    computer.wsMaker = getattr(computer, "_protomodels_ws_maker", current_ws_maker)
    try:
        with nuisance.original_profile():
            yield
    finally:
        MultiParticle.__new__ = current[0]
        ExpSMSDict.getTx, ExpSMSDict.filter = current[1:]
        pyhfInterface.pyhf = current_pyhf
        computer.wsMaker = current_ws_maker


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
                          ("pyhf workspaces built when used", lazy_workspaces),
                          ("pyhf workspaces keep their control and validation regions",
                           workspaces_keep_channels)):
        install()
        if name not in done:
            done.append(name)
    shared = share_triangulations(db)
    if shared and "shared triangulations" not in done:
        done.append("shared triangulations")
        logger.debug("%d map triangulations shared", shared)
    for expresult in db.expResultList:
        for item in fix_pyhf_region_names(expresult):
            logger.debug("pyhf channels matched by order for %s", item)
            done.append(f"pyhf order matching {item}")
    setattr(db, _APPLIED, done)


def applied(db: Any) -> List[str]:
    return list(getattr(db, _APPLIED, []))
