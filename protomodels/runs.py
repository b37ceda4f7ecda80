"""Walker runs on disk: configuration, per-walker histories, checkpoints, exact resume.

A run directory holds ``run.json`` (configuration, seed, versions) and one folder per
walker with ``history.jsonl`` (one JSON object per step) and ``checkpoint.json`` (the
state, the K that goes with it, the random generator's state and the history length at
that moment).  Resuming truncates the history back to the checkpoint and continues with
the saved generator state, so a resumed run is identical, byte for byte, to an
uninterrupted one.  Every file is written atomically or appended line by line.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .atomic import read_json_record, sole_writer, write_json_atomic, write_text_atomic
from .exceptions import RunError
from .model import LSP, ProtoModel
from .statistics.workspaces import DEFAULT_LIKELIHOOD
from .moves import Space, Unfreeze, default_moves
from .walker import sample

logger = logging.getLogger(__name__)

RUN_SCHEMA = "protomodels.run/1"
CHECKPOINT_SCHEMA = "protomodels.checkpoint/1"


@dataclass
class RunConfig:
    walkers: int = 1
    seed: int = 0
    temperature: float = 1.0
    checkpoint_every: int = 10
    extra: Dict[str, Any] = field(default_factory=dict)


def walker_seeds(seed: int, walkers: int) -> List[np.random.SeedSequence]:
    """One independent stream per walker: SeedSequence(seed).spawn(walkers)."""
    return np.random.SeedSequence(seed).spawn(walkers)


def start_model(rng: np.random.Generator, space: Space) -> ProtoModel:
    """SPEC: the LSP (mass uniform in 200-500 GeV) plus one random particle."""
    lo, hi = space.mass_range(LSP)
    lsp = ProtoModel(masses={LSP: float(rng.uniform(max(200.0, lo), min(500.0, hi)))})
    unfreeze = Unfreeze(space)
    for _ in range(100):
        proposal = unfreeze.propose(lsp, rng)
        if proposal is not None and proposal.log_ratio > -math.inf:
            return proposal.model
    return lsp


class WalkerStore:
    """One walker's history and checkpoint (emcee-style backend)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.history = self.folder / "history.jsonl"
        self.checkpoint = self.folder / "checkpoint.json"
        self.timings = self.folder / "timings.txt"  # wall seconds per step; not reproducible

    def truncate_timings(self, step: int) -> None:
        """Keep the wall times of the steps up to ``step`` (the later ones are redone)."""
        if self.timings.exists():
            kept = [line for line in self.timings.read_text().splitlines(keepends=True)
                    if line.strip() and int(line.split()[0]) <= step]
            write_text_atomic(self.timings, "".join(kept))

    def log_time(self, step: int, seconds: float) -> None:
        with open(self.timings, "a") as handle:
            handle.write(f"{step} {seconds:.4f}\n")

    def size(self) -> int:
        return self.history.stat().st_size if self.history.exists() else 0

    def save_checkpoint(self, step: int, model: ProtoModel, record: Dict[str, Any],
                        rng: np.random.Generator, size: Optional[int] = None) -> None:
        """``size``: the history length that belongs to ``step`` (default: the file's)."""
        size = self.size() if size is None else size
        write_json_atomic(self.checkpoint, {
            "schema": CHECKPOINT_SCHEMA, "step": step, "model": model.to_dict(),
            "record": record, "rng": rng.bit_generator.state, "history_bytes": size})

    def load_checkpoint(self) -> Dict[str, Any]:
        """The checkpoint, checked against its shipped schema; ``RunError`` (one line,
        naming the file and, for a wrong field, its JSON path) if it cannot be resumed."""
        if not self.checkpoint.exists():
            raise RunError(f"{self.checkpoint}: no checkpoint to resume from")
        try:
            return read_json_record(self.checkpoint, CHECKPOINT_SCHEMA, RunError, "checkpoint",
                                    "checkpoint")
        except RunError as error:
            raise RunError(f"{error}; this walker cannot be resumed: restore the file or "
                           "start a new run") from None

    def truncate_history(self, size: int) -> None:
        """Drop the steps written after the checkpoint (they will be redone)."""
        if self.history.exists() and self.history.stat().st_size > size:
            with open(self.history, "r+b") as handle:
                handle.truncate(size)

    def append(self, entry: Dict[str, Any]) -> None:
        with open(self.history, "a") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


Score = Callable[[ProtoModel], Dict[str, Any]]  # returns at least {"K": float}


def one_blas_thread() -> None:
    """Limit numpy's BLAS to one thread in this process.  Our linear algebra is on tiny
    matrices, where BLAS threads only spin; with a walker per core they starve the
    walkers: a forked walker's first evaluation took 280-400 s instead of 1 s on 2 cores."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def run_walker(folder: Path, seed: np.random.SeedSequence, score: Score, steps: int,
               space: Space, temperature: float = 1.0, checkpoint_every: int = 10,
               resume: bool = False, hiscores: Optional[Path] = None, walker: int = 0) -> None:
    """Run (or continue) one walker for ``steps`` more steps.

    Ctrl-C (KeyboardInterrupt) ends the walker after a checkpoint of its last step.
    The start and every accepted state are merged into ``hiscores`` at every checkpoint.
    """
    one_blas_thread()
    store = WalkerStore(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if resume and store.checkpoint.exists():  # without one it never finished its start: redo it
        state = store.load_checkpoint()
        store.truncate_history(state["history_bytes"])
        store.truncate_timings(state["step"])
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = state["rng"]
        model = ProtoModel.from_dict(state["model"], source=str(store.checkpoint))
        record, first = state["record"], state["step"] + 1
    else:
        rng = np.random.Generator(np.random.PCG64(seed))
        model = start_model(rng, space)
        record, first = score(model), 1
        store.truncate_history(0)
        store.save_checkpoint(0, model, record, rng)
    records: Dict[int, Dict[str, Any]] = {}
    candidates: List[Dict[str, Any]] = [] if resume else [_candidate(record, walker, 0, model)]

    def scored(candidate: ProtoModel) -> float:
        result = score(candidate)
        records[id(candidate)] = result
        return float(result["K"])

    def checkpoint(step_number: int, state_model: ProtoModel, size: int,
                   state_record: Dict[str, Any]) -> None:
        store.save_checkpoint(step_number, state_model, state_record, rng, size)
        if hiscores is not None and candidates:
            update_hiscores(hiscores, candidates)
            candidates.clear()

    moves = default_moves(space)
    last = (first - 1, model, store.size(), record)
    rng_after_last = rng.bit_generator.state
    clock = time.perf_counter()
    try:
        for step in sample(model, float(record["K"]), scored, moves, rng, steps,
                           temperature=temperature, first_step=first):
            if step.accepted:
                record = records[id(step.model)]
                candidates.append(_candidate(record, walker, step.step, step.model))
            records.clear()
            store.append({"step": step.step, "move": step.move, "accepted": step.accepted,
                          **record, "model": step.model.to_dict()})
            last = (step.step, step.model, store.size(), record)
            rng_after_last = rng.bit_generator.state
            now = time.perf_counter()
            store.log_time(step.step, now - clock)
            clock = now
            if step.step % checkpoint_every == 0 or step.step == first + steps - 1:
                checkpoint(*last)
    except KeyboardInterrupt:
        logger.warning("walker %d interrupted at step %d: checkpointing", walker, last[0])
        # Back to the last complete step: its generator state, its history length (a line
        # of an unfinished step may have reached the disk), so that a resume is exact.
        rng.bit_generator.state = rng_after_last
        store.truncate_history(last[2])
        checkpoint(*last)
        raise


def _candidate(record: Dict[str, Any], walker: int, step: int, model: ProtoModel) -> Dict[str, Any]:
    """A visited state as a hiscore entry (the start, step 0, counts as visited)."""
    return {"K": record["K"], "walker": walker, "step": step,
            **{k: v for k, v in record.items() if k != "K"}, "model": model.to_dict()}


def update_hiscores(path: Path, candidates: List[Dict[str, Any]]) -> None:
    from . import hiscores
    hiscores.update(path, hiscores.merge(candidates))


def read_history(folder: Path) -> List[Dict[str, Any]]:
    """All steps of one walker (none if it has not written its first step yet); a corrupt
    line is a ``RunError`` naming the file and line."""
    path = Path(folder) / "history.jsonl"
    if not path.exists():
        return []
    steps = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            steps.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise RunError(f"{path}:{number}: corrupt history line ({error})") from None
    return steps


def physics_score(database, r_limit: float = 1.0, selection=None) -> Score:
    """K of a model against the database, with what the history records about it."""
    from . import significance
    from .exceptions import ProtomodelsError

    significance.default_matrix()  # read now, before walkers fork (0.7 s of YAML)

    def score(model: ProtoModel) -> Dict[str, Any]:
        try:
            result = significance.evaluate(model, database, r_limit=r_limit, selection=selection)
        except ProtomodelsError as error:
            logger.warning("model %s not evaluated (%s): proposal rejected", model.describe(), error)
            return {"K": -math.inf}
        return {"K": result.K, "TL": result.TL, "mu_hat": result.mu_hat,
                "mu_max": result.mu_max if math.isfinite(result.mu_max) else None,
                "combination": [{"analysis_id": m.prediction.analysis_id,
                                 "dataset": m.prediction.dataset_id,
                                 "type": m.prediction.data_type,
                                 "sqrts": m.prediction.sqrts} for m in result.combination]}
    return score


def load_physics_score(config: "WalkConfig"):
    """(database, score) for a run's configuration: its database, likelihood, r_limit and
    selection."""
    from .loader import load_database
    from .predictor import Selection

    db = load_database(config.database, config.likelihood)
    selection = Selection(sqrts=tuple(config.sqrts), analyses=tuple(config.analyses))
    return db, physics_score(db, config.r_limit, selection)


def best_fit(model: ProtoModel, mu_hat: float) -> ProtoModel:
    """The model with every multiplier scaled by mu_hat: the best fit within the critic.

    The chain itself keeps the unscaled state (a deterministic rescaling inside the
    chain would break its reference measure); K is the same for both.
    """
    from .moves import process_keys
    fitted = model.copy()
    fitted.ssm = {key: model.ssm.get(key, 1.0) * mu_hat for key in process_keys(model)}
    return fitted


@dataclass
class WalkConfig:
    """Everything that defines a run; written resolved into run.json."""

    out: str = ""
    walkers: int = field(default_factory=lambda: os.cpu_count() or 1)
    steps: int = 100
    seed: int = 0
    temperature: float = 1.0
    r_limit: float = 1.0
    checkpoint_every: int = 10
    database: Optional[str] = None
    sqrts: List[int] = field(default_factory=lambda: [8, 13])
    analyses: List[str] = field(default_factory=lambda: ["*"])
    likelihood: str = DEFAULT_LIKELIHOOD  # pyhf results: "simplified" or "full"


#: Runs made before the likelihood was a setting used SModelS' default workspaces: the
#: full ones of ATLAS-SUSY-2018-04 and -16.  Resumed, they continue with "full".
LEGACY_LIKELIHOOD = "full"


def read_run_config(run_dir: Path) -> Dict[str, Any]:
    """The configuration in ``run_dir/run.json`` (its database, likelihood, r_limit...),
    ``likelihood`` filled in for runs that predate it; without a readable run.json, only
    the default likelihood."""
    try:
        config = dict(json.loads((Path(run_dir) / "run.json").read_text())["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return {"likelihood": DEFAULT_LIKELIHOOD}
    config.setdefault("likelihood", LEGACY_LIKELIHOOD)
    return config


def load_config(path: Path) -> Dict[str, Any]:
    """Read a TOML or YAML run configuration; an unknown key or a wrong type names itself."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise RunError(f"{path}: cannot read configuration ({error})") from None
    try:
        if path.suffix == ".toml":
            import tomllib
            data = tomllib.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text) or {}
    except Exception as error:
        raise RunError(f"{path}: malformed configuration ({error})") from None
    validate_config(data, str(path))
    return data


def validate_config(values: Any, source: str) -> None:
    """Check a run configuration (flags, a --config file, or run.json's 'config') against
    the one schema ``protomodels/schemas/run-config.json``: known keys, types and ranges.
    Raises ``RunError`` naming ``source``, the JSON path and the problem."""
    from .schemas import validate

    validate(values, "run-config", source, RunError)


def _versions(db) -> Dict[str, Any]:
    from smodels import installation
    from . import __version__
    return {"protomodels": __version__, "smodels": installation.version(),
            "database": db.version if db else None, "database_sha256": db.sha256 if db else None,
            "database_path": db.path if db else None,
            "database_fake": db.fake if db else None}


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _walker_process(index: int, folder: Path, seed, score: Score, steps: int, space: Space,
                    config: WalkConfig, resume: bool, hiscores_path: Path) -> None:
    import signal
    signal.signal(signal.SIGTERM, _interrupt)  # batch schedulers stop jobs with SIGTERM
    try:
        run_walker(folder, seed, score, steps, space, config.temperature,
                   config.checkpoint_every, resume=resume, hiscores=hiscores_path, walker=index)
    except KeyboardInterrupt:
        os._exit(130)
    except Exception:
        logger.exception("walker %d crashed", index)
        os._exit(1)
    os._exit(0)


def progress(out: Path, walkers: int) -> List[Dict[str, Any]]:
    """Steps done, acceptance and best K of every walker, from the histories on disk."""
    status = []
    for i in range(walkers):
        entries = read_history(Path(out) / f"walker-{i}")
        status.append({"walker": i, "steps": entries[-1]["step"] if entries else 0,
                       "acceptance": (sum(e["accepted"] for e in entries) / len(entries)) if entries else 0.0,
                       "best_K": max((e["K"] for e in entries), default=None)})
    return status


def walk(config: WalkConfig, resume: bool = False, score_factory=None,
         cluster: Optional[str] = None, jobs: Optional[int] = None) -> Dict[str, Any]:
    """Start or continue a run: load the database once, then one process per walker
    (forked after the load, so they share it), or one Dask task per walker with
    ``cluster`` (see ``protomodels.cluster``).  Returns a summary with crashed walkers."""

    out = Path(config.out)
    if resume and not (out / "run.json").exists():
        raise RunError(f"{out / 'run.json'}: cannot resume (no such file)")
    if not resume:
        validate_config(asdict(config), "walk configuration")
    with sole_writer(out / "run.lock", RunError, "this run"):
        return _walk(config, out, resume, score_factory, cluster, jobs)


def _walk(config: WalkConfig, out: Path, resume: bool, score_factory,
          cluster: Optional[str], jobs: Optional[int]) -> Dict[str, Any]:
    """``walk`` while this process is the run's sole writer."""
    run_json = out / "run.json"
    if resume:
        stored = read_json_record(run_json, RUN_SCHEMA, RunError, "run file", "run")
        steps = config.steps
        if "likelihood" not in stored["config"]:
            logger.warning("%s predates the likelihood setting: continuing with %r", run_json,
                           LEGACY_LIKELIHOOD)
        config = WalkConfig(**{"likelihood": LEGACY_LIKELIHOOD, **stored["config"]})
        config.steps = steps
    elif run_json.exists():
        raise RunError(f"{out}: a run already exists there; use --resume or another --out")
    # Steps each walker has done.  On resume its checkpoint is read here, so a broken one
    # stops the run before any walker starts; none yet: it stopped during its first
    # evaluation and starts again from its seed.
    stores = [WalkerStore(out / f"walker-{i}") for i in range(config.walkers)]
    done = [s.load_checkpoint()["step"] if resume and s.checkpoint.exists() else 0
            for s in stores]
    db = None
    if score_factory is None:
        db, score = load_physics_score(config)
    else:
        score = score_factory()
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        stored["segments"].append({"steps": config.steps, "started": time.time()})
        write_json_atomic(run_json, stored)
    else:
        write_json_atomic(run_json, {"schema": RUN_SCHEMA, "config": asdict(config),
                                     "versions": _versions(db),
                                     "seeds": {"entropy": config.seed, "spawn": "SeedSequence(seed).spawn(walkers)"},
                                     "segments": [{"steps": config.steps, "started": time.time()}]})
    seeds = walker_seeds(config.seed, config.walkers)
    space = Space()
    tty = sys.stderr.isatty()
    last_report = [0.0]

    def report() -> None:
        now = time.monotonic()
        if now - last_report[0] > (1.0 if tty else 30.0):
            last_report[0] = now
            line = "  ".join(f"w{s['walker']}: {s['steps']} steps, acc {100 * s['acceptance']:.0f}%, "
                             f"best K {s['best_K'] if s['best_K'] is None else round(s['best_K'], 2)}"
                             for s in progress(out, config.walkers))
            if tty:
                print("\r" + line, end="", file=sys.stderr, flush=True)
            else:
                logger.warning("progress: %s", line)

    if cluster:
        from . import cluster as dask_cluster
        crashed = dask_cluster.run_walkers(out, seeds, [d + config.steps for d in done],
                                           asdict(config), cluster, jobs, report, score_factory)
        interrupted: List[int] = []
    else:
        crashed, interrupted = _run_forked(out, seeds, score, space, config, resume, report)
    if tty:
        print(file=sys.stderr)
    for i in crashed:
        logger.error("walker %d crashed: --resume continues it from its last checkpoint", i)
    export_hiscores(out)
    return {"out": str(out), "crashed": crashed, "interrupted": interrupted,
            "progress": progress(out, config.walkers)}


def jax_started() -> bool:
    """Whether jax has started a backend in this process (its thread pools exist then)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(bridge is not None and getattr(bridge, "_backends", None))


def freeze_before_fork() -> None:
    """Check that forking is safe and take every object alive now (the loaded database:
    millions of them) out of the garbage collector's reach, so that forked walkers neither
    scan it in their full collections nor copy its pages by writing the collector's
    bookkeeping into them.

    Raises ``RunError`` if jax has started in this process: jax is multithreaded, and a
    process forked from it can deadlock.  Walkers use pyhf's numpy backend; only
    ``database simplify --validate --backend jax`` starts jax, and it forks nothing."""
    if jax_started():
        raise RunError("jax has started in this process, and forked walkers could deadlock: "
                       "run walkers in a process that does not use pyhf's jax backend")
    gc.collect()
    gc.freeze()


def _run_forked(out: Path, seeds, score: Score, space: Space, config: WalkConfig,
                resume: bool, report) -> Tuple[List[int], List[int]]:
    """One forked process per walker; (crashed, interrupted) walkers."""
    import multiprocessing
    import signal
    # Ctrl-C and SIGTERM checkpoint and stop, also when started in the background
    # (where shells set SIGINT to be ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    context = multiprocessing.get_context("fork")
    freeze_before_fork()
    processes = [context.Process(target=_walker_process, name=f"walker-{i}",
                                 args=(i, out / f"walker-{i}", seeds[i], score, config.steps, space,
                                       config, resume, out / "hiscores.json"))
                 for i in range(config.walkers)]
    for process in processes:
        process.start()
    try:
        while any(p.is_alive() for p in processes):
            time.sleep(0.5)
            report()
    except KeyboardInterrupt:
        logger.warning("interrupted: waiting for the walkers to checkpoint")
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGINT)
    for process in processes:
        process.join()
    for i, process in enumerate(processes):
        if process.exitcode not in (0, 130):
            logger.error("walker %d exited with code %s", i, process.exitcode)
    return ([i for i, p in enumerate(processes) if p.exitcode not in (0, 130)],
            [i for i, p in enumerate(processes) if p.exitcode == 130])


def export_hiscores(out: Path) -> List[Path]:
    """Write every hiscore's best-fit model as out/hiscores/rank-<n>.slha."""
    from . import hiscores
    from .xsec import effective_xsecs
    from .slha import write_slha

    entries = hiscores.read(Path(out) / "hiscores.json")
    folder = Path(out) / "hiscores"
    folder.mkdir(exist_ok=True)
    paths = []
    for entry in entries:
        model = best_fit(ProtoModel.from_dict(entry["model"]), entry.get("mu_hat") or 1.0)
        path = folder / f"rank-{entry['rank']}.slha"
        write_slha(model, effective_xsecs(model), path)
        paths.append(path)
    return paths
