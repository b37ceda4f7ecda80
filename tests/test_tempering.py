"""Replica exchange (protomodels.tempering and the round loop in protomodels.runs): exact
at T = 1, reproducible, resumable byte for byte, robust to a kill in the middle of a sweep."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from protomodels import tempering
from protomodels.model import LSP, ProtoModel
from protomodels.moves import Space, default_moves
from protomodels.runs import WalkConfig, WalkerStore, read_history, walk
from protomodels.tempering import Ladder, boundaries, log_swap_ratio, sweep
from protomodels.walker import sample

from .test_moves import fake_K
from .test_runs import fake_factory


def test_swap_ratio_is_the_ratio_of_the_targets():
    """exp(K/2T) at both rungs after the exchange over before it, by hand."""
    K_i, T_i, K_j, T_j = 3.0, 0.5, 7.0, 2.0
    after = K_j / (2 * T_i) + K_i / (2 * T_j)
    before = K_i / (2 * T_i) + K_j / (2 * T_j)
    assert log_swap_ratio(K_i, T_i, K_j, T_j) == pytest.approx(after - before)
    assert log_swap_ratio(2.0, 0.5, -math.inf, 1.0) == -math.inf  # never into a colder rung
    assert log_swap_ratio(-math.inf, 0.5, 2.0, 1.0) == math.inf  # always out of it
    assert log_swap_ratio(-math.inf, 0.5, -math.inf, 1.0) == 0.0


def test_ladder_spreads_chains_over_rungs():
    ladder = Ladder.for_walkers([0.5, 1.0, 2.0], 4)  # rounded up to two whole ladders
    assert ladder.chains == 6 and ladder.columns == 2
    assert [ladder.temperature(c) for c in range(6)] == [0.5, 1.0, 2.0] * 2
    assert ladder.at(1.0) == [1, 4]
    with pytest.raises(ValueError, match="strictly increasing"):
        Ladder((1.0, 0.5))
    assert boundaries(0, 23, 5, 3) == [5, 10, 15, 20, 23]
    assert boundaries(13, 23, 5, 3) == [15, 20, 23]
    assert boundaries(0, 23, 5, 1) == [23]  # one rung: no rounds


def _tempered_t1_counts(ladder, rounds, swap_every, seed):
    """The round loop of ``runs._walk`` in-process: each chain advanced ``swap_every``
    steps with ``walker.sample`` from its state, then one ``tempering.sweep``; visits of
    the T = 1 chain's particle sets, thinned."""
    space = Space(candidates=(LSP, 1000021, 1000006, 1000024),
                  mass_ranges={LSP: (50.0, 90.0), 1000021: (400.0, 2400.0),
                               1000006: (600.0, 2400.0), 1000024: (350.0, 2400.0)})
    moves = [(m, w * (2.5 if m.name == "unfreeze" else 1.0)) for m, w in default_moves(space)]
    rngs = [np.random.default_rng([seed, c]) for c in range(ladder.chains)]
    swap_rng = np.random.default_rng([seed, 999])
    states = [(ProtoModel(masses={LSP: 70.0}), 0.0) for _ in range(ladder.chains)]
    cold = ladder.at(1.0)[0]
    counts = Counter()
    step = 0
    for round_number in range(rounds):
        for c in range(ladder.chains):
            model, K = states[c]
            for s in sample(model, K, fake_K, moves, rngs[c], swap_every,
                            temperature=ladder.temperature(c), first_step=step + 1):
                model, K = s.model, s.K
                if c == cold and round_number >= 50 and s.step % 10 == 0:
                    counts[tuple(sorted(p for p in model.masses if p != LSP))] += 1
            states[c] = (model, K)
        step += swap_every
        origin, _ = sweep([K for _, K in states], ladder, swap_rng, step)
        states = [states[o] for o in origin]
    return counts


def _chi_square_p(counts):
    sets = [(), (1000021,), (1000006,), (1000024,), (1000006, 1000021), (1000021, 1000024),
            (1000006, 1000024), (1000006, 1000021, 1000024)]
    weights = np.array([math.exp(fake_K(ProtoModel(masses={LSP: 70.0, **{p: 1000.0 for p in s}})) / 2)
                        for s in sets])
    observed = np.array([counts[s] for s in sets], dtype=float)
    return stats.chisquare(observed, weights / weights.sum() * observed.sum()).pvalue, observed


def test_t1_chain_with_swaps_samples_exp_half_K(monkeypatch):
    """With a fake predictor (K from the particle content), the T = 1 chain of a ladder
    with swaps visits the 8 particle sets in proportion to exp(K/2) (chi-square on thinned
    counts, fixed seed); with the sign of the swap term flipped on purpose the same test
    fails (swaps every 2 steps, so that the swaps, not the chain's own moves, dominate:
    at 20 steps between sweeps a flipped sign can pass; and a ladder spread by 4 per rung,
    since with the spectrum-shift move the chains mix fast enough that a flipped sign on
    0.5, 1, 2 only reached p = 0.008)."""
    ladder = Ladder((0.25, 1.0, 4.0))
    p_value, observed = _chi_square_p(_tempered_t1_counts(ladder, 5000, 2, seed=3))
    assert p_value > 0.001, observed
    flipped = tempering.log_swap_ratio
    monkeypatch.setattr(tempering, "log_swap_ratio", lambda *a: -flipped(*a))
    p_value, observed = _chi_square_p(_tempered_t1_counts(ladder, 5000, 2, seed=3))
    assert p_value < 1e-5, observed


def _run_bytes(run, chains):
    return ([(run / f"walker-{i}" / "history.jsonl").read_bytes() for i in range(chains)],
            (run / "swaps.jsonl").read_bytes())


SETTINGS = dict(walkers=2, seed=5, ladder=[0.5, 1.0, 2.0], swap_every=5, checkpoint_every=3)


def test_same_seed_same_run_and_resume_is_byte_exact(tmp_path):
    """23 steps at once, 13 + 10 with a resume in between, and again: identical histories
    and swap logs; swaps happened and changed the chains' states."""
    walk(WalkConfig(out=str(tmp_path / "a"), steps=23, **SETTINGS), score_factory=fake_factory)
    summary = walk(WalkConfig(out=str(tmp_path / "b"), steps=13, **SETTINGS), score_factory=fake_factory)
    assert summary["crashed"] == [] and len(summary["progress"]) == 3
    walk(WalkConfig(out=str(tmp_path / "b"), steps=10), resume=True, score_factory=fake_factory)
    walk(WalkConfig(out=str(tmp_path / "c"), steps=23, **SETTINGS), score_factory=fake_factory)
    a = _run_bytes(tmp_path / "a", 3)
    assert _run_bytes(tmp_path / "b", 3) == a == _run_bytes(tmp_path / "c", 3)
    swaps = tempering.TemperingStore(tmp_path / "a").read_swaps()
    assert [s["step"] for s in swaps] == [5, 5, 10, 10, 15, 15, 20, 20]
    assert any(s["accepted"] for s in swaps)
    # after an accepted swap, the next step starts from the other chain's state
    swap = next(s for s in swaps if s["accepted"])
    lower, upper = swap["chains"]
    before = {c: read_history(tmp_path / "a" / f"walker-{c}")[swap["step"] - 1]["K"] for c in (lower, upper)}
    assert swap["K"] in ([before[lower], before[upper]],)
    other = WalkConfig(out=str(tmp_path / "d"), steps=23, **{**SETTINGS, "seed": 6})
    walk(other, score_factory=fake_factory)
    assert _run_bytes(tmp_path / "d", 3) != a


def test_a_kill_in_the_middle_of_a_sweep_is_finished_on_resume(tmp_path, monkeypatch):
    """Killed after the sweep at step 10 was journalled and one chain's new state written:
    the resume writes the others, logs the sweep once, and continues as if nothing had
    happened."""
    walk(WalkConfig(out=str(tmp_path / "ref"), steps=20, **SETTINGS), score_factory=fake_factory)
    written = []
    original = WalkerStore.replace_state

    def dying(self, state):
        original(self, state)
        written.append(self.folder.name)
        journal = tempering.TemperingStore(tmp_path / "run").load(None)
        if journal["pending"] and journal["pending"]["step"] == 10:
            raise KeyboardInterrupt  # as if killed here

    monkeypatch.setattr(WalkerStore, "replace_state", dying)
    summary = walk(WalkConfig(out=str(tmp_path / "run"), steps=20, **SETTINGS),
                   score_factory=fake_factory)
    assert summary["interrupted"] == [0, 1, 2] and written
    monkeypatch.setattr(WalkerStore, "replace_state", original)
    journal = tempering.TemperingStore(tmp_path / "run").load(None)
    assert journal["pending"]["step"] == 10 and journal["swapped_through"] == 5
    walk(WalkConfig(out=str(tmp_path / "run"), steps=10), resume=True, score_factory=fake_factory)
    assert _run_bytes(tmp_path / "run", 3) == _run_bytes(tmp_path / "ref", 3)


@pytest.mark.writes_invalid_files
def test_a_damaged_swap_log_is_a_one_line_error(tmp_path):
    """swaps.jsonl is read line by line against the schema ``swap``: a damaged line (the
    log is rewritten atomically, so even a killed run leaves none) names the file, the
    line and the field, instead of a KeyError or JSONDecodeError traceback; a resume that
    finishes a sweep reads the log the same way."""
    import json
    import re

    from protomodels.exceptions import RunError
    run = tmp_path / "run"
    walk(WalkConfig(out=str(run), steps=12, **SETTINGS), score_factory=fake_factory)
    store = tempering.TemperingStore(run)
    log, log_name = store.log.read_text().splitlines(keepends=True), re.escape(str(store.log))
    assert [s["step"] for s in store.read_swaps()] == [5, 5, 10, 10]
    store.log.write_text("".join(log[:2]) + log[2][:30] + "\n" + "".join(log[3:]))
    for check in (True, False):
        with pytest.raises(RunError, match=rf"^{log_name}:3: corrupt swap line \(Expecting"):
            store.read_swaps(check)
    third = json.loads(log[2])
    store.log.write_text("".join(log[:2]) + json.dumps(dict(third, accepted="yes")) + "\n")
    with pytest.raises(RunError, match=rf"^{log_name}:3: \$.accepted: 'yes' is not of type"):
        store.read_swaps()
    del third["step"]
    store.log.write_text("".join(log[:2]) + json.dumps(third) + "\n")
    with pytest.raises(RunError, match=rf"^{log_name}:3: \$.step: missing or not an integer$"):
        store.finish({"pending": {"step": 15, "swaps": [], "rng": {}}})


def test_hiscores_name_the_temperature_of_their_chain(tmp_path):
    from protomodels import hiscores

    walk(WalkConfig(out=str(tmp_path / "run"), steps=10, **SETTINGS), score_factory=fake_factory)
    entries = hiscores.read(tmp_path / "run" / "hiscores.json")
    assert entries and all(e["temperature"] in (0.5, 1.0, 2.0) for e in entries)


def _slow_score(model):
    import time
    time.sleep(0.02)  # slow enough that a signal always lands in the middle of the run
    return fake_factory()(model)


def _slow_factory():
    return _slow_score


def test_sigterm_in_the_middle_of_a_tempered_run_resumes_exactly(tmp_path):
    """SIGTERM to a running replica-exchange run (several rounds and sweeps): every busy
    chain checkpoints its last step, and --resume ends with the histories and swaps of
    an uninterrupted run."""
    import json
    import multiprocessing
    import os
    import signal

    from .test_runs import wait_for

    settings = dict(SETTINGS, steps=60)
    walk(WalkConfig(out=str(tmp_path / "ref"), **settings), score_factory=fake_factory)
    out, summary_file = tmp_path / "run", tmp_path / "summary.json"

    def target():
        summary = walk(WalkConfig(out=str(out), **settings), score_factory=_slow_factory)
        summary_file.write_text(json.dumps(summary))

    proc = multiprocessing.get_context("fork").Process(target=target)
    proc.start()
    history = out / "walker-2" / "history.jsonl"
    wait_for(lambda: history.exists() and len(history.read_text().splitlines()) >= 12)
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(60)
    summary = json.loads(summary_file.read_text())
    assert summary["crashed"] == [] and summary["interrupted"]
    for c in range(3):
        done = WalkerStore(out / f"walker-{c}").load_checkpoint()["step"]
        assert len(read_history(out / f"walker-{c}")) == done < 60
    # --steps on resume counts from the chain that got furthest
    walk(WalkConfig(out=str(out), steps=60 - max(
        WalkerStore(out / f"walker-{c}").load_checkpoint()["step"] for c in range(3))),
        resume=True, score_factory=fake_factory)
    assert _run_bytes(out, 3) == _run_bytes(tmp_path / "ref", 3)


def test_workers_exit_when_the_run_process_is_killed(tmp_path):
    """SIGKILL of the run's own process (no cleanup at all): its worker processes see
    the end of their pipe and exit, so nothing keeps writing or holds the run's lock."""
    import multiprocessing
    import os
    import signal

    import psutil

    from .test_runs import wait_for

    out = tmp_path / "run"

    def target():
        walk(WalkConfig(out=str(out), **dict(SETTINGS, steps=400)), score_factory=_slow_factory)

    proc = multiprocessing.get_context("fork").Process(target=target)
    proc.start()
    history = out / "walker-0" / "history.jsonl"
    wait_for(lambda: history.exists() and len(history.read_text().splitlines()) >= 3)
    workers = psutil.Process(proc.pid).children()
    assert workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, alive
    # the lock is free: the run resumes
    walk(WalkConfig(out=str(out), steps=5), resume=True, score_factory=fake_factory)
