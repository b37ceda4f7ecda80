"""Which statistical model each pyhf result uses: the full or the simplified likelihood.

Database 3.0.0 has eight results with pyhf workspaces.  Three ship both ATLAS' full
workspace (``jsonFiles_FullLikelihood`` in ``globalInfo.txt``) and ATLAS' simplified one
(``jsonFiles``, SModelS' default): ATLAS-SUSY-2018-31, -2019-09 and -2018-05-ewk.  Two use
full workspaces only (ATLAS-SUSY-2018-04 and -16), two simplified ones only
(ATLAS-SUSY-2018-22-multibin; ATLAS-SUSY-2018-32, whose full file is not in the tarball),
and ATLAS-SUSY-2018-14's are tiny toy models, used as shipped.

``use_likelihood(db, mode)`` sets every such result's workspaces for one mode:

- ``simplified``: ATLAS' simplified workspace where the database has one, ours
  (``protomodels.statistics.simplified``, built once and cached) for every full one;
- ``full``: the full workspace where the database has one; where it has none, the
  workspace shipped, with a note saying so;
- ``surrogate``: the workspaces of ``simplified``, and the trained surrogates of the full
  workspaces (``protomodels.statistics.surrogate``) attached: a prediction whose signal
  lies in their training domain takes its likelihood and limits from them, any other
  falls back to the simplified workspaces (counted in ``surrogate.USAGE``).

Every file switched to is checked: each signal region must land in the same channel and
bin as with SModelS' default file (SModelS matches old-format region names to channels by
order, so a reordered workspace would put the signal in the wrong channel); a file that
fails this, or that cannot be read or built, is not used: the result keeps its default
workspace and a warning says why.

The workspaces in use (file and kind) are part of every pyhf result's statistics-cache
key (``tag``), so a process never mixes the numbers of two statistical models.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..exceptions import WorkspaceError
from ..progress import tracked
from . import simplified

logger = logging.getLogger(__name__)

LIKELIHOODS = ("simplified", "full", "surrogate")
DEFAULT_LIKELIHOOD = "simplified"
_DEFAULT = "_protomodels_default_workspaces"  # (jsonFiles, jsons) as loaded
CHOICE = "_protomodels_workspaces"  # the WorkspaceChoice in use

# what a workspace file in use is
FULL, ATLAS_SIMPLIFIED, OUR_SIMPLIFIED, AS_SHIPPED = (
    "full", "simplified (ATLAS)", "simplified (protomodels)", "as shipped")


@dataclass
class WorkspaceChoice:
    """The workspaces one pyhf result uses: file names, what each is, and a note when the
    requested likelihood could not be had."""

    analysis: str
    files: List[str]
    kinds: List[str]
    note: str = ""
    provenance: List[Optional[Dict[str, Any]]] = field(default_factory=list)
    surrogates: str = ""  # --likelihood surrogate: which full workspaces have one

    def describe(self) -> str:
        kinds = sorted(set(self.kinds))
        text = ", ".join(kinds) + (f" ({self.note})" if self.note else "")
        return f"{self.surrogates}; else {text}" if self.surrogates else text


def check_likelihood(mode: str, where: str = "--likelihood") -> str:
    """``mode`` if it is one of ``LIKELIHOODS``; else ``WorkspaceError`` naming ``where``."""
    if mode not in LIKELIHOODS:
        raise WorkspaceError(f"{where}: {mode!r} is not a likelihood; choose one of "
                             f"{', '.join(LIKELIHOODS)}")
    return mode


def signal_region_bins(json_files: Dict[str, List[Dict[str, Any]]],
                       jsons: List[Dict[str, Any]], includeCRs: bool = False
                       ) -> Dict[str, Tuple[int, str, str, int]]:
    """Where SModelS puts each signal region's signal: region -> (workspace index, file
    name, channel, bin), resolved by SModelS' own ``PyhfData`` (names, or order)."""
    from smodels.statistics.pyhfInterface import PyhfData

    nsignals = {name: {r["smodels"]: 0.0 for r in regions if r.get("smodels")
                       and (includeCRs or r.get("type", "SR") == "SR")}
                for name, regions in json_files.items()}
    resolved = PyhfData(nsignals, jsons, copy.deepcopy(json_files),
                        includeCRs=includeCRs).jsonFiles
    bins: Dict[str, Tuple[int, str, str, int]] = {}
    for index, name in enumerate(json_files):
        for region in resolved[name]:
            if region.get("type") != "SR" or not region.get("smodels"):
                continue
            channel, bin_index = channel_bin(region.get("pyhf") or region["smodels"])
            bins[region["smodels"]] = (index, name, channel, bin_index)
    return bins


def channel_bin(name: str) -> Tuple[str, int]:
    """'SR_meff[2]' -> ('SR_meff', 2); 'SRee' -> ('SRee', 0)."""
    if name.endswith("]") and "[" in name:
        channel, index = name[:-1].rsplit("[", 1)
        return channel, int(index)
    return name, 0


def _regions(regions: List[Any]) -> List[Dict[str, Any]]:
    """Regions in SModelS' normalised form (as ``Info`` parses ``jsonFiles``)."""
    out = []
    for region in regions:
        region = {"smodels": region} if isinstance(region, str) else dict(region)
        region.setdefault("type", "SR")
        region.setdefault("smodels", None)
        region.setdefault("pyhf", region["smodels"])
        out.append(region)
    return out


def file_map(value: Any) -> Dict[str, List[Dict[str, Any]]]:
    """A ``jsonFiles``-style value (dict or its text) as file -> normalised regions."""
    if isinstance(value, str):
        import ast
        value = ast.literal_eval(value)
    return {name: _regions(regions) for name, regions in value.items()}


def _candidate(info, mode: str, default: Tuple[Dict[str, Any], List[Dict[str, Any]]],
               folder: Path) -> Tuple[Dict[str, Any], List[Dict[str, Any]], List[str], str,
                                      List[Optional[Dict[str, Any]]]]:
    """(jsonFiles, jsons, kinds, note, provenance) of ``mode`` for one result."""
    if mode == "surrogate":
        mode = "simplified"  # underneath the surrogates, and their fallback
    files, jsons = default
    full_files = file_map(info.jsonFiles_FullLikelihood) if hasattr(
        info, "jsonFiles_FullLikelihood") else None
    if mode == "full":
        if full_files is None:
            kinds = [FULL if simplified.is_full(w) else AS_SHIPPED for w in jsons]
            note = "" if all(k == FULL for k in kinds) else "no full workspace in the database"
            return copy.deepcopy(files), jsons, kinds, note, [None] * len(jsons)
        loaded, missing = [], []
        for name in full_files:
            path = folder / name
            if not path.is_file():
                missing.append(name)
                continue
            try:
                loaded.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError) as error:
                raise WorkspaceError(f"{info.id}: cannot read {path} ({error})") from None
        if missing:
            note = f"full workspace {', '.join(missing)} not in the database; ATLAS' simplified used"
            return copy.deepcopy(files), jsons, [ATLAS_SIMPLIFIED] * len(jsons), note, [None] * len(jsons)
        kinds = [FULL if simplified.is_full(w) else AS_SHIPPED for w in loaded]
        return full_files, loaded, kinds, "", [None] * len(loaded)
    # simplified
    if full_files is not None:
        kinds = [FULL if simplified.is_full(w) else ATLAS_SIMPLIFIED for w in jsons]
        return copy.deepcopy(files), jsons, kinds, "", [None] * len(jsons)
    new_jsons, kinds, provenance, notes = [], [], [], []
    for name, workspace in zip(files, jsons):
        if not simplified.is_full(workspace):
            new_jsons.append(workspace)
            kinds.append(AS_SHIPPED)
            provenance.append(None)
            continue
        try:
            record = simplified.cached(folder / name, analysis=info.id)
        except WorkspaceError as error:
            logger.warning("%s: %s; the full workspace is used instead", info.id, error)
            notes.append(f"{name}: simplification failed, full workspace used")
            new_jsons.append(workspace)
            kinds.append(FULL)
            provenance.append(None)
            continue
        new_jsons.append(record["workspace"])
        kinds.append(OUR_SIMPLIFIED)
        provenance.append(record["provenance"])
    return copy.deepcopy(files), new_jsons, kinds, "; ".join(notes), provenance


def use_likelihood(db, mode: str = DEFAULT_LIKELIHOOD) -> Dict[str, WorkspaceChoice]:
    """Switch every pyhf result of the loaded ``db`` (an ``ExperimentalDatabase``) to the
    workspaces of ``mode`` (module docstring); builds missing simplified workspaces
    (minutes, once).  Returns and records (``db.likelihoods``) the choice per result.
    Raises ``WorkspaceError`` for an unknown mode; a result whose files cannot be used
    keeps its default workspaces, with a warning."""
    from ..overrides import restore_order_matching

    check_likelihood(mode)
    choices: Dict[str, WorkspaceChoice] = {}
    pyhf_results = [er for er in db.smodels.expResultList
                    if hasattr(er.globalInfo, "jsonFiles") and hasattr(er.globalInfo, "jsons")]
    # shown only when simplified workspaces are being built (a minute each, once)
    for expresult in tracked(pyhf_results, f"{mode} likelihoods of the pyhf results", delay=3.0):
        info = expresult.globalInfo
        default = getattr(info, _DEFAULT, None)
        if default is None:
            default = (copy.deepcopy(info.jsonFiles), info.jsons)
            setattr(info, _DEFAULT, default)
        folder = Path(getattr(info, "path", "") or ".").parent
        include_crs = bool(getattr(info, "includeCRs", False))
        try:
            files, jsons, kinds, note, provenance = _candidate(info, mode, default, folder)
            restore_order_matching(files, jsons)
            if jsons is not default[1]:
                _same_bins(info.id, default, (files, jsons), include_crs)
        except WorkspaceError as error:
            logger.warning("%s; its default workspaces are used", error)
            files, jsons = copy.deepcopy(default[0]), default[1]
            kinds = [FULL if simplified.is_full(w) else AS_SHIPPED for w in jsons]
            note, provenance = f"{mode} not usable: {error}", [None] * len(jsons)
        info.jsonFiles, info.jsons = files, jsons
        choices[info.id] = WorkspaceChoice(info.id, list(files), kinds, note, provenance)
        setattr(info, CHOICE, choices[info.id])
        if note:
            logger.info("%s: %s likelihood: %s", info.id, mode, note)
    from . import surrogate

    surrogate.detach(db)
    if mode == "surrogate":
        for name, attached in surrogate.attach(db).items():
            if name in choices:
                choices[name].surrogates = attached.describe()
    db.likelihood = mode
    db.likelihoods = choices
    db.statistics.clear()
    return choices


def _same_bins(analysis: str, default, candidate, include_crs: bool) -> None:
    """Every signal region in the same channel and bin with both sets of workspaces."""
    before = signal_region_bins(default[0], default[1], include_crs)
    after = signal_region_bins(candidate[0], candidate[1], include_crs)
    if set(before) != set(after):
        raise WorkspaceError(f"{analysis}: signal regions {sorted(set(before) ^ set(after))} "
                             "are in only one of the default and the switched workspaces")
    moved = [f"{region}: {before[region][2:]} -> {after[region][2:]}" for region in before
             if before[region][2:] != after[region][2:]]
    if moved:
        raise WorkspaceError(f"{analysis}: switching workspaces would move signal regions "
                             f"to other channels ({'; '.join(moved[:3])})")


def tag(expresult) -> str:
    """The statistical model a result uses now, for cache keys: each workspace file and
    what it is ('' for results without workspaces)."""
    chosen = choice(expresult)
    if chosen is None:
        return ""
    return ",".join(f"{name}:{kind}" for name, kind in zip(chosen.files, chosen.kinds)) + (
        f"+{chosen.surrogates}" if chosen.surrogates else "")


def choice(expresult) -> Optional[WorkspaceChoice]:
    """The workspaces a pyhf result uses now (None for other results, or before
    ``use_likelihood``)."""
    return getattr(expresult.globalInfo, CHOICE, None)
