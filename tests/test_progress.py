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


def test_a_quick_job_with_a_delay_stays_silent(clock, caplog):
    caplog.set_level(logging.INFO, logger="protomodels")
    for item in progress.tracked(list(range(50)), "cached", delay=3.0):
        clock[0] += 0.01
    assert lines(caplog) == []
    for item in progress.tracked(list(range(5)), "slow", delay=3.0):
        clock[0] += 2.0
    assert lines(caplog)[0].startswith("slow: 2/5 (40%), 4 s elapsed")


def test_quiet_shows_neither_bar_nor_lines(caplog):
    caplog.set_level(logging.WARNING, logger="protomodels")
    assert not progress.terminal()
    with progress.progress_bar(3, "job") as advance:
        advance(3)
    assert lines(caplog) == []


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


def _walk(out: Path, stderr) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), TERM="xterm-256color", COLUMNS="100",
               OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", WALK, str(out)], cwd=REPO, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)


def test_a_walk_draws_a_live_table_in_a_terminal_and_logs_lines_in_a_pipe(tmp_path):
    master, slave = os.openpty()
    proc = _walk(tmp_path / "tty", slave)
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
    assert proc.wait(60) == 0, shown.decode(errors="replace")
    screen = shown.decode(errors="replace")
    assert "steps/s" in screen and "time left" in screen and "best K" in screen
    assert "/120 " in screen
    assert ESCAPE.search(screen)  # drawn, redrawn in place
    assert "INFO" not in screen  # no log lines in between

    piped = _walk(tmp_path / "pipe", subprocess.PIPE)
    _, err = piped.communicate(timeout=120)
    assert piped.returncode == 0, err.decode(errors="replace")
    text = err.decode()
    assert not ESCAPE.search(text)
    rows = [line for line in text.splitlines() if "protomodels.progress: walk " in line]
    assert rows, text
    assert re.search(r"chain 1, T 1, steps \d+/120, steps/s [\d.]+, time left .+, "
                     r"acceptance \d+%, best K (-|-?\d+\.\d{3})$", rows[-1]), rows[-1]
