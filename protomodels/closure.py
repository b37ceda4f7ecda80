"""Injection closure (SPEC section 8; the paper's study of fake databases with its best
model injected): does a run on a fake database with a known signal find that signal's
particles, and only them?

For each run, the best model the walk found (its top hiscore that was not polished, as
for the p-value: fakes are never polished) is
matched to the injected model particle by particle.  Partners are matched by *kind*,
because the analyses cannot tell them apart: any top partner (Xt, Xt2) for a top
partner, any light-flavour squark (Xd, Xu, Xs, Xc) for a light-quark partner, any bottom
partner for a bottom partner; other particles only by themselves.  An injected particle
is *found* when a partner of its kind lies within ``window`` GeV of its mass (the paper:
200 GeV); the LSP is not counted.  Particles of the best model matched to no injected
particle within the window (a top partner 1 TeV away included) are *spurious*.  Rates
over runs come with Clopper-Pearson 68% intervals.

*Reference fits* (optional, costly) ask what the best model *should* contain on each fake
database: an injected particle whose signal, after the noise drawn for that fake, gains
less TL than the prior charges for it (1 for the particle, 1/4 or more for its
multiplier; SPEC section 6) makes K prefer the model without it, and a search that
maximises K is right not to find it.  The injected model is polished
(``polish.polish_model``, masses, multipliers and BRs) on the run's own score, and so is
the injected model without each of its particles in turn; a particle is *preferred* on
that fake when the first K is higher.  The walk's best K minus the polished injected K
(``search_gap``, against the injected model as injected and polished) tells a search
that fell short (negative) from one that found the injected model or a better one.
Differences of polished K below ``UNDECIDED`` are left undecided.  Each fit also records
the best combination of its polished model: an injected particle whose analyses cannot
be combined with those of another injected particle (the published combinability
matrices) adds only what its results gain over the ones they displace.

*Expected fits* (``--expected``) are the reference fits on the batch's *Asimov* fake
database: the same base database and injected model with no draws at all (n_obs = b + s,
UL_obs = UL_exp plus the injected signal; ``fakedb --noise fixed``): the particle's
worth without noise, before any walk.  For one likelihood ratio the Asimov value
approximates the median over fakes (Cowan, Cranmer, Gross and Vitells, Eur. Phys. J. C
71 (2011) 1554, sections 3.2 and 4); K's maximum over combinations makes it only
indicative (the paper's squark: +0.87 on the Asimov fake, a median of -0.11 over ten
Poisson fakes).  A delta K of a unit or two is lost to the noise of many fakes.  The
Asimov database is built once, beside the runs, in ``asimov-<digest>/``, and reused
(``asimov_database``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .exceptions import DatabaseError, RunError
from .fakedb import RECORD, read_record
from .model import LSP, NAMES, PIDS, ProtoModel
from .moves import Space, freezable, log_reference, remove_particle
from .polish import MAX_EVALUATIONS, Score, polish_model, run_score
from .pvalue import clopper_pearson, run_summary
from .schemas import schema_id

logger = logging.getLogger(__name__)

SCHEMA = schema_id("closure")
DEFAULT_WINDOW = 200.0  # GeV, the paper's
UNDECIDED = 0.1  # |delta K| below which a reference fit prefers neither model
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


def match(injected: Mapping[int, float], best: Mapping[int, float],
          window: float = DEFAULT_WINDOW) -> Dict[str, Any]:
    """Match the non-LSP particles of ``best`` (pid -> mass in GeV) to those of
    ``injected`` within ``window`` GeV, kind by kind.

    Within a kind the pairing found most injected particles, and of those pairings the
    one with the smallest summed mass distance (``scipy.optimize.linear_sum_assignment``;
    a greedy nearest-first pairing can lose a match when two injected particles share a
    kind).  Returns ``{"partners": [{"injected", "kind", "mass", "partner",
    "partner_mass", "found"}], "spurious": [names]}``, partners in the order of rising
    injected mass; a particle of ``best`` that found no injected one within the window is
    spurious.
    """
    from scipy.optimize import linear_sum_assignment

    wanted = sorted(((p, m) for p, m in injected.items() if p != LSP), key=lambda pm: pm[1])
    offered = [(p, m) for p, m in best.items() if p != LSP]
    partner: Dict[int, int] = {}
    for group in {kind(p) for p, _ in wanted}:
        rows = [(p, m) for p, m in wanted if kind(p) == group]
        columns = [(p, m) for p, m in offered if kind(p) == group]
        if not columns:
            continue
        distance = np.array([[abs(m - n) for _, n in columns] for _, m in rows])
        # outside the window costs more than any sum of distances inside it
        cost = np.where(distance <= window, distance, window * (len(rows) + 1) + distance)
        for i, j in zip(*linear_sum_assignment(cost)):
            if distance[i, j] <= window:
                partner[rows[i][0]] = columns[j][0]
    partners = [{"injected": NAMES[p], "kind": kind(p), "mass": m,
                 "partner": NAMES[partner[p]] if p in partner else None,
                 "partner_mass": best[partner[p]] if p in partner else None,
                 "found": p in partner} for p, m in wanted]
    used = set(partner.values())
    return {"partners": partners, "spurious": sorted(NAMES[p] for p, _ in offered if p not in used)}


def _read_injected(path: Path, source: str) -> ProtoModel:
    from .exceptions import ProtomodelsError
    from .slha import read_slha

    try:
        return read_slha(path)
    except ProtomodelsError as error:
        raise RunError(f"{source}: not a readable proto-model ({error})") from None


def _fake_record(run: Dict[str, Any]) -> Path:
    """The fakedb.json of a run (a ``pvalue.run_summary``) with an injected model: where
    run.json says or, for a moved batch, beside the run as ``fakes`` lays it out.
    ``RunError`` naming run.json's field when the run has no such database."""
    fake = run.get("fake")
    if not fake:
        raise RunError(f"{run['run']}/run.json: field 'versions.database_fake' is null: the run "
                       "used a real database, so nothing was injected")
    if not fake.get("injected"):
        raise RunError(f"{run['run']}/run.json: field 'versions.database_fake.injected' is "
                       f"{fake.get('injected')!r}: its fake database has no injected model "
                       "(give --injected to compare with a model anyway)")
    record = Path(fake["record"])
    if not record.exists():  # a batch moved since, or read from another folder
        record = Path(run["run"]).resolve().parent / record.parent.name / record.name
    return record


def injected_model(run: Dict[str, Any], injected: Optional[Path] = None) -> ProtoModel:
    """The injected model: from ``injected`` (an SLHA file) or, by
    default, from the SLHA text that the run's fake database records (``fakedb.json``,
    found where run.json says or, for a moved batch, beside the run as ``fakes`` lays it
    out).

    Raises ``RunError`` (one line, naming the file and field) when the run did not use a
    fake database with an injected model and no file is given, or the model is unreadable."""
    if injected is not None:
        return _read_injected(Path(injected), str(injected))
    record = _fake_record(run)
    try:
        injected_record = read_record(record)["injected"]
    except DatabaseError as error:  # unreadable, or not a fake database record of ours
        raise RunError(f"{error}; give --injected") from None
    if injected_record is None:
        raise RunError(f"{record}: field 'injected' is null: nothing was injected; give --injected")
    return _recorded_model(record, injected_record)


def _recorded_model(record_file: Path, injected: Dict[str, Any]) -> ProtoModel:
    """The model of a fake database record's ``injected`` field (its SLHA text, read as
    the file it was), or ``RunError`` naming the record and field."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(injected.get("file") or "injected.slha").name
        path.write_text(injected["slha"])
        return _read_injected(path, f"{record_file}: field 'injected.slha'")


def _fitted_K(fit: Dict[str, Any]) -> Optional[float]:
    """The polished K of a ``polish_model`` result; None when no point had a finite K."""
    k = float(fit["record"]["K"]) if fit["record"] else -math.inf
    return k if math.isfinite(k) else None


def _combination(fit: Dict[str, Any]) -> Optional[List[str]]:
    """The best combination of a ``polish_model`` result as ANALYSIS:DATASET (None when
    the score records none)."""
    members = (fit["record"] or {}).get("combination")
    if members is None:
        return None
    return [f"{m['analysis_id']}:{m['dataset']}" for m in members]


def reference_fits(model: ProtoModel, score: Score, max_evaluations: int = MAX_EVALUATIONS,
                   space: Optional[Space] = None) -> Dict[str, Any]:
    """Which of ``model``'s particles K prefers under ``score`` (module docstring): the
    model polished, and the model without each non-LSP particle polished alike, each
    with at most ``max_evaluations`` evaluations of ``score``.

    Returns ``{"K_start", "K", "evaluations", "seconds", "combination", "without":
    [{"particle", "kind", "mass" (GeV), "K", "delta_K", "preferred", "note",
    "combination"}]}``, particles by rising mass; K values are the polished ones, delta_K =
    K(model) - K(without the particle), combinations those of the polished models (None
    when ``score`` records none).
    ``preferred`` is None (undecided, with a note) when |delta_K| < UNDECIDED (two local
    optima of different dimension, each found with a finite budget), when a K is not
    finite, or for a particle the walker's Freeze could not remove alone (the lighter of
    an ordered pair, one that another particle decays into)."""
    space = space or Space()
    logger.info("reference fit: the model as injected (%d evaluations at most per fit)",
                max_evaluations)
    fit = polish_model(model, score, max_evaluations, space)
    k_full = _fitted_K(fit)
    evaluations, seconds = fit["evaluations"], fit["seconds"]
    rows = []
    for pid in sorted((p for p in model.masses if p != LSP), key=lambda p: model.masses[p]):
        row = {"particle": NAMES[pid], "kind": kind(pid), "mass": model.masses[pid],
               "K": None, "delta_K": None, "preferred": None, "note": "", "combination": None}
        logger.info("reference fit: the model without %s", NAMES[pid])
        reduced = remove_particle(model, pid)
        if pid not in freezable(model) or log_reference(reduced, space) == -math.inf:
            row["note"] = "cannot be removed alone (an ordered pair, or a decay into it)"
            rows.append(row)
            continue
        without = polish_model(reduced, score, max_evaluations, space)
        evaluations += without["evaluations"]
        seconds += without["seconds"]
        row["K"] = k = _fitted_K(without)
        row["combination"] = _combination(without)
        if k is None or k_full is None:
            row["note"] = "no finite K: undecided"
        else:
            row["delta_K"] = k_full - k
            if abs(k_full - k) < UNDECIDED:
                row["note"] = f"|delta K| < {UNDECIDED:g}: undecided"
            else:
                row["preferred"] = bool(k_full > k)
        rows.append(row)
    start = fit["K_start"] if math.isfinite(fit["K_start"]) else None
    return {"K_start": start, "K": k_full, "evaluations": evaluations,
            "seconds": seconds, "combination": _combination(fit), "without": rows}


def _injection(run: Dict[str, Any]) -> Tuple[Path, Dict[str, Any]]:
    """The fakedb.json of a run (a ``pvalue.run_summary``) and its record, which must have
    an injected model (``RunError`` naming the field otherwise)."""
    record_file = _fake_record(run)
    record = read_record(record_file)
    if not record.get("injected"):
        raise RunError(f"{record_file}: field 'injected' is null: nothing was injected, so "
                       "there is no Asimov database to build")
    return record_file, record


def _asimov_mismatch(record: Dict[str, Any], wanted: Dict[str, Any]) -> Optional[str]:
    """What makes an Asimov database's ``record`` other than the one ``wanted`` describes
    (a field, its value, the wanted value), or None when it is that database."""
    checks = (("noise", record["noise"], "fixed"),
              ("base.sha256", record["base"].get("sha256"), wanted["base"].get("sha256")),
              ("injected.slha", (record["injected"] or {}).get("slha"), wanted["injected"]["slha"]),
              ("smodels_version", record.get("smodels_version"), wanted["smodels_version"]),
              ("protomodels_version", record.get("protomodels_version"),
               wanted["protomodels_version"]))
    for field, value, expected in checks:
        if value != expected:
            if field == "injected.slha":
                return "field 'injected.slha' holds another model"
            return f"field '{field}' is {value!r}, not {expected!r}"
    return None


def asimov_database(run: Dict[str, Any], record_file: Path,
                    record: Dict[str, Any]) -> Tuple[Path, bool]:
    """The Asimov fake database of a run's batch (module docstring): its folder, and
    whether it was built now (False: an earlier one was reused).  ``run`` is a
    ``pvalue.run_summary``, ``record_file`` and ``record`` its fake database's record with
    an injected model (``_injection``).  It has that record's base database and injected
    model, and is built in ``asimov-<digest>/`` beside the run (about 30 s;
    the digest covers the base database's sha256, the injected SLHA text and the SModelS
    and protomodels versions, which decide the recorded signal).  It is built in a
    temporary folder, checked, and renamed into place, so a failed build leaves nothing
    and of two concurrent builds one is kept.

    Raises ``RunError`` when ``asimov-<digest>/`` holds another database (naming the
    field); ``DatabaseError`` when the base database found now (its recorded source, or
    the default one where that is gone) is not the one the run's fake was drawn from."""
    from . import __version__, fakedb
    from .database import _smodels_version

    injected, base = record["injected"], record["base"]
    wanted = {"base": base, "injected": injected, "smodels_version": _smodels_version(),
              "protomodels_version": __version__}
    text = "\n".join([str(base.get("sha256")), injected["slha"], wanted["smodels_version"],
                      __version__])
    folder = Path(run["run"]).resolve().parent / \
        f"asimov-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if not (folder / RECORD).exists():
        source = base.get("source")
        building = folder.with_name(f".{folder.name}.building-{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)
        try:
            with tempfile.TemporaryDirectory() as scratch:
                model_file = Path(scratch) / Path(injected.get("file") or "injected.slha").name
                model_file.write_text(injected["slha"])
                built = fakedb.generate(building, seed=int(record["seed"]),
                                        base=source if source and Path(source).exists() else None,
                                        inject=model_file, fudge=float(record["fudge"]),
                                        noise="fixed")
            problem = _asimov_mismatch(built, wanted)
            if problem is not None:
                raise DatabaseError(f"{record_file}: its Asimov database came out different "
                                    f"({problem}): the base database {source} is not the one "
                                    "this fake was drawn from")
            try:
                os.rename(building, folder)
                logger.info("Asimov database built: %s", folder)
                return folder, True
            except OSError:  # another process put its own there meanwhile: use that one
                if not (folder / RECORD).exists():
                    raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
    try:
        existing = read_record(folder / RECORD)
    except DatabaseError as error:  # unreadable, or not a fake database record
        raise RunError(f"{error}; remove {folder} to rebuild it") from None
    problem = _asimov_mismatch(existing, wanted)
    if problem is not None:
        raise RunError(f"{folder / RECORD}: {problem}: not the Asimov database of "
                       f"{record_file}; remove the folder")
    return folder, False


#: The fields every reference fit has (a cached one lacking any is computed again).
FIT_FIELDS = ("K_start", "K", "evaluations", "seconds", "combination", "without")
EXPECTED_FITS = "expected-fits.jsonl"  # in the Asimov folder: fits by key, as computed


def expected_fits(runs: Sequence[Dict[str, Any]], injected: Optional[Path] = None,
                  max_evaluations: int = MAX_EVALUATIONS,
                  score_of: Callable[..., Score] = run_score) -> Dict[str, Any]:
    """``reference_fits`` of the injected model on the Asimov fake database of the runs'
    batch (``asimov_database``, beside the first run), with the first run's own score
    there: ``score_of(run_dir, database=FOLDER)``.  ``runs`` are ``pvalue.run_summary``s;
    their fake databases must have one base database and one injected model, and
    ``injected``, if given, must be that model.  Returns the fits plus ``database`` (the
    folder), ``built`` and ``fits_cached``.

    With the run's own score (``run_score``, the default) the fits are deterministic, so
    they are kept in the folder's ``expected-fits.jsonl`` (``atomic.append_keyed_line``),
    keyed by a sha256 of the model, the run's score configuration (likelihood, r_limit,
    selection), ``max_evaluations`` and the protomodels version, and read back on the
    next call instead of being computed again (2-3 minutes for the paper's model).

    Raises ``RunError`` naming the run and field when the runs are of several batches or
    ``injected`` is another model, and the errors of ``asimov_database``."""
    from . import __version__
    from .atomic import append_keyed_line, read_keyed_lines
    from .polish import run_score_config

    first_file, first = _injection(runs[0])
    for run in runs[1:]:
        record_file, record = _injection(run)
        for field, value, wanted in (("base.sha256", record["base"].get("sha256"),
                                      first["base"].get("sha256")),
                                     ("injected.slha", record["injected"]["slha"],
                                      first["injected"]["slha"])):
            if value != wanted:
                raise RunError(f"{record_file}: field '{field}' differs from {first_file}'s: "
                               "--expected needs runs of one batch (one base database and "
                               "injected model)")
    model = _recorded_model(first_file, first["injected"])
    if injected is not None and _read_injected(Path(injected), str(injected)).to_dict() != \
            model.to_dict():
        raise RunError(f"{injected}: not the model injected into {first_file} (field "
                       "'injected.slha'), on which --expected's Asimov database is built; "
                       "leave out --injected")
    run_dir = Path(runs[0]["run"])
    folder, built = asimov_database(runs[0], first_file, first)
    key = None
    if score_of is run_score:
        identity = {"model": model.to_dict(), "max_evaluations": max_evaluations,
                    "score": run_score_config(run_dir, database=str(folder)),
                    "protomodels_version": __version__}
        key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
        cached = read_keyed_lines(folder / EXPECTED_FITS).get(key, {}).get("outcome")
        if isinstance(cached, dict) and all(field in cached for field in FIT_FIELDS):
            logger.info("%s: expected fits read back from %s", run_dir, folder / EXPECTED_FITS)
            return {"database": str(folder), "built": built, "fits_cached": True, **cached}
    logger.info("%s: expected fits of the injected model on the Asimov database %s",
                run_dir, folder)
    fits = reference_fits(model, score_of(run_dir, database=str(folder)), max_evaluations)
    if key is not None:
        append_keyed_line(folder / EXPECTED_FITS, {"key": key, "outcome": fits})
    return {"database": str(folder), "built": built, "fits_cached": False, **fits}


def closure(runs: Sequence[str | Path], injected: Optional[Path] = None,
            window: float = DEFAULT_WINDOW, fits: bool = False,
            max_evaluations: int = MAX_EVALUATIONS,
            score_of: Callable[..., Score] = run_score,
            expected: bool = False) -> Dict[str, Any]:
    """The closure report (schema protomodels.closure/1): per run its best K, best model
    and the match to the injected model; over runs, per injected particle the rate at
    which it was found and the rate of runs with spurious particles, each with its
    Clopper-Pearson 68% interval.

    With ``fits``, each run also gets ``reference`` (``reference_fits`` of the injected
    model on the run's score, ``score_of(run_dir)``: by default the run's own database,
    likelihood and r_limit) and ``search_gap`` (the walk's best K minus the injected
    model's K as injected, ``K_start``, and polished, ``K``: the walk's best is not
    polished, so the second is biased low by about the polishing gain), and
    the rates gain, per injected particle, how often K prefers it and how often it was
    found where K prefers it.  Costly: (1 + particles) x ``max_evaluations`` evaluations
    a run, about 2 minutes a run for the paper's model on a fake database.

    With ``expected``, the report gains ``expected``: ``expected_fits`` of the injected
    model on the batch's Asimov database (about 30 s to build once, then as one run's
    reference fits); every run must then come from one batch (``expected_fits``).

    Raises ``RunError`` for a folder that is not a run with hiscores, for runs of
    different injected models, or without an injected model (see ``injected_model``);
    with ``expected``, also the errors of ``asimov_database`` (``DatabaseError`` too)."""
    if not runs:
        raise RunError("no runs given")
    rows: List[Dict[str, Any]] = []
    warnings: List[str] = []
    truth: Optional[Dict[int, float]] = None
    summaries = [run_summary(run_dir) for run_dir in runs]
    for run_dir, summary in zip(runs, summaries):
        if not summary["fake"]:
            warnings.append(f"{summary['run']} ran on a real database, not a fake one")
        model = injected_model(summary, injected)
        masses = dict(model.masses)
        if truth is None:
            truth, first = masses, summary["run"]
        elif masses != truth:
            raise RunError(f"{summary['run']}: its injected model differs from {first}'s; "
                           "a closure report compares runs of one injected model")
        best = {PIDS[name]: mass for name, mass in summary["masses"].items()}
        row = {"run": summary["run"], "best_K": summary["best_K"],
               "steps_done": summary["steps_done"],
               "masses": summary["masses"], **match(truth, best, window)}
        if fits:
            logger.info("%s: reference fits of the injected model", summary["run"])
            reference = reference_fits(model, score_of(Path(run_dir)), max_evaluations)
            row["reference"] = reference
            row["search_gap"] = {  # the walk's best K against the injected model's
                key: None if reference[key] is None else summary["best_K"] - reference[key]
                for key in ("K_start", "K")}
        rows.append(row)
    n = len(rows)
    rates = []
    for position, partner in enumerate(rows[0]["partners"]):
        k = sum(row["partners"][position]["found"] for row in rows)
        rates.append({"what": f"{partner['kind']} within {window:g} GeV of "
                              f"{partner['mass']:g} GeV ({partner['injected']})",
                      "k": k, "n": n, "rate": k / n, "interval_68": clopper_pearson(k, n)})
    if fits:
        rates += _preference_rates(rows)
    k = sum(bool(row["spurious"]) for row in rows)
    rates.append({"what": "runs with spurious particles", "k": k, "n": n, "rate": k / n,
                  "interval_68": clopper_pearson(k, n)})
    for text in warnings:
        logger.warning("%s", text)
    report = {"schema": SCHEMA, "window_GeV": window, "runs": rows, "rates": rates,
              "warnings": warnings}
    if expected:
        report["expected"] = expected_fits(summaries, injected, max_evaluations, score_of)
    return report


def _preference_rates(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per injected particle: the runs whose K prefers it, and of those the runs that found it."""
    rates = []
    for entry in rows[0]["reference"]["without"]:
        name = entry["particle"]
        decided = [(w, p) for row in rows for w in row["reference"]["without"]
                   for p in row["partners"] if w["particle"] == name and p["injected"] == name
                   and w["preferred"] is not None]
        if not decided:
            continue
        preferred = [p for w, p in decided if w["preferred"]]
        k, n = len(preferred), len(decided)
        rates.append({"what": f"K prefers {name} ({entry['kind']}) to its absence", "k": k, "n": n,
                      "rate": k / n, "interval_68": clopper_pearson(k, n)})
        if preferred:
            found = sum(p["found"] for p in preferred)
            rates.append({"what": f"{name} found where K prefers it", "k": found,
                          "n": k, "rate": found / k, "interval_68": clopper_pearson(found, k)})
    return rates


def _number(value: Optional[float], spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


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
        lines.append(f"{Path(row['run']).resolve().name:<28} {row['best_K']:7.2f}  {model}; "
                     f"{verdict}; spurious: {spurious}")
        if "reference" in row:
            ref = row["reference"]
            gap = row["search_gap"]
            lines.append(f"{'':<28} {'':>7}  injected model: K {_number(ref['K_start'])} as "
                         f"injected, {_number(ref['K'])} polished; search gap "
                         f"{_number(gap['K_start'], '+.2f')} / {_number(gap['K'], '+.2f')}; "
                         f"K gained with each particle: {_gains(ref)}")
    for rate in report["rates"]:
        low, high = rate["interval_68"]
        lines.append(f"{rate['what']}: {rate['k']}/{rate['n']} "
                     f"(68% interval {low:.2f}-{high:.2f})")
    if "expected" in report:
        ref = report["expected"]
        lines.append(f"expected (Asimov database {ref['database']}"
                     f"{', built now' if ref['built'] else ''}"
                     f"{'; fits read back' if ref.get('fits_cached') else ''}): injected model K "
                     f"{_number(ref['K_start'])} as injected, {_number(ref['K'])} polished; "
                     f"K gained with each particle: {_gains(ref)}")
        lines.append(f"  best combination: {_members(ref['combination'])}")
        for w in ref["without"]:
            if w["K"] is not None:
                lines.append(f"  without {w['particle']}: {_members(w['combination'])}")
    return "\n".join(lines)


def _gains(ref: Dict[str, Any]) -> str:
    return ", ".join(f"{w['particle']} {_number(w['delta_K'], '+.2f')}"
                     + ("" if w["preferred"] is not None else f" ({w['note']})")
                     for w in ref["without"])


def _members(combination: Optional[List[str]]) -> str:
    if combination is None:
        return "not recorded"
    return ", ".join(combination) or "none (no excess)"
