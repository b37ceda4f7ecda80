"""The command line as a user runs it: outputs, exit codes, one-line errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from protomodels import __version__, database
from protomodels.cli import cli
from protomodels.significance import read_significance
from protomodels.xsec import effective_xsecs
from protomodels.slha import write_slha

from . import models
from .conftest import SUBSET


def run(*args, env=None):
    return CliRunner().invoke(cli, list(args), obj={}, env=env)


def test_version_and_help():
    assert __version__ in run("--version").output
    out = run("-h").output
    assert "significance" in out and "database" in out


def test_bad_slha_is_one_line_error(tmp_path):
    path = tmp_path / "broken.slha"
    path.write_text("BLOCK MASS\n 1000022 5.0x\n")
    result = run("significance", str(path))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0]
    assert "BLOCK MASS entry 1000022: the mass is '5.0x', not a number" in lines[0]
    assert "Traceback" not in result.output


def test_missing_database_names_every_way(tmp_path, monkeypatch):
    monkeypatch.setattr(database, "DEFAULT_TARBALL", tmp_path / "none.tar.xz")
    monkeypatch.delenv(database.DATABASE_ENV, raising=False)
    model = models.gluino()
    path = tmp_path / "m.slha"
    write_slha(model, effective_xsecs(model), path)
    result = run("significance", str(path))
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert "--database" in message and database.DATABASE_ENV in message and "none.tar.xz" in message
    result = run("significance", str(path), "--database", str(tmp_path / "nowhere"))
    assert result.exit_code == 1 and "nowhere" in result.stderr


def test_corrupt_tarball(tmp_path, monkeypatch):
    monkeypatch.setenv(database.CACHE_ENV, str(tmp_path / "cache"))
    bad = tmp_path / "smodels-database-9.9.9.tar.xz"
    bad.write_bytes(b"this is not an archive")
    result = run("database", "info", "--database", str(bad))
    assert result.exit_code == 1
    assert str(bad) in result.stderr and "cannot unpack" in result.stderr


def test_hidden_paths_are_refused(tmp_path):
    hidden = tmp_path / ".cache" / "db"
    hidden.mkdir(parents=True)
    (hidden / "version").write_text("3.0.0\n")
    result = run("database", "info", "--database", str(hidden))
    assert result.exit_code == 1 and "hidden folder '.cache'" in result.stderr


def test_significance_json_and_text(subset_dir, subset_db, tmp_path):
    model = models.gluino()
    path = tmp_path / "gluino.slha"
    write_slha(model, effective_xsecs(model), path)
    out = tmp_path / "out.json"
    result = run("significance", str(path), "--json", "--database", str(subset_dir),
                 "--output-file", str(out))
    assert result.exit_code == 0, result.output
    report = read_significance(out)  # checked against its schema
    assert report["schema"] == "protomodels.significance/1"
    assert report["n_predictions"] > 0 and len(report["top_r"]) <= 10
    assert report["K"] == pytest.approx(report["TL"] + report["prior"]["two_ln_prior"])
    assert sum(m["tl"] for m in report["combination"]) == pytest.approx(report["TL"])
    assert report["r_max"] == max(p["r_obs"] for p in report["top_r"])
    # options reach the pipeline: only 8 TeV results, and a pattern
    result = run("significance", str(path), "--json", "--database", str(subset_dir),
                 "--sqrts", "8")
    assert result.exit_code == 0, result.output
    assert all(p["sqrts_tev"] == 8 for p in json.loads(result.stdout)["top_r"])
    result = run("significance", str(path), "--database", str(subset_dir),
                 "--analyses", "ATLAS-SUSY-2016-07*", "--r-limit", "1.3")
    assert result.exit_code == 0, result.output
    assert "K      =" in result.stdout and "CMS-" not in result.stdout


def test_database_info_on_subset(subset_dir, subset_db):
    result = run("database", "info", "--database", str(subset_dir), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["results"] == len(SUBSET)
    assert report["failed_to_load"] == []
    assert set(report["combinable"]) == {"ATLAS-SUSY-2018-31", "CMS-SUS-21-002"}
    assert report["counts"]["sqrts_tev"] == {"8": 2, "13": 8}
    # INFO is the default (what was loaded, progress); -q keeps warnings only
    assert "loaded in" in result.stderr and result.stderr.startswith("INFO protomodels.")
    quiet = run("-q", "database", "info", "--database", str(subset_dir), "--json")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert json.loads(quiet.stdout)["results"] == len(SUBSET)


def test_corrupt_binary_database(tmp_path):
    bad = tmp_path / "db.pcl"
    bad.write_text("garbage\n")
    result = run("database", "info", "--database", str(bad))
    assert result.exit_code == 1 and str(bad) in result.stderr and "corrupt" in result.stderr


def test_concurrent_first_use_builds_once(subset_dir, tmp_path):
    """Two processes unpack and build the same tarball into one fresh cache at once."""
    import os
    import subprocess
    import sys
    import tarfile

    tarball = tmp_path / "subset.tar.gz"
    with tarfile.open(tarball, "w:gz", compresslevel=1) as archive:
        archive.add(subset_dir, arcname="smodels-subset")
    env = dict(os.environ, PROTOMODELS_CACHE=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "protomodels.cli", "database", "info", "--json",
               "--database", str(tarball)]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert json.loads(out)["results"] == len(SUBSET)
    builds = sum(err.count("building the SModelS binary database") for _, err in outputs)
    assert builds == 1
    assert len(list((tmp_path / "cache").glob("*/smodels-*.pcl"))) == 1
    # the build reports each analysis parsed (every tenth of them in a pipe: here each),
    # as plain log lines with the time left
    err = next(err for _, err in outputs if "building the SModelS" in err)
    parsed = [line for line in err.splitlines() if "database build: results parsed:" in line]
    assert [line.split("parsed: ")[1].split(" ")[0] for line in parsed] == \
        [f"{k}/{len(SUBSET)}" for k in range(1, len(SUBSET) + 1)]
    assert "left" in parsed[0] and "\x1b[" not in err


def test_walk_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "run.toml"
    bad.write_text('walkers = 2\nstep = 10\n')
    result = run("walk", "--config", str(bad), "--out", str(tmp_path / "r"))
    assert result.exit_code == 1 and "run.toml: $: Additional properties are not allowed ('step'" in result.stderr
    bad.write_text('walkers = "two"\n')
    result = run("walk", "--config", str(bad), "--out", str(tmp_path / "r"))
    assert result.exit_code == 1 and "run.toml: $.walkers: 'two' is not of type 'integer'" in result.stderr
    bad.write_text('walkers = 0\n')  # was accepted before the configuration had one schema
    result = run("walk", "--config", str(bad), "--out", str(tmp_path / "r"))
    assert result.exit_code == 1 and "$.walkers: 0 is less than the minimum of 1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_screen_schedule_errors(tmp_path):
    result = run("walk", "--screen-train-at", "100,x", "--out", str(tmp_path / "r"))
    assert result.exit_code == 2 and "--screen-train-at '100,x': expected step numbers >= 1" in result.stderr
    bad = tmp_path / "run.toml"
    bad.write_text('screen_train_at = [0, 100]\n')
    result = run("walk", "--config", str(bad), "--out", str(tmp_path / "r"))
    assert result.exit_code == 1 and "$.screen_train_at[0]: 0 is less than the minimum of 1" in result.stderr
    assert not (tmp_path / "r").exists()


def test_resume_names_the_screen_flag_the_user_typed(tmp_path):
    (tmp_path / "r").mkdir()
    result = run("walk", "--resume", str(tmp_path / "r"), "--steps", "5", "--screen",
                 "--analyses", "CMS-*")
    assert result.exit_code == 2 and "--analyses, --screen: a resumed run keeps" in result.stderr


def test_resume_refuses_settings_it_would_ignore(tmp_path):
    """A resumed run keeps run.json's settings: a flag that would change them is an error,
    before anything runs (it used to be dropped silently)."""
    (tmp_path / "r").mkdir()
    result = run("walk", "--resume", str(tmp_path / "r"), "--steps", "5", "--seed", "3",
                 "--ladder", "1")
    assert result.exit_code == 2
    assert "--ladder, --seed: a resumed run keeps the settings in" in result.stderr
    assert not (tmp_path / "r" / "run.json").exists()


def test_hiscores_and_show_of_a_run(tmp_path, subset_dir, subset_db):
    from protomodels.runs import WalkConfig, walk

    from .test_runs import fake_factory
    out = tmp_path / "run"
    walk(WalkConfig(out=str(out), ladder=[1.0], walkers=2, steps=15, seed=3), score_factory=fake_factory)
    result = run("hiscores", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].split()[0] == "1"
    slha = tmp_path / "best.slha"
    result = run("show", str(out), "--rank", "1", "--slha", str(slha), "--database", str(subset_dir))
    assert result.exit_code == 0, result.output
    assert "masses:" in result.stdout and "K      =" in result.stdout
    from protomodels.slha import read_slha
    assert read_slha(slha).masses
    result = run("show", str(out), "--rank", "99", "--database", str(subset_dir))
    assert result.exit_code == 1 and "no hiscore of rank 99" in result.stderr


@pytest.mark.parametrize("flags, level", [((), "INFO"), (("-v",), "DEBUG"), (("-vv",), "DEBUG"),
                                          (("-vvv",), "DEBUG"), (("-q",), "WARNING")])
def test_verbosity_sets_the_protomodels_level(flags, level, monkeypatch):
    """-vv used to set level 0 (NOTSET): the logger then took the root's WARNING and
    debug and info records vanished."""
    import logging
    root = logging.getLogger("protomodels")
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "propagate", root.propagate)
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(logging.getLogger(), "level", logging.WARNING)
    assert run(*flags, "database", "--help").exit_code == 0  # the group callback runs
    assert logging.getLevelName(root.getEffectiveLevel()) == level
