"""Walkers as Dask tasks on a LocalCluster of separate worker processes (loopback): the
same histories as a local run, and a worker killed mid-run costs no steps beyond the
last checkpoint."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("distributed")
import cloudpickle  # noqa: E402  (a dependency of distributed)
import psutil  # noqa: E402

from protomodels.cluster import DaskRunner  # noqa: E402
from protomodels.runs import WalkConfig, progress, walk  # noqa: E402

from . import test_runs  # noqa: E402
from .test_runs import fake_factory, fake_score  # noqa: E402

# Workers import nothing from tests/: send the fake predictors by value.
cloudpickle.register_pickle_by_value(test_runs)


def slow_factory():
    """The fake predictor, slowed down so that a worker can be killed mid-run."""
    def score(model):
        time.sleep(0.05)
        return fake_score(model)
    return score


def register_slow():
    import sys
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


register_slow()


def histories(run, walkers=2):
    return [(run / f"walker-{i}" / "history.jsonl").read_bytes() for i in range(walkers)]


def test_cluster_run_equals_local_run_and_resumes(tmp_path):
    """Replica exchange on Dask (one task per chain and round, swaps decided by the
    client) gives the local runner's histories and swaps, also across a resume."""
    settings = dict(walkers=4, steps=15, seed=4, checkpoint_every=5, ladder=[0.5, 1.0, 2.0],
                    swap_every=4)  # 2 columns x 3 rungs
    walk(WalkConfig(out=str(tmp_path / "local"), **settings), score_factory=fake_factory)
    summary = walk(WalkConfig(out=str(tmp_path / "dask"), **settings), score_factory=fake_factory,
                   runner=DaskRunner("local", 2, fake_factory))
    assert summary["crashed"] == [] and len(summary["progress"]) == 6
    assert histories(tmp_path / "dask", 6) == histories(tmp_path / "local", 6)
    swaps = (tmp_path / "local" / "swaps.jsonl").read_bytes()
    assert swaps and (tmp_path / "dask" / "swaps.jsonl").read_bytes() == swaps
    walk(WalkConfig(out=str(tmp_path / "local"), steps=6), resume=True, score_factory=fake_factory)
    walk(WalkConfig(out=str(tmp_path / "dask"), steps=6), resume=True, score_factory=fake_factory,
         runner=DaskRunner("local", 2, fake_factory))
    assert histories(tmp_path / "dask", 6) == histories(tmp_path / "local", 6)
    assert (tmp_path / "dask" / "swaps.jsonl").read_bytes() == (tmp_path / "local" / "swaps.jsonl").read_bytes()
    assert [s["steps"] for s in progress(tmp_path / "dask", 6)] == [21] * 6
    assert (tmp_path / "dask" / "hiscores" / "rank-1.slha").exists()


def test_a_killed_worker_has_its_walker_resumed_elsewhere(tmp_path):
    settings = dict(walkers=2, steps=60, seed=11, checkpoint_every=5, ladder=[1.0, 2.0],
                    swap_every=10)
    walk(WalkConfig(out=str(tmp_path / "local"), **settings), score_factory=fake_factory)
    run = tmp_path / "dask"
    result = {}
    thread = threading.Thread(target=lambda: result.update(walk(
        WalkConfig(out=str(run), **settings), score_factory=slow_factory,
        runner=DaskRunner("local", 2, slow_factory))))
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = progress(run, 2) if (run / "run.json").exists() else []
        if states and all(12 <= s["steps"] < 40 for s in states):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"walkers did not get going: {states}")
    workers = [p for p in psutil.Process().children(recursive=True)
               if "spawn_main" in " ".join(p.cmdline())]
    assert workers, "no Dask worker processes found"
    killed_at = {s["walker"]: s["steps"] for s in progress(run, 2)}
    workers[0].kill()  # SIGKILL: no checkpoint, no goodbye
    assert not psutil.wait_procs([workers[0]], timeout=10)[1], "the worker should be dead"
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert result["crashed"] == [], result
    assert histories(run) == histories(tmp_path / "local")
    for i in range(2):
        steps = [int(line.split()[0])
                 for line in (run / f"walker-{i}" / "timings.txt").read_text().splitlines()]
        assert steps == list(range(1, 61)), f"walker {i}: a step missing or twice"
    assert max(killed_at.values()) < 60


def square_unless_three_or_four(x):
    if x == 3:
        raise ValueError("three")
    if x == 4:
        from protomodels.exceptions import WorkspaceError
        raise WorkspaceError("four.json: field 'x' is 4")
    return x * x


def sleep_a_while(x):
    time.sleep(1.0)
    return x


def test_tasks_give_each_outcome_cancel_and_disconnect(tmp_path):
    """``cluster.tasks``, shared by scans, training data and reference limits: every
    task's result or error by its index, whatever the order they finish in; a failure
    raises only when its value is asked for (our own errors as they are, others as
    RunError); an error inside the block cancels the tasks not yet run; the client is
    closed on leaving."""
    from protomodels.cluster import tasks
    from protomodels.exceptions import RunError, WorkspaceError

    with tasks("local", 2, square_unless_three_or_four, [(x,) for x in range(6)],
               keys=[f"square-{x}" for x in range(6)]) as batch:
        outcomes = {o.index: o for o in batch.completed()}
        client = batch.client
        assert [f.key for f in batch.futures] == [f"square-{x}" for x in range(6)]
    assert sorted(outcomes) == list(range(6))
    assert [outcomes[i].value() for i in (0, 1, 2, 5)] == [0, 1, 4, 25]
    with pytest.raises(RunError, match=r"chunk failed on the cluster: ValueError\('three'\)"):
        outcomes[3].value("chunk")
    with pytest.raises(WorkspaceError, match="four.json"):
        outcomes[4].value("chunk")
    assert client.status == "closed"

    with pytest.raises(KeyError):
        with tasks("local", 1, sleep_a_while, [(x,) for x in range(5)]) as batch:
            for outcome in batch.completed():
                raise KeyError(outcome.index)
    statuses = [f.status for f in batch.futures]
    assert statuses.count("finished") <= 2 and "cancelled" in statuses
