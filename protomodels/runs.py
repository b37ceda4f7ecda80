"""Walker runs on disk: configuration, per-chain histories, checkpoints, exact resume,
and the round loop of replica exchange.

A run directory holds ``run.json`` (configuration, seed, versions) and one folder per
chain (``walker-<i>``) with ``history.jsonl`` (one JSON object per step) and
``checkpoint.json`` (the state, the K that goes with it, the random generator's state
and the history length at that moment); with a ladder of several temperatures also the
swap journal ``tempering.json`` and ``swaps.jsonl`` (``protomodels.tempering``).
Resuming truncates each history back to its checkpoint and continues with the saved
generator state, so a resumed run is identical, byte for byte, to an uninterrupted one.
Every file is written atomically or appended line by line.

The chains advance in rounds: all of them up to the next multiple of ``swap_every``, then
a swap sweep, decided here from the run's swap stream.  A *runner* advances the chains:
``LocalRunner`` (forked processes that live for the whole run, so each keeps its caches)
or ``protomodels.cluster.DaskRunner`` (one task per chain and round); both give the same
histories, because every chain's stream is its own and the sweeps are decided here.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .atomic import read_json_record, sole_writer, write_json_atomic, write_text_atomic
from .exceptions import RunError
from .model import LSP, ProtoModel
from .schemas import schema_id
from .statistics.workspaces import DEFAULT_LIKELIHOOD
from .moves import MASS_STEPS, MOVE_MIX, Space, Unfreeze, default_moves
from .progress import duration, live_table
from .tempering import (DEFAULT_LADDER, DEFAULT_SWAP_EVERY, Ladder, TemperingStore,
                        acceptance_by_pair, boundaries, pending_states, swap_stream, sweep)
from .walker import sample

logger = logging.getLogger(__name__)

RUN_SCHEMA = schema_id("run")
CHECKPOINT_SCHEMA = schema_id("checkpoint")


def walker_seeds(seed: int, walkers: int) -> List[np.random.SeedSequence]:
    """One independent stream per chain: SeedSequence(seed).spawn(chains); a run's swap
    stream is the next child (``tempering.swap_stream``)."""
    return np.random.SeedSequence(seed).spawn(walkers)


def start_model(rng: np.random.Generator, space: Space) -> ProtoModel:
    """SPEC: the LSP (mass uniform in 200-500 GeV) plus one random particle."""
    lo, hi = space.mass_range(LSP)
    lsp = ProtoModel(masses={LSP: float(rng.uniform(max(200.0, lo), min(500.0, hi)))})
    unfreeze = Unfreeze(space, anchored=False)  # SPEC's start, whatever the move mix
    for _ in range(100):
        proposal = unfreeze.propose(lsp, rng)
        if proposal is not None and proposal.log_ratio > -math.inf:
            return proposal.model
    return lsp


CHAIN_FOLDER = re.compile(r"^walker-(\d+)$")


def chain_folder(run_dir: Path, chain: int) -> Path:
    """The folder of chain ``chain`` of the run in ``run_dir`` (``walker-<chain>``)."""
    return Path(run_dir) / f"walker-{chain}"


def chain_folders(run_dir: Path) -> List[Tuple[int, Path]]:
    """The chain folders present in ``run_dir``, by chain number (walker-10 after
    walker-2); ``RunError`` when ``run_dir`` is not a directory or has none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory")
    found = [(int(m.group(1)), child) for child in run_dir.iterdir()
             if (m := CHAIN_FOLDER.match(child.name)) and child.is_dir()]
    if not found:
        raise RunError(f"{run_dir}: no walker-<i> folders")
    return sorted(found)


class WalkerStore:
    """One chain's history, checkpoint and timings (emcee-style backend: it writes and
    reads them)."""

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
            return read_json_record(self.checkpoint, CHECKPOINT_SCHEMA, RunError, "checkpoint")
        except RunError as error:
            raise RunError(f"{error}; this walker cannot be resumed: restore the file or "
                           "start a new run") from None

    def replace_state(self, state: Dict[str, Any]) -> None:
        """Give the checkpointed chain another state (``model`` and ``record``, from a
        swap), keeping its step, generator and history length."""
        checkpoint = self.load_checkpoint()
        checkpoint.update(model=state["model"], record=state["record"])
        write_json_atomic(self.checkpoint, checkpoint)

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


#: Each chain's screen in this process, kept across rounds: a runner continues a chain
#: round after round (every swap_every steps), and retraining is deterministic but costly.
_SCREENS: Dict[Path, Any] = {}


@dataclass(frozen=True)
class ChainSettings:
    """How one chain proposes and screens, as its run records it: ``mass_steps`` (GeV,
    the widths of the mass moves) and ``move_mix`` (``moves.default_moves``), and
    ``screen_train_at`` (the steps after which its learned K is retrained for delayed
    acceptance, ``screening``; empty: no screening)."""

    mass_steps: Tuple[float, ...] = MASS_STEPS
    move_mix: int = MOVE_MIX
    screen_train_at: Tuple[int, ...] = ()

    @classmethod
    def of(cls, config: Any) -> "ChainSettings":
        """From a ``WalkConfig`` or its dict (run.json's 'config', resolved)."""
        values = asdict(config) if not isinstance(config, dict) else config
        return cls(tuple(values["mass_steps"]), int(values["move_mix"]),
                   tuple(values.get("screen_train_at", ())))


def run_walker(folder: Path, seed: np.random.SeedSequence, score: Score, steps: int,
               space: Space, temperature: float = 1.0, checkpoint_every: int = 10,
               resume: bool = False, hiscores: Optional[Path] = None, walker: int = 0,
               settings: ChainSettings = ChainSettings()) -> None:
    """Run (or continue) one walker for ``steps`` more steps with ``settings``.

    Ctrl-C (KeyboardInterrupt) ends the walker after a checkpoint of its last step.
    The start and every accepted state are merged into ``hiscores`` at every checkpoint.
    With screening, a history line also records ``screened`` (the proposal was rejected
    by the learned K without being scored) or ``proposal`` (a rejected proposal's K and
    model: the training data of the learned K).
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
    candidates: List[Dict[str, Any]] = [] if resume else [_candidate(record, walker, 0, model,
                                                                     temperature)]

    def scored(candidate: ProtoModel) -> Tuple[float, Dict[str, Any]]:
        result = score(candidate)
        return float(result["K"]), result  # the record comes back as the step's blob

    def checkpoint(step_number: int, state_model: ProtoModel, size: int,
                   state_record: Dict[str, Any]) -> None:
        # hiscores first: a kill in between redoes the steps and merges them again
        # (harmless), where the other order would lose their candidates
        if hiscores is not None and candidates:
            update_hiscores(hiscores, candidates)
            candidates.clear()
        store.save_checkpoint(step_number, state_model, state_record, rng, size)

    moves = default_moves(space, settings.mass_steps, settings.move_mix)
    screen = None
    if settings.screen_train_at:
        from threadpoolctl import threadpool_limits

        from .screening import Screen, fingerprint

        threadpool_limits(limits=1)  # a walker is one thread; OpenMP start-up costs ~20 ms a call
        screen = Screen(settings.screen_train_at, int(seed.generate_state(1)[0]))
        trained = screen.last_due(first - 1)
        kept = _SCREENS.get(folder.resolve())
        if trained is not None:
            entries = read_history(folder, check=False)
            if (kept is not None and (kept.train_at, kept.seed, kept.trained_at) ==
                    (screen.train_at, screen.seed, trained)
                    and kept.data == fingerprint(entries, trained)):
                screen = kept  # this process trained it on the same data, a round ago
            else:  # a resumed chain retrains what it had: the same function
                screen.train(entries, trained)
        if len(_SCREENS) > 256:  # a long-lived (Dask) worker: keep the recent ones
            _SCREENS.clear()
        _SCREENS[folder.resolve()] = screen
    last = (first - 1, model, store.size(), record)
    rng_after_last = rng.bit_generator.state
    clock = time.perf_counter()
    try:
        for step in sample(model, float(record["K"]), scored, moves, rng, steps,
                           temperature=temperature, first_step=first, screen=screen,
                           blob=record):
            record = step.blob
            if step.accepted:
                candidates.append(_candidate(record, walker, step.step, step.model, temperature))
            line = {"step": step.step, "move": step.move, "accepted": step.accepted,
                    **record, "model": step.model.to_dict()}
            if screen is not None:
                if step.screened:
                    line["screened"] = True
                elif step.proposal is not None and not step.accepted:
                    line["proposal"] = {"K": step.proposal_K, "model": step.proposal.to_dict()}
            store.append(line)
            if screen is not None and screen.due(step.step):
                screen.train(read_history(folder, check=False), step.step)
            last = (step.step, step.model, store.size(), record)
            rng_after_last = rng.bit_generator.state
            now = time.perf_counter()
            store.log_time(step.step, now - clock)
            clock = now
            if step.step % checkpoint_every == 0 or step.step == first + steps - 1:
                checkpoint(*last)
    except KeyboardInterrupt:
        import signal
        # a second Ctrl-C or SIGTERM must not cut the checkpoint short
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        logger.warning("walker %d interrupted at step %d: checkpointing", walker, last[0])
        # Back to the last complete step: its generator state, its history length (a line
        # of an unfinished step may have reached the disk), so that a resume is exact.
        try:
            rng.bit_generator.state = rng_after_last
            store.truncate_history(last[2])
            checkpoint(*last)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        raise


def _candidate(record: Dict[str, Any], walker: int, step: int, model: ProtoModel,
               temperature: float) -> Dict[str, Any]:
    """A visited state as a hiscore entry (the start, step 0, counts as visited)."""
    return {"K": record["K"], "walker": walker, "step": step, "temperature": temperature,
            **{k: v for k, v in record.items() if k != "K"}, "model": model.to_dict()}


def advance_chain(out: Path, chain: int, seed: np.random.SeedSequence, target_step: int,
                  temperature: float, checkpoint_every: int, score: Score,
                  space: Optional[Space] = None,
                  settings: ChainSettings = ChainSettings()) -> int:
    """Run chain ``chain`` of the run in ``out`` up to its step ``target_step``: from its
    seed if it has no checkpoint yet, else resumed from the checkpoint (nothing to do if
    it is there already).  Returns the step reached.  The unit of work of every runner."""
    folder = chain_folder(out, chain)
    store = WalkerStore(folder)
    done = store.load_checkpoint()["step"] if store.checkpoint.exists() else None
    if done is not None and done >= target_step:
        return done
    common = dict(temperature=temperature, checkpoint_every=checkpoint_every,
                  hiscores=Path(out) / "hiscores.json", walker=chain, settings=settings)
    if done is None:
        run_walker(folder, seed, score, target_step, space or Space(), resume=False, **common)
    else:
        run_walker(folder, seed, score, target_step - done, space or Space(), resume=True, **common)
    return target_step


def update_hiscores(path: Path, candidates: List[Dict[str, Any]]) -> None:
    from . import hiscores
    hiscores.update(path, hiscores.merge(candidates))


def read_history(folder: Path, check: bool = True) -> List[Dict[str, Any]]:
    """All steps of one walker (none if it has not written its first step yet).

    Each line is checked against the shipped schema ``history-step`` (version 1 belongs to
    run.json's ``protomodels.run/1``), so a line from another version or a damaged one is
    a ``RunError`` naming the file, line and JSON path rather than a misreading.
    ``check=False`` only for a chain's own history, which its walker re-reads to train
    the learned K (0.4 ms a line would add seconds to every training).
    """
    from .schemas import validate

    path = Path(folder) / "history.jsonl"
    if not path.exists():
        return []
    steps = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            step = json.loads(line)
        except json.JSONDecodeError as error:
            raise RunError(f"{path}:{number}: corrupt history line ({error})") from None
        if check:
            validate(step, "history-step", f"{path}:{number}", RunError)
        steps.append(step)
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
                "r_max": result.r_max if math.isfinite(result.r_max) else None,
                "combination": [{"analysis_id": m.prediction.analysis_id,
                                 "dataset": m.prediction.dataset_id,
                                 "type": m.prediction.data_type,
                                 "sqrts": m.prediction.sqrts} for m in result.combination]}
    return score


def load_physics_score(config: "WalkConfig"):
    """(database, score) for a run's configuration: its database, likelihood, r_limit and
    selection."""
    from .loader import load_database

    db = load_database(config.database, config.likelihood)
    return db, physics_score(db, config.r_limit, run_selection(asdict(config)))


def run_selection(config: Dict[str, Any]):
    """The ``predictor.Selection`` of a run configuration (run.json's ``config``, or a
    ``WalkConfig`` as a dict): re-evaluations (``show``, ``report``) must use the results
    the walk used, or their K differ from the hiscores'."""
    from .predictor import SQRTS, Selection

    return Selection(sqrts=tuple(config.get("sqrts") or SQRTS),
                     analyses=tuple(config.get("analyses") or ("*",)))


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
    ladder: List[float] = field(default_factory=lambda: list(DEFAULT_LADDER))
    swap_every: int = DEFAULT_SWAP_EVERY
    r_limit: float = 1.0
    checkpoint_every: int = 10
    database: Optional[str] = None
    sqrts: List[int] = field(default_factory=lambda: [8, 13])
    analyses: List[str] = field(default_factory=lambda: ["*"])
    likelihood: str = DEFAULT_LIKELIHOOD  # pyhf results: "simplified", "full" or "surrogate"
    mass_steps: List[float] = field(default_factory=lambda: list(MASS_STEPS))  # GeV
    move_mix: int = MOVE_MIX  # version of the move mix (moves.default_moves)
    screen_train_at: List[int] = field(default_factory=list)  # screening's schedule; []: none


    processes: Optional[int] = None  # local runner: worker processes [default: min(chains, cores)]


#: Runs made before the likelihood was a setting used SModelS' default workspaces: the
#: full ones of ATLAS-SUSY-2018-04 and -16.  Resumed, they continue with "full".
LEGACY_LIKELIHOOD = "full"
#: Runs made before ``mass_steps`` was a setting: one Gaussian width.
LEGACY_MASS_STEPS = (150.0,)
#: Runs made before ``move_mix`` was a setting: reference-only unfreeze, no shift move.
LEGACY_MOVE_MIX = 1


def legacy_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """A stored run configuration in today's terms: runs made before replica exchange had
    one ``temperature`` for all walkers (a one-rung ladder), runs made before the
    likelihood setting used the full workspaces, runs made before the mass steps were a
    setting used one width of 150 GeV, runs made before the move mix was a setting used mix
    1, runs made before screening were not screened."""
    config = {"likelihood": LEGACY_LIKELIHOOD, "mass_steps": list(LEGACY_MASS_STEPS),
              "move_mix": LEGACY_MOVE_MIX, "screen_train_at": [], **config}
    if "ladder" not in config:
        config["ladder"] = [config.get("temperature", 1.0)]
    config.pop("temperature", None)
    return config


def ladder_of(config: "WalkConfig") -> Ladder:
    """The run's ladder; ``RunError`` for temperatures that are not ascending."""
    try:
        return Ladder.for_walkers(config.ladder, config.walkers)
    except ValueError as error:
        raise RunError(f"walk configuration: {error}") from None


def read_run(run_dir: Path) -> Dict[str, Any]:
    """``run_dir/run.json``, checked against the shipped schema ``run``; ``RunError`` (one
    line naming the file and, for a wrong field, its JSON path) if there is none or it is
    not a run file of this version."""
    run_json = Path(run_dir) / "run.json"
    if not run_json.is_file():
        raise RunError(f"{run_dir}: not a run directory (no run.json)")
    return read_json_record(run_json, RUN_SCHEMA, RunError, "run file")


def read_run_config(run_dir: Path) -> Dict[str, Any]:
    """The configuration in ``run_dir/run.json`` (its database, likelihood, r_limit...;
    ``read_run``: a damaged or foreign file is a ``RunError``) in today's terms
    (``legacy_config``); without a run.json (hiscores kept apart from their run), only
    the default likelihood."""
    if not (Path(run_dir) / "run.json").exists():
        return {"likelihood": DEFAULT_LIKELIHOOD}
    return legacy_config(dict(read_run(run_dir)["config"]))


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


def _versions(db, screened: bool) -> Dict[str, Any]:
    """Versions run.json records; scikit-learn's only for a screened run (importing it
    costs start-up time that an unscreened walk need not pay)."""
    from smodels import installation
    from . import __version__
    from .screening import sklearn_version
    return {"protomodels": __version__, "smodels": installation.version(),
            "scikit-learn": sklearn_version() if screened else None,
            "database": db.version if db else None, "database_sha256": db.sha256 if db else None,
            "database_path": db.path if db else None,
            "database_fake": db.fake if db else None}


_SIGNALS_RECEIVED: List[int] = []


def _interrupt(signum, frame):
    """SIGINT and SIGTERM handler: record which signal came, then stop like Ctrl-C."""
    _SIGNALS_RECEIVED.append(signum)
    raise KeyboardInterrupt


class HistoryTally:
    """Running counts of one chain's ``history.jsonl`` (its last step, accepted and
    screened steps, best K), read incrementally: each ``read`` parses only the complete
    lines appended since the last one, so the walk's live status does not re-read every
    history while its chains write them.  A last line without its newline is still being
    written: it is counted at a later read.  A file that shrank, or whose new lines do not
    continue the steps read (a resumed chain cuts its history back to its checkpoint), is
    read again from the start.  A line that cannot be read then sets ``damaged`` (one
    line naming the file and line) and the counts stay those of the lines before it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.damaged: Optional[str] = None
        self._reset()

    def _reset(self) -> None:
        self._offset = self._number = 0  # bytes and lines (blank ones too) read
        self._lines = self._accepted = self._screened = self._step = 0
        self._best: Optional[float] = None

    def read(self) -> Dict[str, Any]:
        """Steps done, acceptance, best K (None before the first step) and the share of
        steps screened out unscored (screening runs; else 0), with the lines appended
        since the last call."""
        if self.damaged is None and not self._consume(continuing=self._offset > 0):
            self._reset()
            self._consume(continuing=False)
        n = self._lines or 1
        return {"steps": self._step, "acceptance": self._accepted / n, "best_K": self._best,
                "screened": self._screened / n}

    def _consume(self, continuing: bool) -> bool:
        """Count the complete lines after ``_offset``; False (nothing counted from the
        offending line on) when the file no longer continues what was read."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:  # the chain has not written its first step yet
            size = 0
        if size < self._offset:
            return False
        if size == self._offset:
            return True
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read(size - self._offset)
        for raw in data[:data.rfind(b"\n") + 1].split(b"\n")[:-1]:
            if raw.strip():
                try:
                    entry = json.loads(raw)
                    step, accepted, k = int(entry["step"]), bool(entry["accepted"]), float(entry["K"])
                    screened = bool(entry.get("screened"))
                except (ValueError, KeyError, TypeError, AttributeError) as error:
                    if continuing:
                        return False
                    self.damaged = (f"{self.path}:{self._number + 1}: corrupt history line "
                                    f"({type(error).__name__}: {error})")
                    return True
                if continuing and step != self._step + 1:
                    return False
                self._lines, self._step = self._lines + 1, step
                self._accepted += accepted
                self._screened += screened
                self._best = k if self._best is None else max(self._best, k)
            self._offset += len(raw) + 1
            self._number += 1
        return True


def history_tallies(out: Path, chains: int) -> List[HistoryTally]:
    """A ``HistoryTally`` of each chain of the run in ``out``."""
    return [HistoryTally(chain_folder(out, i) / "history.jsonl") for i in range(chains)]


def progress(out: Path, chains: int,
             tallies: Optional[List[HistoryTally]] = None) -> List[Dict[str, Any]]:
    """``HistoryTally.read`` of every chain (and its number, ``walker``), from the
    histories on disk: read whole, where a damaged line is a ``RunError``; or, with
    ``tallies`` kept between calls (the walk's live status), only what was appended since
    the last call, where a damaged line is a warning, logged once, and its chain's counts
    stop before it (a status display must not stop the walk)."""
    status = []
    for i, tally in enumerate(tallies if tallies is not None else history_tallies(out, chains)):
        known = tally.damaged
        state = tally.read()
        if tally.damaged and tallies is None:
            raise RunError(tally.damaged)
        if tally.damaged and not known:
            logger.warning("%s: the status counts the steps before it", tally.damaged)
        status.append({"walker": i, **state})
    return status


STATUS_COLUMNS = ["chain", "T", "steps", "steps/s", "time left", "acceptance", "best K"]


def status_rows(out: Path, ladder: Ladder, first: List[int], end: int, started: float,
                screened: bool, tallies: List[HistoryTally]) -> List[List[str]]:
    """The live status of a walk (``STATUS_COLUMNS``, plus the share screened out), one
    row per chain, from its ``tallies`` (``history_tallies``, kept between calls): steps/s
    counts the steps since ``started`` (a monotonic time, when the chains stood at
    ``first``), and the time left is what the chain needs at that pace to reach step
    ``end``."""
    seconds = max(time.monotonic() - started, 1e-9)
    rows = []
    for c, state in enumerate(progress(out, ladder.chains, tallies)):
        rate = (state["steps"] - first[c]) / seconds
        left = "-" if rate <= 0 else duration((end - state["steps"]) / rate)
        best = "-" if state["best_K"] is None else f"{state['best_K']:.3f}"
        rows.append([str(c), f"{ladder.temperature(c):g}", f"{state['steps']}/{end}",
                     f"{rate:.2f}", left, f"{100 * state['acceptance']:.0f}%", best]
                    + ([f"{100 * state['screened']:.0f}%"] if screened else []))
    return rows


def walk(config: WalkConfig, resume: bool = False, score_factory=None,
         runner: Optional["Runner"] = None) -> Dict[str, Any]:
    """Start or continue a run: load the database once, then advance the chains in rounds
    with ``runner`` (default ``LocalRunner``: processes forked after the load, so they
    share it; ``protomodels.cluster.DaskRunner`` for Dask).  Returns a summary with
    crashed and interrupted chains and the swap acceptance per rung pair."""

    out = Path(config.out)
    if resume and not (out / "run.json").exists():
        raise RunError(f"{out / 'run.json'}: cannot resume (no such file)")
    if not resume:
        validate_config({k: v for k, v in asdict(config).items() if k != "processes"},
                        "walk configuration")
        config.screen_train_at = sorted(config.screen_train_at)
    with sole_writer(out / "run.lock", RunError, "this run"):
        return _walk(config, out, resume, score_factory, runner or LocalRunner())


def _walk(config: WalkConfig, out: Path, resume: bool, score_factory,
          runner: "Runner") -> Dict[str, Any]:
    """``walk`` while this process is the run's sole writer."""
    run_json = out / "run.json"
    if resume:
        stored = read_run(out)
        steps, processes = config.steps, config.processes
        if "likelihood" not in stored["config"]:
            logger.warning("%s predates the likelihood setting: continuing with %r", run_json,
                           LEGACY_LIKELIHOOD)
        config = WalkConfig(**legacy_config(stored["config"]))
        config.steps, config.processes = steps, processes
    elif run_json.exists():
        raise RunError(f"{out}: a run already exists there; use --resume or another --out")
    ladder = ladder_of(config)
    if config.screen_train_at:  # before any chain starts, not at its first training
        from .screening import require_sklearn, sklearn_version
        require_sklearn()
        recorded = stored.get("versions", {}).get("scikit-learn") if resume else None
        if recorded and recorded != sklearn_version():
            logger.warning("%s: made with scikit-learn %s, resumed with %s: the retrained "
                           "learned K may differ in the last bits, and the run with it",
                           run_json, recorded, sklearn_version())
    # Steps each chain has done.  On resume its checkpoint is read here, so a broken one
    # stops the run before any chain starts; none yet: it stopped during its first
    # evaluation and starts again from its seed.
    stores = [WalkerStore(chain_folder(out, i)) for i in range(ladder.chains)]
    done = [s.load_checkpoint()["step"] if resume and s.checkpoint.exists() else 0
            for s in stores]
    tempering = TemperingStore(out)
    journal = tempering.load(swap_stream(config.seed, ladder.chains)) if ladder.rungs > 1 else None
    db = None
    if score_factory is None:
        db, score = load_physics_score(config)
    else:
        score = score_factory()
    out.mkdir(parents=True, exist_ok=True)
    stored_config = {k: v for k, v in asdict(config).items() if k != "processes"}
    if resume:
        stored["config"] = stored_config
        stored["segments"].append({"steps": config.steps, "started": time.time()})
        write_json_atomic(run_json, stored)
    else:
        write_json_atomic(run_json, {"schema": RUN_SCHEMA, "config": stored_config,
                                     "versions": _versions(db, bool(config.screen_train_at)),
                                     "seeds": {"entropy": config.seed,
                                               "spawn": "SeedSequence(seed).spawn(chains + 1): "
                                                        "one per chain, the last for swaps"},
                                     "segments": [{"steps": config.steps, "started": time.time()}]})
    seeds = walker_seeds(config.seed, ladder.chains)
    if journal is not None:
        journal = _finish_pending_sweep(tempering, journal, stores)
    end = max(done) + config.steps
    if config.screen_train_at and min(config.screen_train_at) >= end:
        logger.warning("%s: the learned K is first trained after step %d and this walk ends at "
                       "step %d: no step will be screened", out, min(config.screen_train_at), end)
    crashed: List[int] = []
    interrupted: List[int] = []
    columns = STATUS_COLUMNS + (["screened"] if config.screen_train_at else [])
    status = functools.partial(status_rows, out, ladder, list(done), end, time.monotonic(),
                               bool(config.screen_train_at), history_tallies(out, ladder.chains))
    with live_table(f"walk {out}", columns) as show:
        def report() -> None:
            show(status)

        try:
            runner.start(out, seeds, ladder, config, score)
            if journal is not None and min(done) == max(done):  # stopped between round and sweep
                journal = _maybe_sweep(tempering, journal, stores, ladder, config, min(done))
            for stop in boundaries(min(done), end, config.swap_every, ladder.rungs):
                targets = {c: stop for c in range(ladder.chains) if done[c] < stop}
                crashed, interrupted = runner.advance(targets, report)
                if crashed or interrupted:
                    break
                done = [max(d, stop) for d in done]
                if journal is not None:
                    journal = _maybe_sweep(tempering, journal, stores, ladder, config, stop)
        except KeyboardInterrupt:  # between rounds or in a sweep: its journal finishes it on resume
            logger.warning("interrupted between rounds: --resume continues")
            interrupted = sorted(set(range(ladder.chains)) - set(crashed))
        finally:
            runner.close()
    for i in crashed:
        logger.error("walker %d crashed: --resume continues it from its last checkpoint", i)
    export_hiscores(out)
    return {"out": str(out), "crashed": crashed, "interrupted": interrupted,
            "temperatures": [ladder.temperature(c) for c in range(ladder.chains)],
            "swaps": acceptance_by_pair(tempering.read_swaps(), ladder) if ladder.rungs > 1 else [],
            "screened": bool(config.screen_train_at),
            "progress": progress(out, ladder.chains)}


def run_steps(out: Path) -> Optional[int]:
    """The steps every chain of the run in ``out`` has checkpointed: the fewest, a chain
    without a checkpoint counting 0; None when no chain has one yet."""
    config = read_run_config(out)
    chains = Ladder.for_walkers(config.get("ladder", [1.0]), int(config.get("walkers", 1))).chains
    stores = [WalkerStore(chain_folder(out, i)) for i in range(chains)]
    steps = [s.load_checkpoint()["step"] if s.checkpoint.exists() else None for s in stores]
    if all(step is None for step in steps):
        return None
    return min(step or 0 for step in steps)


def _maybe_sweep(tempering: TemperingStore, journal: Dict[str, Any], stores: List[WalkerStore],
                 ladder: Ladder, config: WalkConfig, step: int) -> Dict[str, Any]:
    """The swap sweep after ``step`` if one is due there and not yet done: decided from the
    chains' checkpointed K and the journal's swap stream, journalled, then applied."""
    if step % config.swap_every or step <= journal["swapped_through"]:
        return journal
    checkpoints = [store.load_checkpoint() for store in stores]
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = journal["rng"]
    origin, swaps = sweep([c["record"]["K"] for c in checkpoints], ladder, rng, step)
    states = {c: {"model": checkpoints[o]["model"], "record": checkpoints[o]["record"]}
              for c, o in enumerate(origin) if o != c}
    journal = tempering.begin(journal, step, states, swaps, rng.bit_generator.state)
    return _finish_pending_sweep(tempering, journal, stores)


def _finish_pending_sweep(tempering: TemperingStore, journal: Dict[str, Any],
                          stores: List[WalkerStore]) -> Dict[str, Any]:
    """Write a journalled sweep's new states into the chains' checkpoints (again, if a
    kill came in between: the writes are idempotent) and close it."""
    states = pending_states(journal)
    if states is None:
        return journal
    for chain, state in states.items():
        stores[chain].replace_state(state)
    return tempering.finish(journal)


class Runner:
    """Advances chains to given steps; ``LocalRunner`` and ``cluster.DaskRunner``."""

    def start(self, out: Path, seeds: List[np.random.SeedSequence], ladder: Ladder,
              config: WalkConfig, score: Score) -> None:
        raise NotImplementedError

    def advance(self, targets: Dict[int, int], report: Callable[[], None]) -> Tuple[List[int], List[int]]:
        """Bring each chain to its target step; (crashed, interrupted) chains."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalRunner(Runner):
    """Forked worker processes that live for the whole run (each keeps its caches from
    round to round); chain c is always advanced by worker c mod ``config.processes``.

    Ctrl-C and SIGTERM (as batch systems send) make every busy chain checkpoint its last
    step and stop; the run then reports those chains as interrupted."""

    def __init__(self) -> None:
        self.workers: List[Tuple[Any, Any]] = []  # (process, connection)

    def start(self, out, seeds, ladder, config, score) -> None:
        import multiprocessing
        import signal
        # Ctrl-C and SIGTERM stop the run, also when started in the background (where
        # shells set SIGINT to be ignored).
        _SIGNALS_RECEIVED.clear()
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
        context = multiprocessing.get_context("fork")
        freeze_before_fork()
        count = max(1, min(config.processes or os.cpu_count() or 1, ladder.chains))
        for w in range(count):
            mine, theirs = context.Pipe()
            # the child closes every parent end it inherits, so that it sees end-of-file
            # (and exits) when this process dies
            parents = [c for _, c in self.workers] + [mine]
            process = context.Process(target=_chain_worker, name=f"chains-{w}",
                                      args=(theirs, parents, out, seeds, ladder, config, score))
            process.start()
            theirs.close()
            self.workers.append((process, mine))

    def advance(self, targets, report):
        import signal
        count = len(self.workers)
        busy = {}
        crashed: List[int] = []
        interrupted: List[int] = []
        for w, (process, conn) in enumerate(self.workers):
            mine = [(c, t) for c, t in sorted(targets.items()) if c % count == w]
            if not mine:
                continue
            try:
                conn.send(mine)
                busy[w] = [c for c, _ in mine]
            except OSError:  # the worker died between rounds
                logger.error("worker %d is gone (exit code %s)", w, process.exitcode)
                crashed += [c for c, _ in mine]
        try:
            self._collect(busy, crashed, interrupted, report)
        except KeyboardInterrupt:
            logger.warning("interrupted: waiting for the chains to checkpoint")
            # Ctrl-C in a terminal reaches the workers too; a SIGTERM to this process
            # alone (or a SIGINT from kill) is passed on, once
            if signal.SIGTERM in _SIGNALS_RECEIVED or not sys.stdin.isatty():
                for w in busy:
                    process = self.workers[w][0]
                    if process.is_alive():
                        os.kill(process.pid, signal.SIGINT)
            self._collect(busy, crashed, interrupted, lambda: None)
        return sorted(crashed), sorted(interrupted)

    def _collect(self, busy, crashed, interrupted, report) -> None:
        while busy:
            for w in list(busy):
                process, conn = self.workers[w]
                if conn.poll(0.2):
                    try:
                        lost, stopped = conn.recv()
                    except (EOFError, OSError):
                        process.join(10)  # reaped before its exit code is read
                        lost, stopped = (([], busy[w]) if process.exitcode == 130
                                         else (busy[w], []))
                        if lost:
                            logger.error("worker %d exited with code %s", w, process.exitcode)
                    crashed += lost
                    interrupted += stopped
                    del busy[w]
                elif not process.is_alive():
                    process.join()
                    if process.exitcode == 130:
                        interrupted += busy.pop(w)
                    else:
                        logger.error("worker %d exited with code %s", w, process.exitcode)
                        crashed += busy.pop(w)
            report()

    def close(self) -> None:
        for process, conn in self.workers:
            if process.is_alive():
                try:
                    conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
        for process, conn in self.workers:
            process.join()
            conn.close()
        self.workers = []


def _chain_worker(conn, parents, out: Path, seeds, ladder: Ladder, config: WalkConfig,
                  score: Score) -> None:
    """A LocalRunner worker: advances the chains it is sent, round after round; exits when
    told to, when interrupted, or when the run's process is gone (end-of-file)."""
    import multiprocessing
    import signal
    for parent in parents:
        parent.close()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)  # batch schedulers stop jobs with SIGTERM
    space = Space()
    try:
        while True:
            work = conn.recv()
            if work is None:
                break
            crashed: List[int] = []
            interrupted: List[int] = []
            for chain, target in work:
                if interrupted:
                    interrupted.append(chain)
                    continue
                multiprocessing.current_process().name = f"walker-{chain}"
                try:
                    advance_chain(out, chain, seeds[chain], target, ladder.temperature(chain),
                                  config.checkpoint_every, score, space,
                                  ChainSettings.of(config))
                except KeyboardInterrupt:
                    interrupted.append(chain)
                except Exception:
                    logger.exception("walker %d crashed", chain)
                    crashed.append(chain)
            conn.send((crashed, interrupted))
            if interrupted:
                os._exit(130)
    except (KeyboardInterrupt, EOFError):
        os._exit(130)
    os._exit(0)


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
