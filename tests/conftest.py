"""Shared fixtures: a small real database (a handful of analyses copied from the
unpacked SModelS 3.0.0 database) for unit tests, the full database for slow tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable, List, Set, Tuple

import pytest

from protomodels import database
from protomodels.loader import load_database
from protomodels.runs import one_blas_thread

# As the command line does (``cli.main``): BLAS threads only spin on SModelS' and pyhf's
# tiny matrices, and starve the other processes (scipy's triangulation transforms took
# minutes instead of seconds while a second process used the other core).
one_blas_thread()

#: Real analyses (relative to the database root) that the unit-test database holds:
#: UL and EM results at 8 and 13 TeV, one covariance (CMS-SUS-21-002) and one pyhf
#: (ATLAS-SUSY-2018-31, whose channel names need the project's override) combination.
SUBSET = [
    "13TeV/ATLAS/ATLAS-SUSY-2016-07",
    "13TeV/ATLAS/ATLAS-SUSY-2016-07-eff",
    "13TeV/ATLAS/ATLAS-SUSY-2018-22-eff",
    "13TeV/ATLAS/ATLAS-SUSY-2018-31",
    "13TeV/ATLAS/ATLAS-SUSY-2018-31-eff",
    "13TeV/CMS/CMS-SUS-21-002",
    "13TeV/CMS/CMS-SUS-21-002-eff",
    "13TeV/CMS/CMS-SUS-16-033",
    "8TeV/ATLAS/ATLAS-SUSY-2013-02",
    "8TeV/CMS/CMS-SUS-13-012",
]


def full_text_database() -> Path:
    """The unpacked shared database (unpacked once into the project cache)."""
    text_dir, _, _ = database.binary_path(database.locate())
    return text_dir


@pytest.fixture(scope="session")
def subset_dir(tmp_path_factory) -> Path:
    source = full_text_database()
    target = tmp_path_factory.mktemp("subsetdb") / "smodels-subset"
    target.mkdir()
    for name in ("version",):
        shutil.copy(source / name, target / name)
    for folder in SUBSET:
        if not (source / folder).is_dir():
            pytest.fail(f"analysis {folder} missing from the database")
        shutil.copytree(source / folder, target / folder)
    return target


@pytest.fixture(scope="session")
def subset_db(subset_dir):
    return load_database(str(subset_dir))


@pytest.fixture(scope="session")
def full_db():
    return load_database()


# ---------------------------------------------------------------- every file of ours validates
#
# At the end of the session every JSON document of ours that the tests wrote (under this
# session's base temporary folder) is checked against its shipped schema, and the lines
# of a run's history.jsonl against ``history-step``: a writer that drifts from its schema
# fails the suite even where no test reads that file back.  Tests that leave broken files
# on purpose (to see them refused) are marked ``writes_invalid_files``: their tmp_path is
# skipped.

#: tmp_path folders of the tests marked ``writes_invalid_files`` in this session.
_EXEMPT: Set[Path] = set()


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "writes_invalid_files: the test leaves deliberately broken files of ours in "
                   "its tmp_path; the end-of-session schema check skips that folder")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item) -> None:
    if item.get_closest_marker("writes_invalid_files") and "tmp_path" in item.funcargs:
        _EXEMPT.add(Path(item.funcargs["tmp_path"]))


def invalid_files(root: Path, exempt: Iterable[Path] = ()) -> List[str]:
    """One line per document of ours under ``root`` that does not validate: a ``*.json``
    whose field 'schema' is a ``protomodels.`` id (an id without a shipped schema is a
    problem too), and the lines of a ``walker-<i>/history.jsonl`` of a run whose run.json
    is of the version ``history-step`` belongs to (one line per ``_shape``, and the last).
    Anything else (pyhf workspaces, SModelS and Dask files) is skipped unparsed: only
    files holding the text ``"protomodels.`` are read as JSON, so the check stays cheap
    (about a second for the files of the whole suite)."""
    from protomodels.exceptions import FormatError
    from protomodels.schemas import documents, schema_id, validate

    exempt = [Path(p) for p in exempt]
    problems: List[str] = []
    for path in sorted(Path(root).rglob("*.json")):
        if any(path.is_relative_to(folder) for folder in exempt) or not path.is_file():
            continue
        data = path.read_bytes()
        if b'"protomodels.' not in data:
            continue
        try:
            document = json.loads(data)
        except ValueError as error:
            problems.append(f"{path}: not JSON ({error})")
            continue
        found = document.get("schema") if isinstance(document, dict) else None
        if not (isinstance(found, str) and found.startswith("protomodels.")):
            continue
        if found not in documents():
            problems.append(f"{path}: $.schema: {found!r} has no shipped schema")
            continue
        try:
            validate(document, documents()[found], str(path), FormatError)
        except FormatError as error:
            problems.append(str(error))
    for path in sorted(Path(root).rglob("history.jsonl")):
        if any(path.is_relative_to(folder) for folder in exempt) or \
                _schema_of(path.parent.parent / "run.json") != schema_id("run"):
            continue
        lines = path.read_text().splitlines()
        shapes: Set[Tuple[Tuple[str, str], ...]] = set()
        for number, line in enumerate(lines, start=1):
            try:
                step = json.loads(line) if line.strip() else None
                # one line per shape (``_shape``) and the last line:
                # validating each of thousands of lines took seconds; their models are
                # the writer's that checkpoints and hiscores show in full anyway
                shape = _shape(step)
                if step is not None and (shape not in shapes or number == len(lines)):
                    shapes.add(shape)
                    validate(step, "history-step", f"{path}:{number}", FormatError)
            except (ValueError, FormatError) as error:
                problems.append(str(error))
                break  # one line per file is enough
    return problems


def _shape(document: Any) -> Tuple[Tuple[str, str], ...]:
    """The top-level keys of a JSON object with the types of their values (an object's
    value: its keys, e.g. a model's 'masses', 'decays', 'ssm')."""
    if not isinstance(document, dict):
        return (("", type(document).__name__),)
    return tuple(sorted((key, " ".join(sorted(value)) if isinstance(value, dict)
                         else type(value).__name__) for key, value in document.items()))


def _schema_of(path: Path) -> object:
    """The field 'schema' of the JSON object in ``path``; None for no such file or field."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document.get("schema") if isinstance(document, dict) else None


def pytest_sessionfinish(session, exitstatus) -> None:
    """Fail the session (exit status 1, one line per file) when a file the tests wrote
    does not validate; tmp_path_factory's folder is pytest's ``config._tmp_path_factory``."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or getattr(session.config, "workerinput", None) is not None:
        return  # no temporary folders, or a pytest-xdist worker (the controller checks)
    problems = invalid_files(factory.getbasetemp(), _EXEMPT)
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"schema check: {len(problems)} file(s) written by the tests do not "
                 "validate (tests/conftest.py, invalid_files):", *problems]
        if reporter is not None:
            reporter.write("\n")  # the progress line is not ended yet
        for line in lines:
            if reporter is not None:
                reporter.write_line(line, red=True)
            else:
                print(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
