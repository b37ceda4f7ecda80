"""Versioned JSON schemas of the project's files (protomodels/schemas): every kind of
file is accepted as its writer writes it, and refused, by the reader the code uses, with
one line naming the file and the JSON path when a field has the wrong type, a required
field is missing, or the file is of an unknown version.

Run-store files come from a real (toy-scored) walk; the other kinds from realistic
examples in tests/data/schemas, trimmed from files the commands wrote (their writers are
exercised by their own tests, whose files the end-of-session check in conftest.py
validates).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Dict, Sequence, Tuple

import pytest

from protomodels import schemas
from protomodels.atomic import read_json_record
from protomodels.exceptions import FormatError, ProtomodelsError, RunError

from .conftest import invalid_files

DATA = Path(__file__).parent / "data" / "schemas"

Path_ = Tuple[Any, ...]  # keys and indices from the document's root


def _generic(name: str) -> Callable[[Path], Dict[str, Any]]:
    """The reader every file of ours goes through (``atomic.read_json_record``)."""
    return lambda path: read_json_record(path, schemas.schema_id(name), FormatError, name)


def _readers() -> Dict[str, Callable[[Path], Dict[str, Any]]]:
    """The code's own reader of each kind that has one (else the generic one)."""
    from protomodels import bench, fakedb, hiscores, significance
    from protomodels.runs import WalkerStore
    from protomodels.scan import read_scan
    from protomodels.tempering import TemperingStore

    return {
        "hiscores": hiscores.read,
        "checkpoint": lambda path: WalkerStore(path.parent).load_checkpoint(),
        "tempering": lambda path: TemperingStore(path.parent).load(None),
        "fakedb": fakedb.read_record,
        "significance": significance.read_significance,
        "bench": bench.read_bench,
        "scan": read_scan,
    }


#: Each kind with a schema id: where its valid example comes from ("walk": the toy run
#: below; else tests/data/schemas/<kind>.json), a field to give the wrong type (and the
#: value), and a field to remove.
CASES: Dict[str, Tuple[str, Path_, Any, Path_]] = {
    "run": ("walk:run.json", ("config", "walkers"), "two", ("segments",)),
    "checkpoint": ("walk:walker-0/checkpoint.json", ("step",), "7", ("record", "K")),
    "hiscores": ("walk:hiscores.json", ("entries", 0, "K"), "high", ("entries", 0, "rank")),
    "tempering": ("walk:tempering.json", ("swapped_through",), 1.5, ("rng", "state")),
    "significance": ("significance.json", ("combination", 0, "tl"), "1.5", ("prior", "particles")),
    "fakedb": ("fakedb.json", ("efficiency_maps", 0, "n_obs"), "many",
               ("upper_limit_maps", 0, "signal_points")),
    "fakes": ("fakes.json", ("fakes", 1, "seeds", "walk"), 1.5, ("fakes", 0, "run")),
    "bench": ("bench.json", ("c_walker_steps", "all", "n"), "six", ("per_model", 0, "b_s")),
    "surrogate": ("surrogate.json", ("domain", "distance_cut"), "far", ("domain", "points")),
    "surrogate-data": ("surrogate-data.json", ("seed",), "3", ("deltas",)),
    "surrogate-baseline": ("surrogate-baseline.json", ("baseline", "positions", 0), "first",
                           ("baseline", "modes")),
    "rescore": ("rescore.json", ("rows", 0, "K"), None, ("rows", 1, "walker")),
    "simplified": ("simplified.json", ("provenance", "fit", "parameters"), "many",
                   ("provenance", "source_sha256")),
    "simplify": ("simplify.json", ("workspaces", 0, "file"), 3, ("workspaces", 1, "kind")),
    "pvalue": ("pvalue.json", ("real", "best_K"), "2.5", ("fakes", 0, "steps_done")),
    "closure": ("closure.json", ("runs", 0, "partners", 0, "found"), "yes",
                ("rates", 0, "interval_68")),
    "posterior": ("posterior.json", ("diagnostics", "K", "reliable"), "no", ("chains", 0, "steps")),
    "scan": ("scan.json", ("points", 0, "K"), "2.1", ("x", "values")),
}


def json_path(keys: Path_) -> str:
    """``("entries", 0, "K")`` -> ``$.entries[0].K``, as ``jsonschema`` writes it."""
    return "$" + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys)


def _parent(document: Any, keys: Sequence[Any]) -> Any:
    for key in keys[:-1]:
        document = document[key]
    return document


@pytest.fixture(scope="module")
def walked(tmp_path_factory) -> Path:
    """A real run of two rungs (the toy score of test_runs: no database), so that run.json,
    checkpoints, hiscores, the swap journal and the histories come from their writers."""
    from protomodels.runs import WalkConfig, walk

    from .test_runs import fake_factory

    out = tmp_path_factory.mktemp("schemas") / "run"
    walk(WalkConfig(out=str(out), ladder=[0.5, 1.0], walkers=2, steps=4, swap_every=2, seed=3,
                    checkpoint_every=2), score_factory=fake_factory)
    return out


def example(name: str, walked: Path) -> Tuple[str, Dict[str, Any]]:
    """(file name, document) of a valid file of kind ``name``."""
    source = CASES[name][0]
    path = walked / source[len("walk:"):] if source.startswith("walk:") else DATA / source
    return path.name, json.loads(path.read_text())


def read_as(name: str, folder: Path, file_name: str, document: Any) -> Dict[str, Any]:
    """Write ``document`` as ``folder/file_name`` and read it with the kind's reader."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name
    path.write_text(json.dumps(document))
    return _readers().get(name, _generic(name))(path)


def refused(name: str, folder: Path, file_name: str, document: Any) -> str:
    """The one-line message with which the kind's reader refuses ``document``."""
    with pytest.raises(ProtomodelsError) as caught:
        read_as(name, folder, file_name, document)
    message = str(caught.value)
    assert "\n" not in message and str(folder / file_name) in message, message
    return message


def test_every_kind_with_a_schema_id_is_tested_here():
    assert set(schemas.documents().values()) == set(CASES)


@pytest.mark.parametrize("name", sorted(schemas.documents().values()))
def test_ids_and_versions_are_spelled_one_way(name):
    """``$id`` urn:protomodels:<name>:<v> pins ``schema`` protomodels.<name>/<v>."""
    version = re.fullmatch(rf"urn:protomodels:{re.escape(name)}:(\d+)", schemas.schema(name)["$id"])
    assert version and schemas.schema_id(name) == f"protomodels.{name}/{version.group(1)}"


@pytest.mark.writes_invalid_files
@pytest.mark.parametrize("name", sorted(CASES))
def test_valid_file_passes_and_broken_ones_name_file_and_path(name, walked, tmp_path):
    file_name, document = example(name, walked)
    assert read_as(name, tmp_path / "valid", file_name, document) is not None
    wrong_path, wrong_value, missing_path = CASES[name][1:]

    wrong = json.loads(json.dumps(document))
    _parent(wrong, wrong_path)[wrong_path[-1]] = wrong_value
    message = refused(name, tmp_path / "wrong", file_name, wrong)
    assert f"{json_path(wrong_path)}: {wrong_value!r} is not of type" in message, message

    missing = json.loads(json.dumps(document))
    del _parent(missing, missing_path)[missing_path[-1]]
    message = refused(name, tmp_path / "missing", file_name, missing)
    assert f"{json_path(missing_path[:-1])}: {missing_path[-1]!r} is a required property" \
        in message, message

    future = dict(document, schema=schemas.schema_id(name).rsplit("/", 1)[0] + "/99")
    message = refused(name, tmp_path / "future", file_name, future)
    assert f"$.schema: {future['schema']!r} is not {schemas.schema_id(name)!r}" in message, message


@pytest.mark.writes_invalid_files
def test_a_file_without_id_or_not_an_object_is_refused_by_name(tmp_path):
    for text, expected in (('{"seed": 1}', "$.schema: missing, expected 'protomodels.fakes/1'"),
                           ('[1, 2]', "$: [1, 2] is not an object"),
                           ('{"schema": "protomodels.fakes/1"', "unreadable fakes")):
        (tmp_path / "fakes.json").write_text(text)
        with pytest.raises(FormatError) as caught:
            _generic("fakes")(tmp_path / "fakes.json")
        assert str(caught.value).startswith(f"{tmp_path / 'fakes.json'}: ")
        assert expected in str(caught.value)


@pytest.mark.writes_invalid_files
def test_history_lines_name_file_line_and_path(walked, tmp_path):
    """history.jsonl has no id of its own: its lines are version 1 of a protomodels.run/1
    run (the run's version says which)."""
    from protomodels.runs import read_history

    lines = (walked / "walker-0" / "history.jsonl").read_text().splitlines()
    second = json.loads(lines[1])
    for change, expected in ((dict(second, K="high"), "$.K: 'high' is not of type 'number'"),
                             ({k: v for k, v in second.items() if k != "accepted"},
                              "$: 'accepted' is a required property")):
        folder = tmp_path / "walker-0"
        folder.mkdir(exist_ok=True)
        (folder / "history.jsonl").write_text("\n".join([lines[0], json.dumps(change)]) + "\n")
        with pytest.raises(RunError) as caught:
            read_history(folder)
        assert str(caught.value) == f"{folder / 'history.jsonl'}:2: {expected}"


@pytest.mark.writes_invalid_files
def test_run_configuration_names_file_and_path(tmp_path):
    """A --config file has no id (the run's run.json versions it): a wrong type and an
    unknown key are refused with the file and JSON path."""
    from protomodels.runs import load_config

    path = tmp_path / "run.toml"
    path.write_text('walkers = 2\nladder = [0.5, 1.0]\nsqrts = [13]\n')
    assert load_config(path)["ladder"] == [0.5, 1.0]
    for text, expected in (('walkers = "two"\n', "$.walkers: 'two' is not of type 'integer'"),
                           ('sqrts = [13, "8"]\n', "$.sqrts[1]: '8' is not of type 'number'"),
                           ('walkerz = 2\n', "$: Additional properties are not allowed ('walkerz'")):
        path.write_text(text)
        with pytest.raises(RunError) as caught:
            load_config(path)
        assert str(caught.value).startswith(f"{path}: {expected}"), str(caught.value)


@pytest.mark.writes_invalid_files
def test_the_session_check_finds_broken_files_of_ours_only(walked, tmp_path):
    """conftest.invalid_files: what the end of every test session checks."""
    import shutil

    shutil.copytree(walked, tmp_path / "run")
    (tmp_path / "workspace.json").write_text('{"channels": [], "version": "1.0.0"}')  # pyhf's
    (tmp_path / "notjson.json").write_text("{ not json, no id")
    assert invalid_files(tmp_path) == []
    (tmp_path / "fakes.json").write_text('{"schema": "protomodels.fakes/1", "seed": 1}')
    (tmp_path / "other.json").write_text('{"schema": "protomodels.nothing/1"}')
    history = tmp_path / "run" / "walker-1" / "history.jsonl"
    history.write_text(history.read_text() + '{"step": "five"}\n')
    problems = invalid_files(tmp_path)
    assert [p.split(": ")[0] for p in problems] == [
        str(tmp_path / "fakes.json"), str(tmp_path / "other.json"),
        f"{history}:{len(history.read_text().splitlines())}"]
    assert "'count' is a required property" in problems[0]
    assert "has no shipped schema" in problems[1]
    assert invalid_files(tmp_path, exempt=[tmp_path]) == []
