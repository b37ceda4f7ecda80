"""``protomodels bench``: where the time of a walker step goes, on the real database.

One run measures, side by side:

- (a) the straightforward pipeline per model: SModelS decomposition,
  ``theoryPredictionsFor`` with combined results, both upper limits of every prediction
  and its SModelS likelihood at the mu values our combiner samples, all with SModelS'
  own code where the project's overrides replace it (``overrides.smodels_as_shipped``);
- (b) the project's full evaluation (K, TL, combination, critic) with empty caches;
- (c) walker steps as they happen in a run (proposal and evaluation, warm caches), in
  forked walkers like ``protomodels walk``, by move type, with each walker's memory;
- the database load (cold process, from the built cache) and its peak memory.

The models are drawn from the walker's own proposals (a start model plus a few random
moves, seeded), so they look like the models of real walks.  Before (a) and (b) every
model is evaluated once untimed: SModelS initialises each map's triangulation on first
use, a one-off per process that would otherwise land on whichever pipeline runs first.
Before each timed model both our statistics cache and SModelS' interpolation cache are
emptied.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import resource
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .database import ExperimentalDatabase
from .model import ProtoModel, channel_spec
from .moves import Space, default_moves
from .overrides import smodels_as_shipped
from .predictor import NLL_SAMPLES, Selection, predict
from .xsec import effective_xsecs
from .runs import freeze_before_fork, one_blas_thread, physics_score, start_model
from .schemas import schema_id
from .slha import to_slha
from .walker import sample

logger = logging.getLogger(__name__)

BENCH_SCHEMA = schema_id("bench")


def benchmark_models(count: int, seed: int, space: Optional[Space] = None) -> List[ProtoModel]:
    """``count`` models from the walker's proposals: each a start model followed by 2-8
    random valid proposals, all accepted (seeded, so the set is fixed)."""
    space = space or Space()
    moves = default_moves(space)
    names = [m for m, _ in moves]
    weights = np.array([w for _, w in moves], dtype=float)
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    models = []
    while len(models) < count:
        model = start_model(rng, space)
        for _ in range(int(rng.integers(2, 9))):
            move = names[int(rng.choice(len(names), p=weights / weights.sum()))]
            proposal = move.propose(model, rng)
            if proposal is not None and proposal.log_ratio > -math.inf:
                model = proposal.model
        if any(v > 0 for v in effective_xsecs(model).values()):
            models.append(model)
    return models


#: (e)'s model families, one per analysis with a trained surrogate: the simplified
#: topologies those searches target, so that every model has a combined (pyhf) prediction
#: there.  Each draws its masses from the ranges the analysis probes (GeV).
def _sbottom_to_higgs(rng: np.random.Generator) -> ProtoModel:
    """ATLAS-SUSY-2018-31: Xb -> b XZ2, XZ2 -> h XZ1 (T6bbHH)."""
    xb = float(rng.uniform(900, 1500))
    xz2 = float(rng.uniform(250, min(900.0, xb - 200)))
    return ProtoModel(masses={1000005: xb, 1000023: xz2, 1000022: float(rng.uniform(60, xz2 - 130))},
                      decays={1000005: {"b XZ2": 1.0}, 1000023: {"h XZ1": 1.0}})


def _stau_pairs(rng: np.random.Generator) -> ProtoModel:
    """ATLAS-SUSY-2018-04: Xtau -> tau XZ1 (TStauStau)."""
    xtau = float(rng.uniform(150, 450))
    return ProtoModel(masses={1000015: xtau, 1000022: float(rng.uniform(1, xtau - 60))},
                      decays={1000015: {"l XZ1": 1.0}})


_EWKINO_DECAYS = {1000023: {"l l XZ1": 0.1, "q q XZ1": 0.9},
                  1000024: {"l nu XZ1": 0.33, "q q' XZ1": 0.67}}
#: The smallest XZ2/XW1 - XZ1 gap (GeV) drawn: 1 GeV above the model's highest threshold
#: of these channels (XZ2 -> tau tau XZ1, 2 m_tau); a gap below it closes a channel and
#: ``validate`` refuses the model.
_EWKINO_MIN_GAP = 1.0 + max(channel_spec(parent, name).daughter_mass({1000022: 0.0})
                            for parent, channels in _EWKINO_DECAYS.items() for name in channels)


def _compressed_ewkinos(rng: np.random.Generator) -> ProtoModel:
    """ATLAS-SUSY-2018-16: XW1 = XZ2 a few GeV above XZ1 (TChiWZoff)."""
    heavy = float(rng.uniform(100, 250))
    gap = float(rng.uniform(_EWKINO_MIN_GAP, 40))
    return ProtoModel(masses={1000022: heavy - gap, 1000023: heavy, 1000024: heavy},
                      decays={parent: dict(channels) for parent, channels in _EWKINO_DECAYS.items()})


SURROGATE_FAMILIES = {"ATLAS-SUSY-2018-31": _sbottom_to_higgs,
                      "ATLAS-SUSY-2018-04": _stau_pairs,
                      "ATLAS-SUSY-2018-16": _compressed_ewkinos}


def surrogate_models(analyses: Sequence[str], count: int, seed: int) -> List[ProtoModel]:
    """``count`` models per analysis in ``analyses`` that has a family in
    ``SURROGATE_FAMILIES`` (seeded; each model is checked by ``ProtoModel.validate``)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    models = []
    for analysis in analyses:
        family = SURROGATE_FAMILIES.get(analysis)
        for _ in range(count if family else 0):
            model = family(rng)
            model.validate(f"bench family {analysis}")
            models.append(model)
    return models


def _clear_caches(db: ExperimentalDatabase) -> None:
    from smodels.experiment.txnameDataObj import TxNameData

    db.statistics.clear()
    TxNameData.getValueFor.__wrapped__.cache_clear()


def _selected(db: ExperimentalDatabase, selection: Selection):
    """The SModelS database restricted to the selected results (a shallow copy, of a
    subclass whose result list is fixed: SModelS wants a ``Database`` instance)."""
    class Restricted(type(db.smodels)):
        expResultList = property(lambda self: list(self._selected_results))

    restricted = copy.copy(db.smodels)
    restricted.__class__ = Restricted
    restricted._selected_results = [e for e in db.smodels.expResultList if selection.accepts(e)]
    return restricted


def smodels_pipeline(model: ProtoModel, smodels_db) -> Dict[str, Any]:
    """(a): what a direct use of SModelS computes for one model."""
    from smodels.matching.theoryPrediction import theoryPredictionsFor
    from smodels.statistics.basicStats import apriori, observed

    from .predictor import decompose

    _, top = decompose(to_slha(model, effective_xsecs(model)))
    predictions = list(theoryPredictionsFor(smodels_db, top, combinedResults=True))
    rs = []
    for p in predictions:
        r = p.getRValue(observed)
        p.getRValue(apriori)
        if r is not None:
            rs.append(r)
    mu_max = 1.0 / max(rs) if rs and max(rs) > 0 else 1e3
    calls = 0
    for p in predictions:
        if p.dataType() == "upperLimit":
            continue
        for mu in np.linspace(0.0, mu_max, NLL_SAMPLES):
            p.likelihood(mu=float(mu), return_nll=True)
            calls += 1
    return {"predictions": len(predictions), "likelihood_calls": calls}


def _percentiles(values: List[float]) -> Dict[str, float]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median_s": float(np.median(values)),
            "p90_s": float(np.percentile(values, 90)), "p99_s": float(np.percentile(values, 99)),
            "mean_s": float(np.mean(values)), "max_s": float(max(values))}


def pyhf_cls_times(db: ExperimentalDatabase, patterns=("ATLAS-SUSY-2018-16", "ATLAS-SUSY-2018-04"),
                   signal_events: float = 10.0, mu: float = 1.0) -> List[Dict[str, Any]]:
    """(d): seconds of one observed CLs evaluation (SModelS' pyhf interface, numpy backend,
    its scipy optimiser) of each workspace of the matching pyhf results, full and
    simplified, for the same signal (``signal_events`` spread evenly over the signal
    regions)."""
    import fnmatch
    import json
    from pathlib import Path

    from smodels.statistics.basicStats import observed

    from .statistics import simplified
    from .statistics.validation import workspace_computer

    rows = []
    for er in db.smodels.expResultList:
        info = er.globalInfo
        if not hasattr(info, "jsonFiles") or not any(fnmatch.fnmatchcase(info.id, p) for p in patterns):
            continue
        folder = Path(info.path).parent
        for name, regions in getattr(info, "_protomodels_default_workspaces", (info.jsonFiles,))[0].items():
            full = json.loads((folder / name).read_text())
            if not simplified.is_full(full):
                continue
            simple = simplified.cached(folder / name, analysis=info.id)["workspace"]
            srs = [r["smodels"] for r in regions if r.get("smodels") and r.get("type", "SR") == "SR"]
            signal = {r: signal_events / len(srs) for r in srs}
            row: Dict[str, Any] = {"analysis": info.id, "file": name}
            for label, workspace in (("simplified", simple), ("full", full)):
                computer = workspace_computer(info, name, workspace, regions, signal)
                t0 = time.perf_counter()
                cls = computer.CLs(mu, observed)
                row[f"{label}_s"] = time.perf_counter() - t0
                row[f"{label}_cls"] = float(np.ravel(cls)[0]) if cls is not None else None
            row["speedup"] = row["full_s"] / row["simplified_s"]
            logger.info("CLs of %s %s: full %.1f s, simplified %.2f s", info.id, name,
                        row["full_s"], row["simplified_s"])
            rows.append(row)
    return rows


def likelihood_steps(db: ExperimentalDatabase, per_analysis: int = 4, seed: int = 1,
                     modes: Sequence[str] = ("simplified", "full", "surrogate")) -> Dict[str, Any]:
    """(e): one evaluation of K, cold caches, restricted to the pyhf results that have a
    trained surrogate, with each likelihood in ``modes``, for ``per_analysis`` models of
    each such analysis' family (``surrogate_models``) that have a combined prediction
    there.  Per mode: the median and slowest seconds and each model's K and r_max; for
    ``surrogate`` also how often a prediction fell back.  Leaves the database in its own
    mode again."""
    from . import significance
    from .statistics import surrogate
    from .statistics.workspaces import use_likelihood

    analyses = sorted({source.analysis for _, source, _ in surrogate.trained(db)})
    if not analyses:
        return {"analyses": [], "note": "no trained surrogate (protomodels surrogate train)"}
    own = db.likelihood or "simplified"
    selection = Selection(analyses=tuple(analyses))
    chosen = [model for model in surrogate_models(analyses, per_analysis, seed)
              if any(p.data_type == "combined" for p in predict(model, db, selection))]
    out: Dict[str, Any] = {"analyses": analyses, "models": len(chosen),
                           "described": [m.describe() for m in chosen], "modes": {}}
    try:
        for mode in modes:
            use_likelihood(db, mode)
            before = dict(surrogate.USAGE)
            seconds, ks, r_max = [], [], []
            for model in chosen:
                _clear_caches(db)
                t0 = time.perf_counter()
                evaluated = significance.evaluate(model, db, selection=selection)
                seconds.append(time.perf_counter() - t0)
                ks.append(evaluated.K)
                r_max.append(evaluated.r_max)
            row = {**_percentiles(seconds), "K": ks, "r_max": r_max}
            if mode == "surrogate":
                row["usage"] = {k: surrogate.USAGE[k] - before[k] for k in before}
            out["modes"][mode] = row
            logger.info("(e) %s: median %.3f s", mode, row.get("median_s", float("nan")))
    finally:
        use_likelihood(db, own)
    return out


def memory() -> Dict[str, float]:
    """This process' memory in MB: resident now and at peak, proportional and private."""
    out: Dict[str, float] = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[{"VmRSS": "rss_mb", "VmHWM": "peak_rss_mb"}[key]] = int(value.split()[0]) / 1024
    try:
        with open("/proc/self/smaps_rollup") as rollup:
            fields = {}
            for line in rollup:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                    fields[parts[0][:-1]] = int(parts[1]) / 1024
        out["pss_mb"] = fields.get("Pss", 0.0)
        out["private_mb"] = fields.get("Private_Clean", 0.0) + fields.get("Private_Dirty", 0.0)
    except OSError:
        pass
    return out


def load_time(database: Optional[str], repeats: int = 2,
              likelihood: str = "simplified") -> Dict[str, Any]:
    """Database load in fresh processes (from the built cache): seconds and peak memory.

    Loaded ``repeats`` times: on a virtual machine the first process to touch memory the
    host has taken back (e.g. right after the parent's own load) pays for it, which says
    nothing about the load itself; ``load_s`` is the fastest, ``loads_s`` all of them.
    """
    code = ("import sys, time, resource; t = time.perf_counter(); from protomodels.loader import "
            "load_database; db = load_database(sys.argv[2] if len(sys.argv) > 2 else None, "
            "sys.argv[1]); "
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    loads, peaks, process = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, likelihood]
                              + ([database] if database else []),
                              capture_output=True, text=True, check=True)
        seconds, peak_kb = done.stdout.split()[-2:]
        loads.append(float(seconds))
        peaks.append(int(peak_kb) / 1024)
        process.append(time.perf_counter() - started)
    return {"load_s": min(loads), "loads_s": loads, "process_s": min(process),
            "peak_rss_mb": max(peaks)}


def _walker_child(db, seed: np.random.SeedSequence, steps: int, write_fd: int) -> None:
    """(c) in a forked process: ``steps`` Metropolis steps, timed, then report as JSON.
    The start model's evaluation is timed too (``start_seconds``): it is the first
    evaluation of the process, which the steps do not show."""
    one_blas_thread()
    space = Space()
    score = physics_score(db)
    rng = np.random.Generator(np.random.PCG64(seed))
    model = start_model(rng, space)
    clock = time.perf_counter()
    K = float(score(model)["K"])
    start_seconds = time.perf_counter() - clock
    records = []
    clock = time.perf_counter()
    for step in sample(model, K, lambda m: float(score(m)["K"]), default_moves(space), rng, steps):
        now = time.perf_counter()
        records.append({"move": step.move, "seconds": now - clock, "accepted": step.accepted,
                        "K": step.K})
        clock = now
    report = {"steps": records, "start_seconds": start_seconds, "memory": memory(),
              "cache": {"hits": db.statistics.hits, "misses": db.statistics.misses}}
    with os.fdopen(write_fd, "w") as pipe:
        json.dump(report, pipe)


def walker_steps(db: ExperimentalDatabase, walkers: int, steps: int, seed: int) -> Dict[str, Any]:
    """(c): ``walkers`` forked walkers of ``steps`` steps each, sharing the loaded database."""
    children = []
    freeze_before_fork()
    for child_seed in np.random.SeedSequence(seed).spawn(walkers):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(read_fd)
            code = 0
            try:
                _walker_child(db, child_seed, steps, write_fd)
            except BaseException:  # report nothing; the parent notes the failure
                logger.exception("benchmark walker failed")
                code = 1
            os._exit(code)
        os.close(write_fd)
        children.append((pid, read_fd))
    reports = []
    for pid, read_fd in children:
        with os.fdopen(read_fd) as pipe:
            text = pipe.read()
        os.waitpid(pid, 0)
        if text:
            reports.append(json.loads(text))
    seconds = [s["seconds"] for r in reports for s in r["steps"]]
    by_move: Dict[str, List[float]] = {}
    for r in reports:
        for s in r["steps"]:
            by_move.setdefault(s["move"], []).append(s["seconds"])
    accepted = [s["accepted"] for r in reports for s in r["steps"]]
    parent = memory()
    private = sum(r["memory"].get("private_mb", 0.0) for r in reports)
    return {
        "walkers": walkers, "steps_per_walker": steps, "completed_walkers": len(reports),
        "all": _percentiles(seconds),
        "by_move": {move: _percentiles(v) for move, v in sorted(by_move.items())},
        "acceptance": float(np.mean(accepted)) if accepted else None,
        "start_seconds": [r["start_seconds"] for r in reports],
        "memory": {"parent_rss_mb": parent.get("rss_mb"),
                   "walkers": [r["memory"] for r in reports],
                   # what N walkers take together: the shared parent plus each one's own pages
                   "total_mb": (parent.get("rss_mb") or 0.0) + private},
        "cache": [r["cache"] for r in reports],
    }


def run(db: ExperimentalDatabase, models: int = 20, seed: int = 1, steps: int = 50,
        walkers: int = 2, database: Optional[str] = None, pyhf_cls: bool = True,
        likelihoods: bool = True) -> Dict[str, Any]:
    """The whole benchmark; returns the JSON document (schema ``bench``; ``read_bench``
    reads it back)."""
    from . import significance

    started = time.perf_counter()
    result: Dict[str, Any] = {"schema": BENCH_SCHEMA, "cpus": os.cpu_count(),
                              "models": models, "seed": seed, "likelihood": db.likelihood}
    logger.info("database load in a fresh process")
    result["database"] = load_time(database, likelihood=db.likelihood or "simplified")
    chosen = benchmark_models(models, seed)
    selection = Selection()
    smodels_db = _selected(db, selection)
    logger.info("warm-up: %d models", len(chosen))
    for model in chosen:
        significance.evaluate(model, db)
    per_model = []
    for i, model in enumerate(chosen):
        _clear_caches(db)
        with smodels_as_shipped():
            t0 = time.perf_counter()
            smodels_pipeline(model, smodels_db)
            a = time.perf_counter() - t0
        _clear_caches(db)
        t0 = time.perf_counter()
        evaluated = significance.evaluate(model, db)
        b = time.perf_counter() - t0
        per_model.append({"model": model.describe(), "particles": len(model.masses),
                          "a_s": a, "b_s": b, "K": evaluated.K, "r_max": evaluated.r_max})
        logger.info("model %d/%d: (a) %.2fs (b) %.2fs K=%.4f", i + 1, len(chosen), a, b,
                    evaluated.K)
    result["per_model"] = per_model
    result["a_straightforward"] = _percentiles([m["a_s"] for m in per_model])
    result["b_evaluation"] = _percentiles([m["b_s"] for m in per_model])
    logger.info("walker steps: %d walkers x %d steps", walkers, steps)
    result["c_walker_steps"] = walker_steps(db, walkers, steps, seed)
    a_total = sum(m["a_s"] for m in per_model)
    b_total = sum(m["b_s"] for m in per_model)
    c_median = result["c_walker_steps"]["all"].get("median_s")
    a_median = result["a_straightforward"]["median_s"]
    result["ratios"] = {"a_over_b_total": a_total / b_total if b_total else None,
                        "a_over_b_median": a_median / result["b_evaluation"]["median_s"],
                        "a_over_c_median": a_median / c_median if c_median else None}
    logger.info("one CLs evaluation of each large pyhf workspace, full and simplified")
    result["d_pyhf_cls"] = pyhf_cls_times(db) if pyhf_cls else []
    logger.info("K with each likelihood on the results that have a surrogate")
    result["e_likelihoods"] = likelihood_steps(db, seed=seed) if likelihoods else {}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["seconds"] = time.perf_counter() - started
    return result


def format_report(result: Dict[str, Any]) -> str:
    """A short human-readable summary of ``run``'s JSON."""
    a, b = result["a_straightforward"], result["b_evaluation"]
    c = result["c_walker_steps"]
    lines = [
        f"database load {result['database']['load_s']:.1f} s in a fresh process (of "
        f"{', '.join(f'{x:.1f}' for x in result['database'].get('loads_s', []))} s; peak "
        f"{result['database']['peak_rss_mb']:.0f} MB), {result['cpus']} cpus",
        f"(a) SModelS pipeline     median {a['median_s']:.2f} s  p90 {a['p90_s']:.2f} s",
        f"(b) our evaluation, cold median {b['median_s']:.2f} s  p90 {b['p90_s']:.2f} s",
        f"(c) walker step, warm    median {c['all'].get('median_s', float('nan')):.2f} s  "
        f"p90 {c['all'].get('p90_s', float('nan')):.2f} s  p99 {c['all'].get('p99_s', float('nan')):.2f} s  "
        f"slowest {c['all'].get('max_s', float('nan')):.2f} s  ({c['walkers']} walkers x "
        f"{c['steps_per_walker']} steps, acceptance {c['acceptance'] or 0:.0%})",
        "    first evaluation in each walker (its start model): "
        + ", ".join(f"{x:.2f} s" for x in c.get("start_seconds", [])),
    ]
    for move, p in c["by_move"].items():
        lines.append(f"      {move:<12} n={p['n']:<3} median {p['median_s']:.3f} s  "
                     f"p90 {p['p90_s']:.3f} s")
    r = result["ratios"]
    lines.append(f"ratios: (a)/(b) {r['a_over_b_total']:.2f} (total), "
                 f"{r['a_over_b_median']:.2f} (median); (a)/(c) "
                 f"{(r['a_over_c_median'] or float('nan')):.2f} (median)")
    mem = c["memory"]
    per_walker = ", ".join(f"{w.get('peak_rss_mb', 0):.0f}" for w in mem["walkers"])
    lines.append(f"memory: walkers' peak RSS {per_walker} MB; {c['walkers']} walkers together "
                 f"{mem['total_mb']:.0f} MB (shared parent + private pages)")
    for row in result.get("d_pyhf_cls", []):
        lines.append(f"(d) one CLs, {row['analysis']} {row['file']}: full {row['full_s']:.1f} s, "
                     f"simplified {row['simplified_s']:.2f} s ({row['speedup']:.0f}x)")
    e = result.get("e_likelihoods") or {}
    if e.get("modes"):
        lines.append(f"(e) K of {e['models']} models on {', '.join(e['analyses'])} alone, cold:")
        for mode, row in e["modes"].items():
            usage = row.get("usage")
            lines.append(f"      {mode:<10} median {row.get('median_s', float('nan')):.3f} s  "
                         f"slowest {row.get('max_s', float('nan')):.3f} s"
                         + (f"  (surrogate used {usage['surrogate']}x, fell back "
                            f"{usage['outside domain'] + usage['not trained']}x)" if usage else ""))
        full, sur = e["modes"].get("full"), e["modes"].get("surrogate")
        dk = [abs(a - b) for a, b in zip(sur["K"], full["K"])] if full and sur else []
        if not e.get("models"):
            lines.append("      no model of these families had a combined prediction there")
        elif dk:
            dr = [abs(a - b) / b for a, b in zip(sur["r_max"], full["r_max"]) if b]
            lines.append(f"      surrogate vs full: |K difference| median {np.median(dk):.3f}, "
                         f"max {max(dk):.3f}; r_max relative difference median "
                         f"{np.median(dr) if dr else float('nan'):.1%}, "
                         f"max {max(dr) if dr else float('nan'):.1%}")
    elif e.get("note"):
        lines.append(f"(e) {e['note']}")
    lines.insert(0, f"likelihood of pyhf results: {result.get('likelihood')}")
    lines.append(f"benchmark took {result['seconds']:.0f} s")
    return "\n".join(lines)


def read_bench(path) -> Dict[str, Any]:
    """A ``bench --json`` result read back (to compare machines or commits), checked
    against its schema: a file of another version or a damaged one is a ``FormatError``
    naming the file and JSON path instead of a KeyError deep in a comparison."""
    from .atomic import read_json_record
    from .exceptions import FormatError

    return read_json_record(path, BENCH_SCHEMA, FormatError, "benchmark result")
