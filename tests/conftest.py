"""Shared fixtures: a small real database (a handful of analyses copied from the
unpacked SModelS 3.0.0 database) for unit tests, the full database for slow tests."""

from __future__ import annotations

import shutil
from pathlib import Path

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
