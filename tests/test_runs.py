"""Runs on disk: reproducible from the seed, resumable exactly, corrupt input rejected."""

from __future__ import annotations

import pytest

from protomodels.exceptions import RunError
from protomodels.model import LSP
from protomodels.moves import Space
from protomodels.runs import WalkerStore, read_history, run_walker, walker_seeds

from .test_moves import fake_K

SPACE = Space(candidates=(LSP, 1000021, 1000006, 1000024),
              mass_ranges={LSP: (50.0, 600.0)})


def fake_score(model):
    """A fake predictor (no physics): K from the particle content, plus a mass term."""
    return {"K": fake_K(model) - 1e-3 * model.masses[LSP], "TL": 0.0, "mu_hat": 1.0}


def test_same_seed_same_history(tmp_path):
    seed = walker_seeds(7, 2)[1]
    run_walker(tmp_path / "a", seed, fake_score, 40, SPACE)
    run_walker(tmp_path / "b", seed, fake_score, 40, SPACE)
    assert (tmp_path / "a/history.jsonl").read_bytes() == (tmp_path / "b/history.jsonl").read_bytes()
    other = walker_seeds(7, 2)[0]
    run_walker(tmp_path / "c", other, fake_score, 40, SPACE)
    assert (tmp_path / "c/history.jsonl").read_bytes() != (tmp_path / "a/history.jsonl").read_bytes()


@pytest.mark.parametrize("every", [1, 3, 10])
def test_twenty_steps_equal_ten_plus_resume_plus_ten(tmp_path, every):
    seed = walker_seeds(3, 1)[0]
    run_walker(tmp_path / "full", seed, fake_score, 20, SPACE, checkpoint_every=every)
    run_walker(tmp_path / "split", seed, fake_score, 10, SPACE, checkpoint_every=every)
    run_walker(tmp_path / "split", seed, fake_score, 10, SPACE, checkpoint_every=every, resume=True)
    full = (tmp_path / "full/history.jsonl").read_bytes()
    assert (tmp_path / "split/history.jsonl").read_bytes() == full
    assert [h["step"] for h in read_history(tmp_path / "full")] == list(range(1, 21))


def test_resume_after_a_crash_redoes_only_the_lost_steps(tmp_path):
    """Steps written after the last checkpoint (then a crash) are dropped and redone."""
    seed = walker_seeds(5, 1)[0]
    run_walker(tmp_path / "full", seed, fake_score, 30, SPACE, checkpoint_every=10)
    full = (tmp_path / "full/history.jsonl").read_text().splitlines(keepends=True)
    run_walker(tmp_path / "crash", seed, fake_score, 20, SPACE, checkpoint_every=10)
    store = WalkerStore(tmp_path / "crash")
    with open(store.history, "a") as handle:  # steps 21-27 reached the disk, then SIGKILL
        handle.write("".join(full[20:27]))
    run_walker(tmp_path / "crash", seed, fake_score, 10, SPACE, checkpoint_every=10, resume=True)
    assert store.history.read_text() == "".join(full)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    seed = walker_seeds(1, 1)[0]
    run_walker(tmp_path / "w", seed, fake_score, 5, SPACE)
    (tmp_path / "w/checkpoint.json").write_text("{not json")
    with pytest.raises(RunError, match="checkpoint.json: corrupt checkpoint"):
        run_walker(tmp_path / "w", seed, fake_score, 5, SPACE, resume=True)
    with pytest.raises(RunError, match="no checkpoint"):
        run_walker(tmp_path / "none", seed, fake_score, 5, SPACE, resume=True)
