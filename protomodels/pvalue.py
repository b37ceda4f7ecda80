"""The global p-value (SPEC section 8): how often the Standard Model alone, through
fake databases, gives a best K at least as high as the real data's.

``global_pvalue`` compares the best K of a real run with the best K of runs of the same
walker configuration on fake SM-only databases: the fraction of fakes at or above the
real K with its binomial uncertainty (and a Clopper-Pearson 68% interval, which stays
meaningful when no fake reaches it), plus the tail of a Gaussian kernel density
estimate of the fakes' K distribution, as the paper did.  ``run_fakes`` produces such
runs: N fake databases and a walker run on each, resumable.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .atomic import read_json_record, write_json_atomic
from .exceptions import RunError
from .progress import progress_bar
from .runs import legacy_config, read_run, run_steps
from .schemas import schema_id
from .statistics.workspaces import DEFAULT_LIKELIHOOD

logger = logging.getLogger(__name__)

SCHEMA = schema_id("pvalue")
FAKES_SCHEMA = schema_id("fakes")
#: Run settings that must agree between the real run and the fakes for a fair comparison.
COMPARED = ("walkers", "steps", "ladder", "swap_every", "mass_steps", "move_mix",
            "screen_train_at", "r_limit",
            "sqrts", "analyses")


def run_summary(run_dir: str | Path) -> Dict[str, Any]:
    """Best K of a run (its top hiscore), its configuration and what database it used."""
    from . import hiscores

    run_dir = Path(run_dir)
    run = read_run(run_dir)
    entries = hiscores.read(run_dir / "hiscores.json")
    if not entries:
        raise RunError(f"{run_dir / 'hiscores.json'}: no hiscores")
    config = legacy_config(dict(run["config"]))
    config["steps"] = sum(s["steps"] for s in run["segments"]) or config.get("steps")
    walked = [e for e in entries if not e.get("polished")]  # fakes are never polished
    if not walked:
        raise RunError(f"{run_dir / 'hiscores.json'}: only polished hiscores")
    best = max(walked, key=lambda e: e["K"])
    done = run_steps(run_dir)
    return {"run": str(run_dir), "best_K": float(best["K"]), "steps_done": done,
            "particles": sorted(best["model"]["masses"]),
            "masses": best["model"]["masses"], "config": config,
            "fake": run.get("versions", {}).get("database_fake")}


def fake_density(ks: Sequence[float]):
    """The kernel density estimate of the fakes' best K (Gaussian, Scott's bandwidth),
    used for the p-value and its plot alike."""
    from scipy import stats

    return stats.gaussian_kde(np.asarray(ks, dtype=float))


def clopper_pearson(k: int, n: int, level: float = 0.68) -> List[float]:
    """The Clopper-Pearson (exact binomial) central interval of a rate k/n at confidence
    ``level``; [0, x] for k = 0 and [x, 1] for k = n (Clopper & Pearson, Biometrika 26
    (1934) 404)."""
    from scipy import stats

    tail = (1.0 - level) / 2.0
    lower = 0.0 if k == 0 else float(stats.beta.ppf(tail, k, n - k + 1))
    upper = 1.0 if k == n else float(stats.beta.ppf(1.0 - tail, k + 1, n - k))
    return [lower, upper]


def global_pvalue(real_k: float, fake_ks: Sequence[float]) -> Dict[str, Any]:
    """p = #(fake K >= real K) / N with binomial errors, and the KDE tail probability."""
    ks = np.asarray(fake_ks, dtype=float)
    n = len(ks)
    if n == 0:
        raise RunError("no fake runs to compare with")
    above = int(np.sum(ks >= real_k))
    p = above / n
    result: Dict[str, Any] = {
        "n_fakes": n, "n_at_or_above": above, "p_value": p,
        "p_value_error": float(np.sqrt(p * (1 - p) / n)),
        "p_value_interval_68": clopper_pearson(above, n),
        "p_value_kde": None, "kde_bandwidth": None,
    }
    if n >= 2 and np.ptp(ks) > 0:
        kde = fake_density(ks)
        result["p_value_kde"] = float(kde.integrate_box_1d(real_k, np.inf))
        result["kde_bandwidth"] = float(np.sqrt(kde.covariance[0, 0]))
    return result


def compare_runs(real_run: str | Path, fake_runs: Sequence[str | Path]) -> Dict[str, Any]:
    """The p-value report of ``protomodels pvalue`` (schema protomodels.pvalue/1)."""
    real = run_summary(real_run)
    fakes = [run_summary(f) for f in fake_runs]
    for fake in fakes:  # K of different statistical models are not comparable at all
        if fake["config"]["likelihood"] != real["config"]["likelihood"]:
            raise RunError(f"{fake['run']}/run.json: field 'config.likelihood' is "
                           f"{fake['config']['likelihood']!r}, but {real['run']} used "
                           f"{real['config']['likelihood']!r}; p-values compare runs of one "
                           "likelihood")
    warnings: List[str] = []
    if real["fake"]:
        warnings.append(f"{real['run']} ran on a fake database ({real['fake']['record']})")
    for fake in fakes:
        if not fake["fake"]:
            warnings.append(f"{fake['run']} ran on a real database, not a fake one")
        elif fake["fake"].get("injected"):
            warnings.append(f"{fake['run']} ran on a database with an injected signal")
        differ = [k for k in COMPARED if fake["config"].get(k) != real["config"].get(k)]
        if differ:
            warnings.append(f"{fake['run']} differs from {real['run']} in "
                            + ", ".join(f"{k} ({fake['config'].get(k)} vs {real['config'].get(k)})"
                                        for k in differ))
    for run in [real] + fakes:
        if run["steps_done"] is not None and run["steps_done"] < run["config"]["steps"]:
            warnings.append(f"{run['run']} is unfinished: {run['steps_done']} of "
                            f"{run['config']['steps']} steps")
    for text in warnings:
        logger.warning("%s", text)
    report = {"schema": SCHEMA, "real": real, "fakes": fakes, "warnings": warnings}
    report.update(global_pvalue(real["best_K"], [f["best_K"] for f in fakes]))
    return report


def format_report(report: Dict[str, Any]) -> str:
    lo, hi = report["p_value_interval_68"]
    lines = [f"real run {report['real']['run']}: best K = {report['real']['best_K']:.3f} "
             f"({', '.join(report['real']['particles'])})",
             f"{report['n_fakes']} fake runs, best K: "
             + ", ".join(f"{f['best_K']:.2f}" for f in sorted(report["fakes"], key=lambda f: f["best_K"])),
             f"global p-value = {report['n_at_or_above']}/{report['n_fakes']} = "
             f"{report['p_value']:.3f} +- {report['p_value_error']:.3f} "
             f"(68% CL interval {lo:.3f}-{hi:.3f})"]
    if report["p_value_kde"] is not None:
        lines.append(f"kernel density estimate: p = {report['p_value_kde']:.3f} "
                     f"(bandwidth {report['kde_bandwidth']:.2f} in K)")
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the batch of fakes

def fake_seeds(seed: int, count: int) -> List[Dict[str, int]]:
    """Database and walker seeds of fake i, from one SeedSequence (recorded in fakes.json)."""
    children = np.random.SeedSequence(seed).spawn(count)
    return [{"database": int(c.generate_state(1)[0]), "walk": int(c.generate_state(2)[1])}
            for c in children]


def run_fakes(out: str | Path, count: int, seed: int, walkers: int, steps: int,
              base: Optional[str] = None, inject: Optional[str] = None, fudge: float = 1.0,
              noise: str = "poisson", cluster: Optional[str] = None, jobs: Optional[int] = None,
              walk_options: Optional[Dict[str, Any]] = None) -> List[Path]:
    """Generate ``count`` fake databases under ``out`` and run walkers on each.

    ``out/db-<i>`` holds fake database i, ``out/run-<i>`` its run; ``out/fakes.json``
    records the seeds.  Calling it again continues: an existing database is reused, a
    run that has fewer steps than asked for is resumed, a finished one is skipped.
    """
    from . import fakedb
    from .runs import WalkConfig, run_steps, walk

    runner = None
    if cluster:
        from .cluster import DaskRunner
        runner = DaskRunner(cluster, jobs)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = fake_seeds(seed, count)
    options = {"likelihood": DEFAULT_LIKELIHOOD, **(walk_options or {})}
    manifest = {"schema": FAKES_SCHEMA, "seed": seed, "count": count, "walkers": walkers,
                "steps": steps, "inject": inject, "fudge": fudge, "noise": noise,
                "likelihood": options["likelihood"],
                "fakes": [{"database": f"db-{i:03d}", "run": f"run-{i:03d}", "seeds": s}
                          for i, s in enumerate(seeds)]}
    previous = out / "fakes.json"
    if previous.exists():
        stored = read_json_record(previous, FAKES_SCHEMA, RunError, "batch file")
        stored.setdefault("likelihood", legacy_config({})["likelihood"])
        for key in ("seed", "walkers", "inject", "fudge", "noise", "likelihood"):
            if stored.get(key) != manifest[key]:
                raise RunError(f"{previous}: field {key!r} is {stored.get(key)!r}, this call "
                               f"asks for {manifest[key]!r}; use another output folder")
    write_json_atomic(previous, manifest)
    runs = []
    with progress_bar(count, "fakes done") as advance:
        for i, entry in enumerate(manifest["fakes"]):
            db_dir, run_dir = out / entry["database"], out / entry["run"]
            if fakedb.record_path(db_dir) is None:
                fakedb.generate(db_dir, seed=entry["seeds"]["database"], base=base,
                                inject=inject, fudge=fudge, noise=noise)
            started = (run_dir / "run.json").exists()
            done = (run_steps(run_dir) or 0) if started else 0
            if done < steps:
                logger.info("fake %d/%d: %s on %s", i + 1, count, run_dir, db_dir)
                config = WalkConfig(out=str(run_dir), walkers=walkers, steps=steps - done,
                                    seed=entry["seeds"]["walk"], database=str(db_dir.resolve()),
                                    **options)
                summary = walk(config, resume=started, runner=runner)
                if summary["crashed"] or summary["interrupted"]:
                    raise RunError(f"{run_dir}: walkers {summary['crashed'] + summary['interrupted']} "
                                   "did not finish; run the same command again to continue")
            runs.append(run_dir)
            advance()
    return runs

