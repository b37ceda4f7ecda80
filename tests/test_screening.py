"""Delayed acceptance (issue 14's screening): exact whatever the surrogate, tested with
the fake predictor of test_moves (K of the particle content only) and a deliberately
wrong surrogate."""

from __future__ import annotations

import pytest

from protomodels import walker
from protomodels.model import LSP, PIDS, ProtoModel

from .test_moves import fake_K, set_frequencies_p_value

GLUINO, STOP = 1000021, 1000006


def wrong_screen(model):
    """A deliberately imperfect surrogate of fake_K: it likes gluinos 3 units too much,
    stops 2 units too little, and is off by a mass-dependent amount."""
    return (fake_K(model) + 3.0 * (GLUINO in model.masses) - 2.0 * (STOP in model.masses)
            + 1e-3 * sum(m for p, m in model.masses.items() if p != LSP))


def test_delayed_acceptance_keeps_exp_half_K_with_a_wrong_surrogate():
    # at T = 2: a temperature missing from either stage would show
    assert set_frequencies_p_value(steps=60000, temperature=2.0, screen=wrong_screen) > 0.001


def test_screened_steps_are_not_scored():
    import numpy as np

    from protomodels.moves import Space, default_moves
    from protomodels.model import ProtoModel

    moves = default_moves(Space())
    calls = []

    def score(model):
        calls.append(1)
        return fake_K_any(model)

    start = ProtoModel(masses={LSP: 300.0})
    steps = list(walker.sample(start, 0.0, score, moves, np.random.default_rng(1), 300,
                               screen=lambda m: -5.0 * len(m.masses)))
    assert any(s.screened for s in steps)
    assert all(s.proposal is None and s.proposal_K is None and not s.accepted
               for s in steps if s.screened)
    assert len(calls) == sum(s.proposal_K is not None for s in steps)


def test_the_fit_is_the_same_with_any_number_of_threads(tmp_path):
    """A resumed chain retrains its regressor, perhaps on another machine: the fit must
    not depend on the threads available (it runs with one)."""
    import json
    import os
    import subprocess
    import sys

    import numpy as np

    from protomodels.moves import Space, default_moves
    from protomodels.runs import start_model
    from protomodels.screening import KSurrogate, encode, n_features

    rng = np.random.default_rng(3)
    models = [s.model for s in walker.sample(start_model(rng, Space()), 0.0, fake_K_any,
                                             default_moves(Space()), rng, 300, temperature=5.0)]
    ks = [fake_K_any(m) for m in models]
    assert encode(models[0]).shape == (n_features(),)
    from threadpoolctl import threadpool_limits

    fitted = KSurrogate(1).fit(models, ks)
    with threadpool_limits(limits=1):  # OpenMP's spinning threads are slow on a busy machine
        here = [fitted.predict(m) for m in models[:50]]
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"models": [m.to_dict() for m in models], "ks": ks}))
    code = ("import json, sys\n"
            "from protomodels.model import ProtoModel\n"
            "from protomodels.screening import KSurrogate\n"
            f"d = json.load(open({str(data)!r}))\n"
            "ms = [ProtoModel.from_dict(m) for m in d['models']]\n"
            "s = KSurrogate(1).fit(ms, d['ks'])\n"
            "from threadpoolctl import threadpool_limits\n"
            "threadpool_limits(limits=1)\n"
            "print(json.dumps([s.predict(m) for m in ms[:50]]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert json.loads(out.stdout) == here
    with pytest.raises(ValueError, match="need at least"):
        KSurrogate(1).fit(models[:5], ks[:5])


def fake_K_any(model):
    """A fake K of any model: 0.5 per particle, minus a mass term."""
    return 0.5 * len(model.masses) - 1e-3 * max(model.masses.values())


# ------------------------------------------------------------------ screened runs

from protomodels import runs  # noqa: E402
from protomodels.runs import ChainSettings, read_history, run_walker, walker_seeds  # noqa: E402

from .test_runs import SPACE, fake_score  # noqa: E402

SCREENED = ChainSettings(screen_train_at=(40, 80))


def test_a_screened_chain_resumes_exactly_and_records_its_screening(tmp_path):
    seed = walker_seeds(11, 1)[0]
    run_walker(tmp_path / "full", seed, fake_score, 120, SPACE, settings=SCREENED,
               checkpoint_every=7)
    full = (tmp_path / "full/history.jsonl").read_bytes()
    for fresh_process in (False, True):  # the screen kept from the last round, or retrained
        split = tmp_path / f"split-{fresh_process}"
        run_walker(split, seed, fake_score, 60, SPACE, settings=SCREENED,
                   checkpoint_every=7)  # stops between the two trainings
        if fresh_process:
            runs._SCREENS.clear()
        run_walker(split, seed, fake_score, 60, SPACE, settings=SCREENED,
                   checkpoint_every=7, resume=True)
        assert (split / "history.jsonl").read_bytes() == full
    entries = read_history(tmp_path / "full")  # schema-checked, the new fields included
    # up to the first training: plain steps, whose rejected proposals are recorded to train on
    assert not any(e.get("screened") for e in entries if e["step"] <= 40)
    assert any("proposal" in e for e in entries if e["step"] <= 40)
    assert any(e.get("screened") for e in entries if e["step"] > 40)
    for e in entries:
        if "proposal" in e:
            assert not e["accepted"] and e["proposal"]["K"] == pytest.approx(fake_score(
                ProtoModel.from_dict(e["proposal"]["model"]))["K"], abs=1e-12)
    # the same seed without screening walks as before: no new fields, other steps
    run_walker(tmp_path / "plain", seed, fake_score, 120, SPACE, checkpoint_every=7)
    plain = read_history(tmp_path / "plain")
    assert not any("screened" in e or "proposal" in e for e in plain)
    assert plain[:40] == [{k: v for k, v in e.items() if k != "proposal"} for e in entries[:40]]


@pytest.mark.parametrize("corrected", [True, False])
def test_retrained_screen_keeps_the_frequencies_exact(corrected, monkeypatch, tmp_path):
    """The run-level test: a chain retrained on its schedule (a linear regressor: a
    deliberately poor surrogate of a K of the particle content) still visits the particle
    sets with exp(K/2) frequencies after its last training; without the second stage's
    correction it does not."""
    import math
    from collections import Counter

    import numpy as np
    from scipy import stats
    from sklearn.linear_model import LinearRegression

    from protomodels import screening
    from protomodels.moves import Space

    from .test_moves import SETS

    monkeypatch.setattr(screening, "_regressor", lambda seed: LinearRegression())
    if not corrected:
        monkeypatch.setattr(walker, "second_stage_log_ratio",
                            lambda K_new, K_old, s_new, s_old, T: (K_new - K_old) / (2.0 * T))
    space = Space(candidates=(LSP, 1000021, 1000006, 1000024),  # start_model: LSP 200-500
                  mass_ranges={LSP: (200.0, 240.0), 1000021: (400.0, 2400.0),
                               1000006: (600.0, 2400.0), 1000024: (350.0, 2400.0)})
    score = lambda model: {"K": fake_K(model)}  # noqa: E731
    steps = 30000 if corrected else 10000  # the wrong chain fails at p ~ 1e-29 in 30000
    run_walker(tmp_path / "w", walker_seeds(3, 1)[0], score, steps, space,
               checkpoint_every=1000, settings=ChainSettings(screen_train_at=(300, 1000, 2000)))
    entries = read_history(tmp_path / "w", check=False)
    counts = Counter(tuple(sorted(PIDS[n] for n in e["model"]["masses"] if PIDS[n] != LSP))
                     for e in entries if e["step"] > 2000 and e["step"] % 40 == 0)
    weights = np.array([math.exp(fake_K(ProtoModel(masses={LSP: 220.0, **{p: 1000.0 for p in s}})) / 2)
                        for s in SETS])
    observed = np.array([counts[s] for s in SETS], dtype=float)
    p_value = stats.chisquare(observed, weights / weights.sum() * observed.sum()).pvalue
    assert p_value > 0.001 if corrected else p_value < 1e-6, p_value
    screened = sum(bool(e.get("screened")) for e in entries if e["step"] > 2000)
    assert screened > 0.05 * (len(entries) - 2000)


def test_a_screened_replica_exchange_run_resumes_exactly(tmp_path):
    """walk() with two rungs, swaps, and trainings inside the rounds: 45 + 45 steps give
    the histories and swaps of 90 (the screens kept across rounds or retrained)."""
    import json

    from protomodels.runs import WalkConfig, walk

    from .test_runs import fake_factory

    def config(out, steps):
        return WalkConfig(out=str(tmp_path / out), ladder=[0.3, 1.0], walkers=1, steps=steps,
                          seed=4, swap_every=10, checkpoint_every=5, screen_train_at=[60, 35])

    walk(config("full", 90), score_factory=fake_factory)
    walk(config("split", 45), score_factory=fake_factory)
    runs._SCREENS.clear()  # as a new process would
    walk(WalkConfig(out=str(tmp_path / "split"), steps=45), resume=True, score_factory=fake_factory)
    for name in ("walker-0/history.jsonl", "walker-1/history.jsonl", "swaps.jsonl"):
        assert (tmp_path / "split" / name).read_bytes() == (tmp_path / "full" / name).read_bytes()
    run = json.loads((tmp_path / "full/run.json").read_text())
    assert run["config"]["screen_train_at"] == [35, 60]  # sorted, recorded
    assert run["versions"]["scikit-learn"]


def test_posterior_of_a_screened_run_waits_for_its_last_training(tmp_path):
    from protomodels.exceptions import RunError
    from protomodels.posterior import posterior
    from protomodels.runs import WalkConfig, walk

    from .test_runs import fake_factory

    out = tmp_path / "run"
    walk(WalkConfig(out=str(out), ladder=[1.0], walkers=1, steps=12, seed=2,
                    screen_train_at=[5, 30]), score_factory=fake_factory)
    with pytest.raises(RunError, match="retrained up to step 30 and the T = 1 chains have 12 "
                                       "steps: no exact samples yet"):
        posterior(out)
    assert posterior(out, burn_in=4)["burn_in"] == 4  # asked for: allowed, with a warning
