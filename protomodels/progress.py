"""Progress of long jobs (database build, walks, fakes, scans, surrogate training and
validation, simplified likelihoods): one implementation for every command.

In a terminal, a bar with the items done, the time elapsed and the time left, or a live
table (a walk's chains), drawn by `rich <https://github.com/Textualize/rich>`_: a widely
used, actively maintained library that renders both, and nests a walk's table under
another job's bar.  Elsewhere (a pipe, a batch job's log file, CI) the same progress
becomes plain ``logging`` INFO lines at a modest rate (at every tenth of the items, and
when 30 s have passed since the last line), without escape codes, so logs stay readable.  Progress is
INFO: ``protomodels -q`` shows neither the bars nor the lines.

Use it like this (``what`` names the job in the bar and in every log line)::

    from .progress import live_table, progress_bar, tracked

    with progress_bar(len(points), "scan") as advance:
        for point in points:
            ...
            advance()                        # one more item done (advance(n): n more)

    with progress_bar(None, "training data") as bar:   # total not known yet
        train(progress=bar.update)           # callbacks of the form (done, total)

    for result in tracked(results, "likelihoods", delay=3.0):  # silent if done in 3 s
        ...

    with live_table("walk", ["chain", "steps"]) as show:
        while running:
            show(lambda: [["0", "12/100"], ["1", "14/100"]])   # rows, built only when drawn

Displays refresh from the calling thread, when counts change (no refresh thread): the
walkers and Dask's local workers are forked while a display is up, and a fork must not
copy a lock that another thread holds.  While a display is up, the command's log
records (``LogHandler``) are printed above it instead of tearing it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

logger = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 30.0  # pipe: a line when this long has passed since the last one,
LOG_EVERY_FRACTION = 10  # and at every tenth of the items
REFRESH_SECONDS = 0.1  # terminal: the fastest a bar is redrawn
TABLE_REFRESH_SECONDS = 2.0  # terminal: the fastest a live table's rows are rebuilt

Rows = Sequence[Sequence[str]]
T = TypeVar("T")

_console: Any = None
_console_pid = 0  # the process that created ``_console``: the one that draws
_drawing = {"pid": 0, "count": 0}  # displays this process draws now (LogHandler)


def console():
    """The rich console on stderr that every display shares (one, so they can nest)."""
    global _console, _console_pid
    if _console is None:
        from rich.console import Console
        _console = Console(stderr=True)
        _console_pid = os.getpid()
    return _console


def terminal() -> bool:
    """Whether progress is drawn (stderr is a capable terminal) rather than logged; False
    as well when INFO is off (``-q``), where it is neither, and in a process forked after
    the console was made (a walker, a Dask worker): the parent draws, the child logs."""
    if not logger.isEnabledFor(logging.INFO):
        return False
    shared = console()
    if _console_pid != os.getpid():
        return False
    return shared.is_terminal and not shared.is_dumb_terminal


def _shown() -> None:
    """A display of this process is up (``LogHandler`` prints through its console)."""
    _drawing["pid"] = os.getpid()
    _drawing["count"] += 1


def _hidden() -> None:
    """A display of this process is gone."""
    _drawing["count"] -= 1


def duration(seconds: float) -> str:
    """A time span as people read it: '45 s', '4 min 05 s', '2 h 03 min'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class LogHandler(logging.StreamHandler):
    """Log records as 'LEVEL name: message' lines on the current ``sys.stderr`` (looked up
    at each record, as test runners swap it); while this process draws a display, through
    the shared console, which prints them above the display."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # no stream of its own: ``stream`` is sys.stderr
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    def emit(self, record: logging.LogRecord) -> None:
        # a forked walker inherits the count but not the display: it writes plainly
        if _drawing["count"] and _drawing["pid"] == os.getpid():
            try:
                console().print(self.format(record), markup=False, highlight=False,
                                emoji=False, soft_wrap=True)
            except Exception:
                self.handleError(record)
        else:
            super().emit(record)


class Tracker:
    """What ``progress_bar`` yields: call it when items are done (``advance(n=1)``), or
    give absolute counts with ``update(done, total)``; counts that go back, or a known
    total that changes, start a new phase (e.g. the next workspace of ``surrogate
    validate``).  The first total given to a bar started with None is not a new phase:
    the time elapsed counts from the start.

    In a terminal, a bar shown late (a total not known at first, or ``delay``) is not
    started while a display opened after it (a walk's table in a scan) is up: rich
    stacks its displays and stops them last in, first out, so a bar started inside a
    later display would be taken off the stack in that display's place.  It shows at the
    first count after that display is gone."""

    def __init__(self, total: Optional[int], what: str, delay: float) -> None:
        self.total, self.what, self.done = total, what, 0
        self._delay = delay
        self._terminal = terminal()
        self._start = self._last_line = time.monotonic()
        self._updated = False  # any count given yet
        self._line_at: Optional[int] = None  # done at the last line (pipe)
        self._tenth = 0  # tenths of the items done at the last line (pipe)
        self._bar: Any = None  # the rich Progress once shown (terminal)
        self._task: Any = None
        self._redrawn = 0.0
        self._outer = _drawing["count"]  # displays up when it was made: those around it
        if self._terminal and not delay and total is not None:  # 0 of N from the start
            self._draw(self._start, final=False)

    def __call__(self, n: int = 1) -> None:
        self.update(self.done + n)

    def update(self, done: int, total: Optional[int] = None) -> None:
        """``done`` items of ``total`` (unchanged if None) are done."""
        if done < self.done or (total is not None and self.total is not None
                                and total != self.total):
            self.total = total if total is not None else self.total
            self._start = self._last_line = time.monotonic()
            self._line_at, self._tenth = None, 0
            if self._bar is not None:
                self._bar.reset(self._task, total=self.total, completed=done)
        elif total is not None:  # the total, now known
            self.total = total
        self.done, self._updated = done, True
        now = time.monotonic()
        if now - self._start < self._delay:
            return
        if self._terminal:
            self._draw(now, final=False)
        else:
            self._log(now, final=False)

    def close(self) -> None:
        """The last state: the bar drawn complete and stopped, or a last line logged."""
        now = time.monotonic()
        if self._terminal:
            if self._bar is not None:
                self._draw(now, final=True)
                self._bar.stop()
                _hidden()
        elif self._updated and now - self._start >= self._delay:
            self._log(now, final=True)

    def _draw(self, now: float, final: bool) -> None:
        if self._bar is None and _drawing["count"] > self._outer:
            return  # a display opened inside this bar's scope is up (class docstring)
        if self._bar is None:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress,
                                       TaskProgressColumn, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TaskProgressColumn(),
                                 TextColumn("elapsed"), TimeElapsedColumn(),
                                 TextColumn("left"), TimeRemainingColumn(),
                                 console=console(), auto_refresh=False,
                                 redirect_stdout=False, redirect_stderr=False)
            self._task = self._bar.add_task(self.what, total=self.total, completed=self.done)
            self._bar.tasks[-1].start_time = self._start  # shown after ``delay``: count it
            self._bar.start()
            _shown()
        self._bar.update(self._task, completed=self.done, total=self.total)
        if final or now - self._redrawn >= REFRESH_SECONDS:
            self._redrawn = now
            self._bar.refresh()

    def _log(self, now: float, final: bool) -> None:
        tenth = (LOG_EVERY_FRACTION * self.done // self.total) if self.total else 0
        due = tenth > self._tenth or now - self._last_line >= LOG_EVERY_SECONDS
        if not due and not (final and self._line_at != self.done):
            return
        self._last_line, self._line_at, self._tenth = now, self.done, tenth
        elapsed = now - self._start
        if not self.total:
            logger.info("%s: %d done, %s elapsed", self.what, self.done, duration(elapsed))
            return
        left = ("" if not self.done or self.done >= self.total
                else f", about {duration(elapsed / self.done * (self.total - self.done))} left")
        logger.info("%s: %d/%d (%d%%), %s elapsed%s", self.what, self.done, self.total,
                    100 * self.done // self.total, duration(elapsed), left)


@contextlib.contextmanager
def progress_bar(total: Optional[int], what: str, delay: float = 0.0) -> Iterator[Tracker]:
    """Progress of a job of ``total`` items (None: not known yet) named ``what``: a bar in
    a terminal, INFO lines elsewhere (module docstring).  Nothing is shown during the
    first ``delay`` seconds, so a job that is often quick (a cached build) stays silent
    then."""
    tracker = Tracker(total, what, delay)
    try:
        yield tracker
    finally:
        tracker.close()


def tracked(items: Sequence[T], what: str, delay: float = 0.0) -> Iterator[T]:
    """``items`` one by one, each counted done by ``progress_bar`` when the loop asks
    for the next."""
    with progress_bar(len(items), what, delay) as advance:
        for item in items:
            yield item
            advance()


@contextlib.contextmanager
def live_table(title: str, columns: Sequence[str]) -> Iterator[Callable[[Callable[[], Rows]], None]]:
    """A table that follows a job: ``show(rows)`` with a function giving the current rows
    (strings, one per column), called only when they are drawn: at most every 2 s in
    a terminal (the table vanishes at the end; the command prints its summary), every
    30 s as INFO lines 'title: column value, ...' elsewhere."""
    drawing = terminal()
    last = [0.0 if drawing else time.monotonic()]

    def logged(rows: Callable[[], Rows]) -> None:
        if time.monotonic() - last[0] >= LOG_EVERY_SECONDS:
            last[0] = time.monotonic()
            for row in rows():
                logger.info("%s: %s", title, ", ".join(f"{c} {v}" for c, v in zip(columns, row)))

    if not drawing:
        yield logged
        return
    from rich.live import Live
    from rich.table import Table

    def drawn(rows: Callable[[], Rows]) -> None:
        if time.monotonic() - last[0] >= TABLE_REFRESH_SECONDS:
            last[0] = time.monotonic()
            table = Table(title=title, title_justify="left")
            for column in columns:
                table.add_column(column, justify="right")
            for row in rows():
                table.add_row(*row)
            live.update(table, refresh=True)

    live = Live(console=console(), auto_refresh=False, transient=True,
                redirect_stdout=False, redirect_stderr=False)
    with live:
        _shown()
        try:
            yield drawn
        finally:
            _hidden()
