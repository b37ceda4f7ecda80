"""Runs on disk: reproducible from the seed, resumable exactly, corrupt input rejected."""

from __future__ import annotations

import pytest

from protomodels.exceptions import RunError
from protomodels.model import LSP
from protomodels.moves import Space
from protomodels.runs import WalkerStore, read_history, run_walker, walker_seeds


SPACE = Space(candidates=(LSP, 1000021, 1000006, 1000024),
              mass_ranges={LSP: (50.0, 600.0)})


def fake_score(model):
    """A fake predictor (no physics): K from the particle content, plus a mass term."""
    content = sum({1000021: 2.0, 1000006: -0.5}.get(p, 0.3) for p in model.masses if p != LSP)
    return {"K": content - 1e-3 * model.masses[LSP], "TL": 0.0, "mu_hat": 1.0}


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
    steps = [int(line.split()[0]) for line in store.timings.read_text().splitlines()]
    assert steps == list(range(1, 31))  # one wall time per step, none twice


def _full_counts(folder):
    """The counts of ``HistoryTally.read`` computed from the whole history at once."""
    entries = read_history(folder)
    n = len(entries) or 1
    return {"steps": entries[-1]["step"] if entries else 0,
            "acceptance": sum(e["accepted"] for e in entries) / n,
            "best_K": max((e["K"] for e in entries), default=None),
            "screened": sum(bool(e.get("screened")) for e in entries) / n}


def test_the_live_status_reads_the_history_as_it_grows(tmp_path, caplog):
    """The walk's status reads only what was appended since its last read; a last line
    still being written (walkers append while it reads) waits, and is not an error; a
    history cut back to its checkpoint is read again; a damaged line is logged once."""
    from protomodels import runs
    from protomodels.runs import HistoryTally
    run_walker(tmp_path / "full", walker_seeds(5, 1)[0], fake_score, 30, SPACE)
    lines = (tmp_path / "full/history.jsonl").read_bytes().splitlines(keepends=True)
    folder = tmp_path / "w"
    folder.mkdir()
    history = folder / "history.jsonl"
    tally = HistoryTally(history)
    assert tally.read() == {"steps": 0, "acceptance": 0.0, "best_K": None, "screened": 0.0}
    written = b""
    for start, stop in ((0, 7), (7, 8), (8, 20)):
        written += b"".join(lines[start:stop])
        history.write_bytes(written + lines[stop][:25])  # half of the next line
        assert tally.read() == _full_counts(folder_of(written, tmp_path / f"c{stop}"))
    history.write_bytes(b"".join(lines[:20]))
    assert tally.read() == _full_counts(folder) and tally.read()["steps"] == 20
    history.write_bytes(b"".join(lines[:10]))  # resumed: cut back to step 10
    assert tally.read() == _full_counts(folder)
    history.write_bytes(b"".join(lines[:20]))
    assert tally.read()["steps"] == 20
    # cut back to step 10 and redone past the old end before the next read, in lines of
    # other lengths: the offset falls inside a line
    redone = b"".join(line.replace(b'"K": ', b'"K":   ') for line in lines[10:25])
    history.write_bytes(b"".join(lines[:10]) + redone)
    assert tally.read() == _full_counts(folder) and tally.read()["steps"] == 25
    history.write_bytes(b"".join(lines[:10]) + redone[:-1])  # cut at step 24 and half of 25
    assert tally.read() == _full_counts(folder_of(b"".join(lines[:24]), tmp_path / "c24"))
    # the same, where the old end falls between two redone lines: step 12 follows step 25
    history.write_bytes(b"".join(lines[:25]))
    assert tally.read()["steps"] == 25
    eleventh = lines[10].replace(b'"K": ', b'"K": ' + b" " * (len(b"".join(lines[10:25]))
                                                             - len(lines[10])))
    history.write_bytes(b"".join(lines[:10]) + eleventh + b"".join(lines[11:27]))
    assert tally.read() == _full_counts(folder) and tally.read()["steps"] == 27
    history.write_bytes(b"".join(lines[:15]) + b"{damaged\n" + b"".join(lines[16:]))
    assert tally.read()["steps"] == 15 and tally.damaged.endswith(
        "history.jsonl:16: corrupt history line (JSONDecodeError: Expecting property name "
        "enclosed in double quotes: line 1 column 2 (char 1))")
    assert tally.read()["steps"] == 15

    # the walk's summary reads whole histories: a damaged one is an error; its live status
    # logs it once and goes on
    out = tmp_path / "run"
    folder_of(b"".join(lines[:15]) + b"{damaged\n", out / "walker-0")
    folder_of(b"".join(lines), out / "walker-1")
    with pytest.raises(RunError, match=r"walker-0/history.jsonl:16: corrupt history line"):
        runs.progress(out, 2)
    tallies = runs.history_tallies(out, 2)
    for _ in range(3):
        status = runs.progress(out, 2, tallies)
    assert [s["steps"] for s in status] == [15, 30]
    assert status[1] == {"walker": 1, **_full_counts(out / "walker-1")}
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and warned[0].endswith(
        "history.jsonl:16: corrupt history line (JSONDecodeError: Expecting property name "
        "enclosed in double quotes: line 1 column 2 (char 1)): the status counts the steps "
        "before it")


def folder_of(content, folder):
    """A chain folder whose history is ``content``."""
    folder.mkdir(parents=True)
    (folder / "history.jsonl").write_bytes(content)
    return folder


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    seed = walker_seeds(1, 1)[0]
    run_walker(tmp_path / "w", seed, fake_score, 5, SPACE)
    (tmp_path / "w/checkpoint.json").write_text("{not json")
    with pytest.raises(RunError, match="checkpoint.json: unreadable checkpoint"):
        run_walker(tmp_path / "w", seed, fake_score, 5, SPACE, resume=True)
    # a walker stopped before its first checkpoint starts again from its seed
    run_walker(tmp_path / "none", seed, fake_score, 5, SPACE, resume=True)
    run_walker(tmp_path / "fresh", seed, fake_score, 5, SPACE)
    assert read_history(tmp_path / "none") == read_history(tmp_path / "fresh")


def fake_factory():
    return fake_score


def test_walk_writes_a_complete_run_and_resumes(tmp_path):
    import json

    from protomodels import hiscores
    from protomodels.runs import WalkConfig, progress, walk

    config = WalkConfig(out=str(tmp_path / "run"), ladder=[1.0], walkers=2, steps=12, seed=9, checkpoint_every=4)
    summary = walk(config, score_factory=fake_factory)
    assert summary["crashed"] == [] and [s["steps"] for s in summary["progress"]] == [12, 12]
    run = json.loads((tmp_path / "run/run.json").read_text())
    assert run["config"]["seed"] == 9 and run["schema"] == "protomodels.run/1"
    entries = hiscores.read(tmp_path / "run/hiscores.json")
    assert entries and [e["rank"] for e in entries] == list(range(1, len(entries) + 1))
    assert all(a["K"] >= b["K"] for a, b in zip(entries, entries[1:]))
    assert (tmp_path / "run/hiscores/rank-1.slha").exists()
    walk(WalkConfig(out=str(tmp_path / "run"), steps=5), resume=True, score_factory=fake_factory)
    assert [s["steps"] for s in progress(tmp_path / "run", 2)] == [17, 17]
    with pytest.raises(RunError, match="already exists"):
        walk(config, score_factory=fake_factory)


def crashing_factory():
    import multiprocessing

    def score(model):
        if multiprocessing.current_process().name == "walker-1" and len(model.masses) > 2:
            raise RuntimeError("boom")
        return fake_score(model)
    return score


def test_a_crashed_walker_does_not_stop_the_others(tmp_path):
    from protomodels.runs import WalkConfig, walk

    summary = walk(WalkConfig(out=str(tmp_path / "run"), ladder=[1.0], walkers=2, steps=40, seed=1),
                   score_factory=crashing_factory)
    assert summary["crashed"] == [1]
    assert summary["progress"][0]["steps"] == 40


def wait_for(predicate, timeout=60.0):
    import time
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "the walker made no progress"
        time.sleep(0.02)


def slow_score(model):
    import time
    time.sleep(0.005)
    return fake_score(model)


def test_sigkill_loses_at_most_the_steps_since_the_checkpoint(tmp_path):
    import multiprocessing
    import os
    import signal
    import time

    from protomodels import hiscores
    seed = walker_seeds(4, 1)[0]
    run_walker(tmp_path / "ref", seed, fake_score, 150, SPACE, checkpoint_every=10)
    context = multiprocessing.get_context("fork")
    proc = context.Process(target=run_walker, args=(tmp_path / "w", seed, slow_score, 150, SPACE),
                           kwargs={"checkpoint_every": 10, "hiscores": tmp_path / "hiscores.json"})
    proc.start()
    checkpoint = tmp_path / "w" / "checkpoint.json"
    wait_for(lambda: checkpoint.exists() and WalkerStore(tmp_path / "w").load_checkpoint()["step"] >= 10)
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    done = WalkerStore(tmp_path / "w").load_checkpoint()["step"]
    assert 0 < done < 150
    hiscores.read(tmp_path / "hiscores.json")  # whole and valid, whenever the kill came
    run_walker(tmp_path / "w", seed, fake_score, 150 - done, SPACE, checkpoint_every=10, resume=True)
    assert (tmp_path / "w/history.jsonl").read_bytes() == (tmp_path / "ref/history.jsonl").read_bytes()


def test_ctrl_c_checkpoints_the_last_step_and_resume_is_exact(tmp_path):
    import multiprocessing
    import os
    import signal

    seed = walker_seeds(6, 1)[0]
    run_walker(tmp_path / "ref", seed, fake_score, 150, SPACE, checkpoint_every=50)

    def target():
        try:
            run_walker(tmp_path / "w", seed, slow_score, 150, SPACE, checkpoint_every=50)
        except KeyboardInterrupt:
            os._exit(130)

    proc = multiprocessing.get_context("fork").Process(target=target)
    proc.start()
    history = tmp_path / "w" / "history.jsonl"
    wait_for(lambda: history.exists() and len(history.read_text().splitlines()) >= 5)
    os.kill(proc.pid, signal.SIGINT)
    proc.join()
    assert proc.exitcode == 130
    store = WalkerStore(tmp_path / "w")
    done = store.load_checkpoint()["step"]
    assert 0 < done < 150
    assert len(read_history(tmp_path / "w")) == done  # the checkpoint is at the last step
    run_walker(tmp_path / "w", seed, fake_score, 150 - done, SPACE, checkpoint_every=50, resume=True)
    assert store.history.read_bytes() == (tmp_path / "ref/history.jsonl").read_bytes()


def test_sigterm_to_a_run_checkpoints_every_walker(tmp_path):
    """A run stopped with SIGTERM (as batch systems do) checkpoints its walkers and
    --resume continues it; walkers report themselves interrupted, not crashed."""
    import multiprocessing
    import os
    import signal

    from protomodels.runs import WalkConfig, walk

    out = tmp_path / "run"
    summary_file = tmp_path / "summary.json"

    def target():
        import json
        summary = walk(WalkConfig(out=str(out), ladder=[1.0], walkers=2, steps=400, seed=2,
                                  checkpoint_every=50), score_factory=lambda: slow_score)
        summary_file.write_text(json.dumps(summary))

    proc = multiprocessing.get_context("fork").Process(target=target)
    proc.start()
    history = out / "walker-1" / "history.jsonl"
    wait_for(lambda: history.exists() and len(history.read_text().splitlines()) >= 5)
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(60)
    import json
    summary = json.loads(summary_file.read_text())
    assert summary["crashed"] == [] and summary["interrupted"] == [0, 1]
    for i in (0, 1):
        done = WalkerStore(out / f"walker-{i}").load_checkpoint()["step"]
        assert len(read_history(out / f"walker-{i}")) == done


def test_a_walker_runs_numpy_blas_on_one_thread(tmp_path):
    """Walkers run one per core; BLAS threads would only spin on our tiny matrices and
    starve them, so each walker process limits BLAS to one thread (in a child here, to
    leave the test process as it was)."""
    import json
    import os

    import numpy as np

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            from threadpoolctl import threadpool_info

            run_walker(tmp_path / "w", np.random.SeedSequence(5), fake_score, 3, SPACE)
            blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
            with os.fdopen(write_fd, "w") as pipe:
                json.dump(blas, pipe)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        blas = json.load(pipe)
    assert os.waitpid(pid, 0)[1] == 0
    assert blas and all(n == 1 for n in blas)


def held_factory(release):
    """A fake score that waits, at its first call, until the file ``release`` exists: the
    run stays being written until the test lets it go."""
    import time

    def factory():
        def score(model):
            while not release.exists():
                time.sleep(0.02)
            return fake_score(model)
        return score
    return factory


def test_a_second_writer_of_a_run_is_refused_and_histories_stay_intact(tmp_path):
    """While one process writes a run (here a forked ``walk --resume``), a second
    ``walk --resume`` of the same folder stops at once with an error naming the holder;
    the first run's histories are exactly as long as its steps."""
    import os
    import time

    from protomodels.runs import WalkConfig, progress, walk

    out = tmp_path / "run"
    walk(WalkConfig(out=str(out), ladder=[1.0], walkers=2, steps=3, seed=4), score_factory=fake_factory)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            walk(WalkConfig(out=str(out), steps=60), resume=True,
                 score_factory=held_factory(tmp_path / "release"))
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while f"pid {pid}" not in (out / "run.lock").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(RunError, match=rf"being written by host \S+ pid {pid} since"):
        walk(WalkConfig(out=str(out), steps=5), resume=True, score_factory=fake_factory)
    (tmp_path / "release").touch()
    assert os.waitpid(pid, 0)[1] == 0
    assert [s["steps"] for s in progress(out, 2)] == [63, 63]
    for i in range(2):
        assert len((out / f"walker-{i}/history.jsonl").read_text().splitlines()) == 63
    walk(WalkConfig(out=str(out), steps=2), resume=True, score_factory=fake_factory)  # free again


def test_a_killed_writer_does_not_leave_the_run_locked(tmp_path):
    import os
    import signal
    import time

    from protomodels.atomic import sole_writer

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        with sole_writer(tmp_path / "run.lock", RunError, "this run"):
            os.write(write_fd, b"x")
            time.sleep(60)
        os._exit(0)
    os.read(read_fd, 1)
    with pytest.raises(RunError, match="being written by"):
        with sole_writer(tmp_path / "run.lock", RunError, "this run"):
            pass
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with sole_writer(tmp_path / "run.lock", RunError, "this run"):
        pass


def test_resume_with_a_truncated_checkpoint_stops_before_any_walker_runs(tmp_path):
    """A truncated checkpoint is a one-line error naming the file and what to do, raised
    before any walker starts: no history changes."""
    from protomodels.runs import WalkConfig, walk

    out = tmp_path / "run"
    walk(WalkConfig(out=str(out), ladder=[1.0], walkers=2, steps=4, seed=2), score_factory=fake_factory)
    checkpoint = out / "walker-1/checkpoint.json"
    checkpoint.write_text(checkpoint.read_text()[:40])
    histories = [(out / f"walker-{i}/history.jsonl").read_bytes() for i in range(2)]
    with pytest.raises(RunError) as error:
        walk(WalkConfig(out=str(out), steps=5), resume=True, score_factory=fake_factory)
    message = str(error.value)
    assert "\n" not in message and "walker-1/checkpoint.json: unreadable checkpoint" in message
    assert "start a new run" in message
    assert histories == [(out / f"walker-{i}/history.jsonl").read_bytes() for i in range(2)]


@pytest.mark.writes_invalid_files
def test_one_schema_validates_flags_files_and_run_json(tmp_path):
    """The same ranges hold for a configuration file, the options passed to ``walk`` and
    the configuration stored in a resumed run's run.json; the schema's likelihoods are
    the project's."""
    import json

    from protomodels.runs import WalkConfig, load_config, walk
    from protomodels.schemas import schema
    from protomodels.statistics.workspaces import LIKELIHOODS

    assert schema("run-config")["properties"]["likelihood"]["enum"] == list(LIKELIHOODS)
    config = tmp_path / "run.yaml"
    config.write_text("temperature: 0\n")
    with pytest.raises(RunError, match=r"run.yaml: \$.temperature: 0 is less than or equal"):
        load_config(config)
    with pytest.raises(RunError, match=r"walk configuration: \$.checkpoint_every: 0 is less"):
        walk(WalkConfig(out=str(tmp_path / "a"), walkers=1, steps=2, checkpoint_every=0),
             score_factory=fake_factory)
    out = tmp_path / "run"
    walk(WalkConfig(out=str(out), ladder=[1.0], walkers=1, steps=2, seed=1), score_factory=fake_factory)
    stored = json.loads((out / "run.json").read_text())
    stored["config"]["walkers"] = -1
    (out / "run.json").write_text(json.dumps(stored))
    with pytest.raises(RunError, match=r"run.json: \$.config.walkers: -1 is less"):
        walk(WalkConfig(out=str(out), steps=2), resume=True, score_factory=fake_factory)


@pytest.mark.writes_invalid_files
def test_run_files_are_checked_against_their_schemas(tmp_path):
    """A wrong field in a checkpoint, a history line or hiscores.json is a one-line error
    naming the file (and line) and the field's JSON path (not a KeyError or a misread run)."""
    import json

    from protomodels import hiscores
    from protomodels.runs import WalkConfig, walk

    out = tmp_path / "run"
    walk(WalkConfig(out=str(out), ladder=[1.0], walkers=1, steps=3, seed=1), score_factory=fake_factory)
    checkpoint = out / "walker-0/checkpoint.json"
    data = json.loads(checkpoint.read_text())
    data["model"]["masses"] = {"XZ1": "light"}
    checkpoint.write_text(json.dumps(data))
    with pytest.raises(RunError, match=r"checkpoint.json: \$.model.masses.XZ1: 'light' is not "
                                       r"of type 'number'; this walker cannot be resumed"):
        walk(WalkConfig(out=str(out), steps=2), resume=True, score_factory=fake_factory)
    scores = out / "hiscores.json"
    data = json.loads(scores.read_text())
    del data["entries"][0]["rank"]
    scores.write_text(json.dumps(data))
    with pytest.raises(RunError, match=r"hiscores.json: \$.entries\[0\]: 'rank' is a required"):
        hiscores.read(scores)
    history = out / "walker-0/history.jsonl"
    assert [step["step"] for step in read_history(out / "walker-0")] == [1, 2, 3]
    lines = history.read_text().splitlines()
    second = json.loads(lines[1])
    del second["accepted"]
    history.write_text("\n".join([lines[0], json.dumps(second), lines[2]]) + "\n")
    with pytest.raises(RunError, match=r"history.jsonl:2: \$: 'accepted' is a required property"):
        read_history(out / "walker-0")
    second["accepted"], second["model"] = True, {"masses": {"XZ1": -1}, "mass": 3}
    history.write_text("\n".join([lines[0], json.dumps(second), lines[2]]) + "\n")
    with pytest.raises(RunError, match=r"history.jsonl:2: \$.model: Additional properties"):
        read_history(out / "walker-0")


def test_shipped_schemas_name_the_ids_the_code_writes():
    """Each shipped schema's 'schema' constant is the id the code writes into the file, so
    the two cannot drift apart."""
    from protomodels import hiscores
    from protomodels.runs import CHECKPOINT_SCHEMA, RUN_SCHEMA
    from protomodels.schemas import schema

    for name, written in (("run", RUN_SCHEMA), ("checkpoint", CHECKPOINT_SCHEMA),
                          ("hiscores", hiscores.SCHEMA)):
        assert schema(name)["properties"]["schema"]["const"] == written
