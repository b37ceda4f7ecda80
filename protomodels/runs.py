"""Walker runs on disk: configuration, per-walker histories, checkpoints, exact resume.

A run directory holds ``run.json`` (configuration, seed, versions) and one folder per
walker with ``history.jsonl`` (one JSON object per step) and ``checkpoint.json`` (the
state, the K that goes with it, the random generator's state and the history length at
that moment).  Resuming truncates the history back to the checkpoint and continues with
the saved generator state, so a resumed run is identical, byte for byte, to an
uninterrupted one.  Every file is written atomically or appended line by line.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .atomic import write_json_atomic
from .exceptions import RunError
from .model import LSP, ProtoModel
from .moves import Space, default_moves
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


def start_model(rng: np.random.Generator) -> ProtoModel:
    """SPEC: the LSP alone, its mass uniform in 200-500 GeV."""
    return ProtoModel(masses={LSP: float(rng.uniform(200.0, 500.0))})


class WalkerStore:
    """One walker's history and checkpoint (emcee-style backend)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.history = self.folder / "history.jsonl"
        self.checkpoint = self.folder / "checkpoint.json"

    def save_checkpoint(self, step: int, model: ProtoModel, record: Dict[str, Any],
                        rng: np.random.Generator) -> None:
        size = self.history.stat().st_size if self.history.exists() else 0
        write_json_atomic(self.checkpoint, {
            "schema": CHECKPOINT_SCHEMA, "step": step, "model": model.to_dict(),
            "record": record, "rng": rng.bit_generator.state, "history_bytes": size})

    def load_checkpoint(self) -> Dict[str, Any]:
        try:
            data = json.loads(self.checkpoint.read_text())
        except FileNotFoundError:
            raise RunError(f"{self.checkpoint}: no checkpoint to resume from") from None
        except json.JSONDecodeError as error:
            raise RunError(f"{self.checkpoint}: corrupt checkpoint ({error})") from None
        if data.get("schema") != CHECKPOINT_SCHEMA:
            raise RunError(f"{self.checkpoint}: schema {data.get('schema')!r}, "
                           f"expected {CHECKPOINT_SCHEMA!r}")
        return data

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


def run_walker(folder: Path, seed: np.random.SeedSequence, score: Score, steps: int,
               space: Space, temperature: float = 1.0, checkpoint_every: int = 10,
               resume: bool = False) -> None:
    """Run (or continue) one walker for ``steps`` more steps."""
    store = WalkerStore(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if resume:
        state = store.load_checkpoint()
        store.truncate_history(state["history_bytes"])
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = state["rng"]
        model = ProtoModel.from_dict(state["model"], source=str(store.checkpoint))
        record, first = state["record"], state["step"] + 1
    else:
        rng = np.random.Generator(np.random.PCG64(seed))
        model = start_model(rng)
        record, first = score(model), 1
        store.truncate_history(0)
        store.save_checkpoint(0, model, record, rng)
    records: Dict[int, Dict[str, Any]] = {}

    def scored(candidate: ProtoModel) -> float:
        result = score(candidate)
        records[id(candidate)] = result
        return float(result["K"])

    moves = default_moves(space)
    for step in sample(model, float(record["K"]), scored, moves, rng, steps,
                       temperature=temperature, first_step=first):
        if step.accepted:
            record = records[id(step.model)]
        records.clear()
        store.append({"step": step.step, "move": step.move, "accepted": step.accepted,
                      **{k: v for k, v in record.items()}, "model": step.model.to_dict()})
        if step.step % checkpoint_every == 0 or step.step == first + steps - 1:
            store.save_checkpoint(step.step, step.model, record, rng)


def read_history(folder: Path) -> List[Dict[str, Any]]:
    path = Path(folder) / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
