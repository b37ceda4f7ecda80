"""Injection closure (SPEC section 8; the paper's study of fake databases with its best
model injected): does a run on a fake database with a known signal find that signal's
particles, and only them?

For each run, the best model the walk found (its top hiscore that was not polished) is
matched to the injected model particle by particle.  Partners are matched by *kind*,
because the analyses cannot tell them apart: any top partner (Xt, Xt2) for a top
partner, any light-flavour squark (Xd, Xu, Xs, Xc) for a light-quark partner, any bottom
partner for a bottom partner; other particles only by themselves.  An injected particle
is *found* when a partner of its kind lies within ``window`` GeV of its mass (the paper:
200 GeV); the LSP is not counted.  Particles of the best model matched to no injected
particle are *spurious*.  Rates over runs come with Clopper-Pearson 68% intervals.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .exceptions import RunError
from .model import LSP, NAMES, PIDS
from .pvalue import clopper_pearson, run_summary

SCHEMA = "protomodels.closure/1"
DEFAULT_WINDOW = 200.0  # GeV, the paper's
_KINDS = {
    "top partner": (1000006, 2000006),
    "light-quark partner": (1000001, 1000002, 1000003, 1000004),
    "bottom partner": (1000005, 2000005),
}


def kind(pid: int) -> str:
    """'top partner', 'light-quark partner', 'bottom partner', or the particle's name."""
    for name, members in _KINDS.items():
        if abs(pid) in members:
            return name
    return NAMES[abs(pid)]


def match(injected: Mapping[int, float], found: Mapping[int, float],
          window: float = DEFAULT_WINDOW) -> Dict[str, Any]:
    """Match the non-LSP particles of ``found`` (pid -> mass in GeV) to those of
    ``injected``, nearest mass first within each kind.

    Returns ``{"partners": [{"injected", "kind", "mass", "partner", "partner_mass",
    "found"}], "spurious": [names]}``: a partner is the nearest unused particle of its
    kind (``None`` if there is none), ``found`` whether it is within ``window`` GeV.
    """
    free = {pid: mass for pid, mass in found.items() if pid != LSP}
    partners = []
    for pid, mass in sorted(injected.items(), key=lambda item: item[1]):
        if pid == LSP:
            continue
        same = [p for p in free if kind(p) == kind(pid)]
        best = min(same, key=lambda p: abs(free[p] - mass), default=None)
        entry = {"injected": NAMES[pid], "kind": kind(pid), "mass": mass,
                 "partner": None, "partner_mass": None, "found": False}
        if best is not None:
            entry.update(partner=NAMES[best], partner_mass=free.pop(best),
                         found=abs(found[best] - mass) <= window)
        partners.append(entry)
    return {"partners": partners, "spurious": sorted(NAMES[p] for p in free)}


def injected_masses(run: Dict[str, Any], injected: Optional[Path] = None) -> Dict[int, float]:
    """The injected model's masses (pid -> GeV): from ``injected`` (an SLHA file) or, by
    default, from the SLHA text that the run's fake database records.

    Raises ``RunError`` when the run did not use a fake database with an injected model
    and no file is given."""
    from .slha import read_slha

    if injected is not None:
        return dict(read_slha(injected).masses)
    fake = run.get("fake") or {}
    if not fake.get("injected"):
        raise RunError(f"{run['run']}/run.json: field 'versions.database_fake.injected' is "
                       f"{fake.get('injected')!r}: the run has no injected model (give --injected)")
    record = Path(fake["record"])
    try:
        text = json.loads(record.read_text())["injected"]["slha"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunError(f"{record}: cannot read the injected model ({error})") from None
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(fake["injected"]).name
        path.write_text(text)
        return dict(read_slha(path).masses)


def closure(runs: Sequence[str | Path], injected: Optional[Path] = None,
            window: float = DEFAULT_WINDOW) -> Dict[str, Any]:
    """The closure report (schema protomodels.closure/1): per run its best K, best model
    and the match to the injected model; over runs, per injected particle the rate at
    which it was found and the rate of runs with spurious particles, each with its
    Clopper-Pearson 68% interval.

    Raises ``RunError`` for a folder that is not a finished-or-running run with hiscores,
    or without an injected model (see ``injected_masses``)."""
    if not runs:
        raise RunError("no runs given")
    rows: List[Dict[str, Any]] = []
    for run_dir in runs:
        summary = run_summary(run_dir)
        truth = injected_masses(summary, injected)
        found = {PIDS[name]: mass for name, mass in summary["masses"].items()}
        rows.append({"run": summary["run"], "best_K": summary["best_K"],
                     "steps_done": summary["steps_done"],
                     "masses": summary["masses"], **match(truth, found, window)})
    n = len(rows)
    rates = []
    for position, partner in enumerate(rows[0]["partners"]):
        k = sum(row["partners"][position]["found"] for row in rows)
        rates.append({"what": f"{partner['kind']} within {window:g} GeV of "
                              f"{partner['mass']:g} GeV ({partner['injected']})",
                      "k": k, "n": n, "rate": k / n, "interval_68": clopper_pearson(k, n)})
    k = sum(bool(row["spurious"]) for row in rows)
    rates.append({"what": "runs with spurious particles", "k": k, "n": n, "rate": k / n,
                  "interval_68": clopper_pearson(k, n)})
    return {"schema": SCHEMA, "window_GeV": window, "runs": rows, "rates": rates}


def format_closure(report: Dict[str, Any]) -> str:
    """The report as text: one line per run, then the rates."""
    lines = [f"{'run':<28} {'best K':>7}  best model (GeV); found / spurious"]
    for row in report["runs"]:
        model = ", ".join(f"{name} {mass:.0f}" for name, mass in
                          sorted(row["masses"].items(), key=lambda item: item[1]))
        verdict = ", ".join(f"{p['injected']} {'yes' if p['found'] else 'no'}"
                            + (f" ({p['partner']} {p['partner_mass']:.0f})" if p["partner"] else "")
                            for p in row["partners"])
        spurious = ", ".join(row["spurious"]) or "none"
        lines.append(f"{Path(row['run']).name:<28} {row['best_K']:7.2f}  {model}; "
                     f"{verdict}; spurious: {spurious}")
    for rate in report["rates"]:
        low, high = rate["interval_68"]
        lines.append(f"{rate['what']}: {rate['k']}/{rate['n']} "
                     f"(68% interval {low:.2f}-{high:.2f})")
    return "\n".join(lines)
