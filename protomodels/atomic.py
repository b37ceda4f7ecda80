"""Safe file I/O: atomic writes, file locks, and reading our versioned JSON files.

Writes go to a temporary file in the same folder, then a rename: readers (other walkers,
a user's ``cat``) never see half a file, and a crash mid-write leaves the previous version
intact; the file gets the permissions a plain ``open`` would give it (``FILE_MODE``: 0666
less the umask, so a shared report or run folder stays readable to others where the umask
allows).  ``file_lock`` serialises first builds and read-modify-write cycles between
processes; ``sole_writer`` refuses a second writer of a run; ``read_json_record`` reads a
file of ours and checks its schema id.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Type


def _read_umask() -> int:
    """The process' umask: from /proc (Linux, no change of process state), else by setting
    and restoring it (once, at import, before any thread of ours runs)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


#: Permission bits of every file written here: what ``open`` would give a new file
#: (0666 less the umask), not ``mkstemp``'s 0600 (read once, at import).
FILE_MODE = 0o666 & ~_read_umask()


def write_bytes_atomic(path: os.PathLike, payload: bytes) -> None:
    """Replace ``path`` by ``payload`` atomically: a temporary file in the same folder
    (mode ``FILE_MODE``), flushed to disk, then renamed over ``path``.  The folder must
    exist; ``OSError`` (unwritable folder, full disk) leaves ``path`` as it was and no
    temporary file behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: os.PathLike, text: str) -> None:
    """``write_bytes_atomic`` of ``text`` as UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: os.PathLike, data: Any) -> None:
    """``data`` as indented JSON with sorted keys, written by ``write_text_atomic``."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def file_lock(lockfile: os.PathLike) -> Iterator[None]:
    """An exclusive ``flock`` on ``lockfile`` (created, with its folder) for the block."""
    lockfile = Path(lockfile)
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    with open(lockfile, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def sole_writer(lockfile: os.PathLike, error: Type[Exception], what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lockfile`` for the block, or raise ``error`` at once
    naming the holder (host, process id, start time, written into the lock file) if
    another process holds it.

    The operating system releases the lock when its holder dies (SIGKILL included), so a
    killed run never leaves it stuck; processes forked inside the block share it.  Linux
    NFS clients implement ``flock`` with NFS locks, so it also works between the hosts of
    a cluster sharing the file system."""
    import socket
    import time

    lockfile = Path(lockfile)
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    with open(lockfile, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise error(f"{lockfile.parent}: {what} is being written by {holder}; "
                        "wait for it to end") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"host {socket.gethostname()} pid {os.getpid()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_json_record(path: os.PathLike, schema: str, error: Type[Exception],
                     what: str = "file") -> Dict[str, Any]:
    """The JSON object in ``path`` whose field 'schema' is the id ``schema``, checked
    against the shipped JSON schema that pins that id (``protomodels.schemas``), the id
    first; otherwise ``error`` with a one-line message naming the file and the JSON path
    (``what`` says what it should have been)."""
    from . import schemas

    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as problem:
        raise error(f"{path}: unreadable {what} ({problem})") from None
    name = schemas.documents().get(schema)
    if name:
        schemas.validate(record, name, str(path), error)  # checks the id first
    else:  # an id no shipped schema pins: the id alone
        schemas.check_id(record, schema, str(path), error)
    return record


def read_keyed_lines(path: os.PathLike) -> Dict[str, Dict[str, Any]]:
    """The records of a JSON-lines file of computed outcomes, by their field "key"
    (later lines win; unreadable lines are skipped, so a line cut by an interrupted
    write is computed again).  A missing file has none."""
    records: Dict[str, Dict[str, Any]] = {}
    path = Path(path)
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            records[record["key"]] = record
        except (ValueError, KeyError, TypeError):
            continue
    return records


def append_keyed_line(path: os.PathLike, record: Dict[str, Any]) -> None:
    """Append one record (with a field "key") to a JSON-lines file under its lock file
    (``path`` with suffix .lock), so that several processes may append."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):
        with open(path, "a") as stream:
            stream.write(json.dumps(record, sort_keys=True) + "\n")
