"""Progress (protomodels.progress): a bar or a live table in a terminal, readable INFO
lines at a modest rate elsewhere, nothing with -q."""

from __future__ import annotations

import logging
import os
import re
import select
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from protomodels import progress

REPO = Path(__file__).resolve().parents[1]
ESCAPE = re.compile(r"\x1b\[")


@pytest.fixture(autouse=True)
def propagating(monkeypatch):
    """Records reach caplog even after a CLI test configured the protomodels logger."""
    root = logging.getLogger("protomodels")
    monkeypatch.setattr(root, "propagate", True)
    monkeypatch.setattr(root, "handlers", [])


@pytest.fixture
def clock(monkeypatch):
    """Plain (pipe) mode on a clock the test moves: ``clock[0]`` seconds."""
    now = [100.0]
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(progress, "terminal", lambda: False)
    return now


def lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "protomodels.progress"]


def test_a_pipe_gets_a_line_every_tenth_with_the_time_left(clock, caplog):
    caplog.set_level(logging.INFO, logger="protomodels")
    with progress.progress_bar(20, "job") as advance:
        for _ in range(20):
            clock[0] += 3.0
            advance()
    got = lines(caplog)
    assert len(got) == 10
    assert got[0] == "job: 2/20 (10%), 6 s elapsed, about 54 s left"
    assert got[-1] == "job: 20/20 (100%), 1 min 00 s elapsed"


def test_a_pipe_gets_a_line_every_30_s_and_the_last_state(clock, caplog):
    caplog.set_level(logging.INFO, logger="protomodels")
    with progress.progress_bar(None, "chunks") as bar:
        for done in range(1, 5):
            clock[0] += 20.0
            bar.update(done)
    assert lines(caplog) == ["chunks: 2 done, 40 s elapsed", "chunks: 4 done, 1 min 20 s elapsed"]
    caplog.clear()
    with progress.progress_bar(None, "limits") as bar:
        bar.update(4, 4)
        clock[0] += 1.0
        bar.update(1, 4)  # counts went back: a new phase (the next workspace)
    assert lines(caplog) == ["limits: 4/4 (100%), 0 s elapsed",
                             "limits: 1/4 (25%), 0 s elapsed, about 0 s left"]


def test_a_total_given_later_keeps_the_time_elapsed(clock, caplog):
    """A bar started with no total counts its time from the start when the first
    ``update(done, total)`` gives one (it used to start a new phase there: '1/4, 0 s
    elapsed' after 2 minutes); a total that changes later is a new phase."""
    caplog.set_level(logging.INFO, logger="protomodels")
    with progress.progress_bar(None, "chunks") as bar:
        for done in range(1, 5):
            clock[0] += 120.0
            bar.update(done, 4)
        clock[0] += 10.0
        bar.update(1, 2)  # another total: the next phase
    assert lines(caplog) == ["chunks: 1/4 (25%), 2 min 00 s elapsed, about 6 min 00 s left",
                             "chunks: 2/4 (50%), 4 min 00 s elapsed, about 4 min 00 s left",
                             "chunks: 3/4 (75%), 6 min 00 s elapsed, about 2 min 00 s left",
                             "chunks: 4/4 (100%), 8 min 00 s elapsed",
                             "chunks: 1/2 (50%), 0 s elapsed, about 0 s left"]


def test_a_quick_job_with_a_delay_stays_silent(clock, caplog):
    caplog.set_level(logging.INFO, logger="protomodels")
    for item in progress.tracked(list(range(50)), "cached", delay=3.0):
        clock[0] += 0.01
    assert lines(caplog) == []
    for item in progress.tracked(list(range(5)), "slow", delay=3.0):
        clock[0] += 2.0
    assert lines(caplog)[0].startswith("slow: 2/5 (40%), 4 s elapsed")


# A bar and a live table, with the logging of ``protomodels`` or ``protomodels -q``.
JOB = """
import sys
from protomodels import progress
from protomodels.cli import _configure_logging

_configure_logging(0, quiet=sys.argv[1:] == ["-q"])
with progress.progress_bar(3, "job") as advance:
    advance(3)
with progress.live_table("table", ["column"]) as show:
    show(lambda: [["cell"]])
"""


def _child(args, stderr) -> subprocess.Popen:
    """``python -c`` in the repository, stderr to ``stderr`` (a terminal's end, a pipe)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TERM="xterm-256color", COLUMNS="100",
               OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", *args], cwd=REPO, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)


def _on_terminal(args) -> str:
    """What ``_child(args)`` shows on a pseudo-terminal, once it exited successfully."""
    master, slave = os.openpty()
    proc = _child(args, slave)
    os.close(slave)
    shown, deadline = b"", time.monotonic() + 120
    while time.monotonic() < deadline:
        if select.select([master], [], [], 1.0)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
    os.close(master)
    screen = shown.decode(errors="replace")
    assert proc.wait(60) == 0, screen
    return screen


def test_quiet_shows_neither_bar_nor_lines_in_a_terminal():
    """``-q`` in a terminal draws nothing (a test's stderr is no terminal, so this needs
    a pseudo-terminal); the same job without it draws both displays there."""
    drawn = _on_terminal([JOB])
    assert "job" in drawn and "3/3" in drawn and "cell" in drawn and ESCAPE.search(drawn)
    assert _on_terminal([JOB, "-q"]) == ""


def test_a_forked_process_logs_instead_of_drawing(monkeypatch, caplog):
    """A process forked while the parent draws (a walker, a Dask worker) must not draw the
    parent's display: it logs lines instead."""
    caplog.set_level(logging.INFO, logger="protomodels")
    monkeypatch.setattr(progress, "_console", types.SimpleNamespace(is_terminal=True,
                                                                     is_dumb_terminal=False))
    monkeypatch.setattr(progress, "_console_pid", os.getpid())
    assert progress.terminal()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its answer through the pipe, then out without pytest's exit
        try:
            os.write(write, b"drawn" if progress.terminal() else b"logged")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"logged"


def test_a_late_bar_waits_for_a_display_opened_inside_it(monkeypatch, caplog):
    """A bar shown late (no total at first) does not start inside a walk's table opened
    after it: rich would take it off its display stack in the table's place."""
    import io

    from rich.console import Console
    caplog.set_level(logging.INFO, logger="protomodels")
    screen = io.StringIO()
    shared = Console(file=screen, force_terminal=True, width=100)
    monkeypatch.setattr(progress, "_console", shared)
    monkeypatch.setattr(progress, "_console_pid", os.getpid())
    monkeypatch.setattr(progress, "_drawing", {"pid": 0, "count": 0})
    monkeypatch.setattr(progress, "TABLE_REFRESH_SECONDS", 0.0)
    with progress.progress_bar(None, "scan") as bar:
        with progress.live_table("walk", ["chain"]) as show:
            show(lambda: [["0"]])
            bar.update(1, 3)
            assert bar._bar is None and len(shared._live_stack) == 1  # the table only
        bar.update(2, 3)
        assert shared._live_stack == [bar._bar.live]
    assert shared._live_stack == [] and "scan" in screen.getvalue()
    assert progress._drawing["count"] == 0


def test_durations_read_as_people_write_them():
    assert [progress.duration(s) for s in (0.4, 59, 61, 3599, 3600, 7385)] == \
        ["0 s", "59 s", "1 min 01 s", "59 min 59 s", "1 h 00 min", "2 h 03 min"]


# A tiny walk (the fake score of test_runs, no database) as `protomodels walk` logs it.
WALK = """
import sys, time
from protomodels import progress
from protomodels.cli import _configure_logging
from protomodels.runs import WalkConfig, walk
from tests.test_runs import fake_score

def slow(model):
    time.sleep(0.004)
    return fake_score(model)

_configure_logging(0)
progress.LOG_EVERY_SECONDS = 0.5
walk(WalkConfig(out=sys.argv[1], ladder=[0.5, 1.0], walkers=2, steps=120, seed=3),
     score_factory=lambda: slow)
"""


def test_a_walk_draws_a_live_table_in_a_terminal_and_logs_lines_in_a_pipe(tmp_path):
    screen = _on_terminal([WALK, str(tmp_path / "tty")])
    assert "steps/s" in screen and "time left" in screen and "best K" in screen
    assert "/120 " in screen
    assert ESCAPE.search(screen)  # drawn, redrawn in place
    assert "INFO" not in screen  # no log lines in between

    piped = _child([WALK, str(tmp_path / "pipe")], subprocess.PIPE)
    _, err = piped.communicate(timeout=120)
    assert piped.returncode == 0, err.decode(errors="replace")
    text = err.decode()
    assert not ESCAPE.search(text)
    rows = [line for line in text.splitlines() if "protomodels.progress: walk " in line]
    assert rows, text
    assert re.search(r"chain 1, T 1, steps \d+/120, steps/s [\d.]+, time left .+, "
                     r"acceptance \d+%, best K (-|-?\d+\.\d{3})$", rows[-1]), rows[-1]
