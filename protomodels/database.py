"""Locate, unpack, build and load the SModelS experimental database.

Zero configuration: without ``--database`` or ``$PROTOMODELS_DATABASE`` the shared
tarball ``../shared/smodels-database-3.0.0.tar.xz`` (beside the repository) is used.
A tarball is unpacked once into the cache (``database/cache/`` of the source checkout,
or ``$PROTOMODELS_CACHE``), our final-state definitions are added as
``databaseParticles.py``, and SModelS' binary database is built once into a temporary
file and renamed into place; a file lock makes concurrent first use safe.  Later loads
read the binary file directly (seconds).  A path may also be an unpacked text database,
a ``.pcl`` binary database or an URL SModelS knows how to fetch.  This module loads real
databases only: ``protomodels.loader.load_database`` is the entry point that also opens
fake ones (``protomodels.fakedb``) and chooses the pyhf results' statistical models
(``protomodels.statistics.workspaces``).

SModelS silently skips every folder whose path has a component starting with a dot,
so a database under e.g. ``~/.cache`` loads zero results: such paths are refused, and
"0 results loaded" is an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np

from .atomic import file_lock, write_json_atomic
from .exceptions import DatabaseError
from .progress import progress_bar
from .statistics.cache import StatisticsCache

logger = logging.getLogger(__name__)

DATABASE_ENV = "PROTOMODELS_DATABASE"
CACHE_ENV = "PROTOMODELS_CACHE"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TARBALL = REPO_ROOT.parent / "shared" / "smodels-database-3.0.0.tar.xz"
PARTICLES_MODULE = Path(__file__).with_name("database_particles.py")
MANIFEST_VERSION = 1


def cache_dir() -> Path:
    """Where unpacked databases and binary files live; never under a hidden folder."""
    env = os.environ.get(CACHE_ENV)
    if env:
        path = Path(env)
    elif (REPO_ROOT / "database").is_dir() and (REPO_ROOT / "pyproject.toml").is_file():
        path = REPO_ROOT / "database" / "cache"
    else:
        path = Path.home() / "protomodels-cache"
    path = path.resolve()
    _refuse_hidden(path, f"cache folder (set {CACHE_ENV} to another one)")
    return path


def _refuse_hidden(path: Path, what: str) -> None:
    hidden = [part for part in Path(path).resolve().parts if part.startswith(".") and part not in (".", "..")]
    if hidden:
        raise DatabaseError(f"{path}: {what} lies under the hidden folder {hidden[0]!r}; "
                            "SModelS skips such paths and would load zero results")


def locate(path: Optional[str] = None) -> str:
    """The database to use: ``path``, else $PROTOMODELS_DATABASE, else the shared tarball."""
    if path:
        return str(path)
    env = os.environ.get(DATABASE_ENV)
    if env:
        return env
    if DEFAULT_TARBALL.is_file():
        return str(DEFAULT_TARBALL)
    raise DatabaseError(
        "no SModelS database found: pass --database PATH (a tarball, an unpacked text "
        f"database, a .pcl file or an URL), or set ${DATABASE_ENV}, or put the tarball at "
        f"{DEFAULT_TARBALL}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _smodels_version() -> str:
    from smodels import installation
    return installation.version()


def _unpack(tarball: Path, digest: str) -> Path:
    """Unpack once into the cache; return the text database folder."""
    stem = tarball.name.split(".tar")[0]
    target = cache_dir() / f"{stem}-{digest[:12]}"
    text_dir = target / "text"
    with file_lock(cache_dir() / f"{target.name}.lock"):
        if not (text_dir / "version").is_file():
            logger.info("unpacking %s into %s", tarball, target)
            tmp = Path(tempfile.mkdtemp(prefix=f"unpack-{target.name}-", dir=cache_dir()))
            try:
                with tarfile.open(tarball) as archive:
                    archive.extractall(tmp, filter="data")
                tops = [p for p in tmp.iterdir() if p.is_dir()]
                root = tops[0] if len(tops) == 1 and not (tmp / "version").exists() else tmp
                if not (root / "version").is_file():
                    raise DatabaseError(f"{tarball}: not an SModelS database (no 'version' file)")
                target.mkdir(parents=True, exist_ok=True)
                if text_dir.exists():
                    shutil.rmtree(text_dir)
                os.replace(root, text_dir)
            except (tarfile.TarError, OSError, EOFError) as error:
                raise DatabaseError(f"{tarball}: cannot unpack ({error})") from None
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return text_dir


def _install_particles(text_dir: Path) -> None:
    """Add our final states where the database has none (the shared tarball lacks them)."""
    target = text_dir / "databaseParticles.py"
    if not target.exists():
        logger.info("adding protomodels' final states as %s", target)
        shutil.copyfile(PARTICLES_MODULE, target)


def _result_folders(text_dir: Path) -> Dict[str, str]:
    """Every result folder of a text database (id -> folder), as SModelS would see them."""
    found: Dict[str, str] = {}
    for info in sorted(text_dir.rglob("globalInfo.txt")):
        if any(part.startswith(".") for part in info.relative_to(text_dir).parts):
            continue
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("id:"):
                folder = str(info.parent.relative_to(text_dir))
                found[folder] = line.split(":", 1)[1].strip()
                break
    return found


def _build_binary(text_dir: Path, pcl: Path, source: str, digest: str) -> None:
    """Parse the text database once and write the binary file and its manifest atomically."""
    from smodels.experiment.databaseObj import Database

    with file_lock(pcl.with_suffix(".lock")):
        if pcl.is_file() and pcl.with_suffix(".json").is_file():
            return
        _install_particles(text_dir)
        logger.info("building the SModelS binary database from %s; this takes several "
                    "minutes, once", text_dir)
        t0 = time.perf_counter()
        folders = _result_folders(text_dir)
        with progress_bar(len(folders), "database build: results parsed") as advance, \
                _counting_results(advance), _quiet_smodels():
            db = Database(str(text_dir), force_load="txt")
        loaded = {(str(Path(er.path).resolve().relative_to(text_dir.resolve()))
                   if getattr(er, "path", None) else er.globalInfo.id)
                  for er in db.expResultList}
        failed = sorted(f for f in folders if f not in loaded)
        if not db.expResultList:
            raise DatabaseError(f"{text_dir}: SModelS loaded 0 results")
        fd, tmp = tempfile.mkstemp(dir=pcl.parent, prefix=f".{pcl.name}.", suffix=".tmp")
        os.close(fd)
        try:
            db.subs[0].createBinaryFile(tmp)
            os.replace(tmp, pcl)
        finally:
            Path(tmp).unlink(missing_ok=True)
        manifest = {
            "schema_version": MANIFEST_VERSION,
            "source": source,
            "sha256": digest,
            "database_version": db.databaseVersion,
            "smodels_version": _smodels_version(),
            "build_seconds": round(time.perf_counter() - t0, 1),
            "result_folders": len(folders),
            "results_loaded": len(db.expResultList),
            "failed_folders": failed,
        }
        write_json_atomic(pcl.with_suffix(".json"), manifest)
        logger.info("built %s in %.0f s: %d results", pcl, manifest["build_seconds"],
                    manifest["results_loaded"])


@contextlib.contextmanager
def _counting_results(advance: Callable[[], None]) -> Iterator[None]:
    """Call ``advance()`` after each result folder SModelS parses, while the block runs.

    SModelS 3.1 has no progress hook of its own (only a bar of the optional package
    python-progressbar, which logs cannot use): ``SubDatabase._loadExpResults`` parses the
    folders one ``SubDatabase.createExpResult(root)`` call each, so that method is wrapped
    here and restored on exit.  A build holds the database's file lock, and nothing else
    in the process parses a text database meanwhile."""
    from smodels.experiment.databaseObj import SubDatabase

    original = SubDatabase.createExpResult

    def create(self, root):
        try:
            return original(self, root)
        finally:
            advance()

    SubDatabase.createExpResult = create
    try:
        yield
    finally:
        SubDatabase.createExpResult = original


@contextlib.contextmanager
def _quiet_smodels() -> Iterator[None]:
    """SModelS logs one warning per unknown tag while parsing; keep our stderr readable."""
    from smodels.base.smodelsLogging import logger as smodels_logger
    level = smodels_logger.level
    smodels_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        smodels_logger.setLevel(level)


@dataclass
class ExperimentalDatabase:
    """A loaded SModelS database and what we know about where it came from."""

    smodels: Any
    path: str
    source: str
    sha256: str
    load_seconds: float
    manifest: Dict[str, Any] = field(default_factory=dict)
    fake: Optional[Dict[str, Any]] = None  # what a fake database is (see ``fakedb``)
    statistics: StatisticsCache = field(default_factory=StatisticsCache, repr=False)
    likelihood: Optional[str] = None  # "full" or "simplified" once chosen (``statistics.workspaces``)
    likelihoods: Dict[str, Any] = field(default_factory=dict, repr=False)  # per pyhf result

    @property
    def version(self) -> str:
        return str(self.smodels.databaseVersion)

    @property
    def results(self) -> List[Any]:
        return list(self.smodels.expResultList)


def binary_path(source: str) -> tuple[Path, Path, str]:
    """(text folder, binary file, sha256 or '') for a tarball or text database source."""
    path = Path(source).expanduser()
    if path.is_file() and ".tar" in path.name:
        digest = _sha256(path)
        text_dir = _unpack(path, digest)
        pcl = text_dir.parent / f"smodels-{_smodels_version()}.pcl"
        return text_dir, pcl, digest
    if path.is_dir():
        _refuse_hidden(path, "database")
        if not (path / "version").is_file():
            raise DatabaseError(f"{path}: not an SModelS text database (no 'version' file)")
        # SModelS writes its binary file into the database folder: so do we.
        return path.resolve(), path.resolve() / f"protomodels-smodels-{_smodels_version()}.pcl", ""
    raise DatabaseError(f"{source}: no such database (expected a .tar.xz tarball, an unpacked "
                        "text database folder, a .pcl file or an URL)")


def load(path: Optional[str] = None) -> ExperimentalDatabase:
    """Load the real database located by ``locate(path)``, building its binary file if
    needed, with SModelS' default statistical models (``loader.load_database`` is the
    entry point for commands).  Raises ``DatabaseError`` naming the path."""
    from smodels.experiment.databaseObj import Database

    source = locate(path)
    t0 = time.perf_counter()
    manifest: Dict[str, Any] = {}
    digest = ""
    if source.startswith(("http://", "https://", "ftp://")):
        pcl_source = source
    elif source.endswith(".pcl"):
        if not Path(source).is_file():
            raise DatabaseError(f"{source}: no such binary database")
        _refuse_hidden(Path(source).parent, "database")
        pcl_source = source
    else:
        text_dir, pcl, digest = binary_path(source)
        _build_binary(text_dir, pcl, source, digest)
        manifest = json.loads(pcl.with_suffix(".json").read_text())
        pcl_source = str(pcl)
    from .overrides import apply_overrides, fast_sms_dictionary
    fast_sms_dictionary()  # used while SModelS makes the database object
    try:
        with _quiet_smodels():
            db = Database(pcl_source)
    except SystemExit:  # SModelS calls sys.exit() on some load errors
        raise DatabaseError(f"{pcl_source}: SModelS could not load this database") from None
    except Exception as error:
        raise DatabaseError(f"{pcl_source}: cannot load ({type(error).__name__}: {error})") from None
    if not db.expResultList:
        raise DatabaseError(f"{pcl_source}: 0 results loaded (a corrupt or empty binary "
                            "database, or a path with a hidden folder)")
    apply_overrides(db)
    seconds = time.perf_counter() - t0
    logger.info("database %s loaded in %.1f s: %d results", pcl_source, seconds,
                len(db.expResultList))
    return ExperimentalDatabase(smodels=db, path=pcl_source, source=source, sha256=digest,
                                load_seconds=seconds, manifest=manifest)


def describe(db: ExperimentalDatabase, check_combined: bool = False) -> Dict[str, Any]:
    """Counts by experiment, energy and type, load failures, and optionally a health check
    of every combined result's statistical model."""
    from .combiner import base_id

    results = db.results
    counts: Dict[str, Dict[str, int]] = {"experiment": {}, "sqrts_tev": {}, "type": {}}

    def bump(kind: str, key: str) -> None:
        counts[kind][key] = counts[kind].get(key, 0) + 1

    combinable, superseded = [], []
    for er in results:
        info = er.globalInfo
        bump("experiment", "CMS" if "CMS" in info.id else "ATLAS")
        bump("sqrts_tev", str(int(round(info.sqrts.asNumber()))))
        bump("type", "UL" if er.datasets[0].getType() == "upperLimit" else "EM")
        if er.hasCovarianceMatrix() or er.hasJsonFile():
            combinable.append(info.id)
        if hasattr(info, "supersededBy"):
            superseded.append(info.id)
    report: Dict[str, Any] = {
        "path": db.path,
        "source": db.source,
        "sha256": db.sha256,
        "version": db.version,
        "smodels_version": _smodels_version(),
        "load_seconds": round(db.load_seconds, 2),
        "results": len(results),
        "publications": len({base_id(er.globalInfo.id) for er in results
                             if not hasattr(er.globalInfo, "supersededBy")}),
        "publications_with_superseded": len({base_id(er.globalInfo.id) for er in results}),
        "counts": counts,
        "combinable": sorted(combinable),
        "superseded": sorted(superseded),
        "failed_to_load": db.manifest.get("failed_folders", []),
        "overrides": overrides_applied(db),
        "fake": db.fake,
        "likelihood": db.likelihood,
        "workspaces": {name: chosen.describe() for name, chosen in sorted(db.likelihoods.items())},
    }
    if check_combined:
        report["combined_check"] = check_combined_results(db)
    return report


def overrides_applied(db: ExperimentalDatabase) -> List[str]:
    from .overrides import applied
    return applied(db.smodels)


def check_combined_results(db: ExperimentalDatabase) -> Dict[str, str]:
    """Evaluate each combined result's likelihood at mu = 0 and 1, with a signal of a few
    events in every signal region: 'ok', or the reason it cannot combine.

    Every workspace of a pyhf result is evaluated on its own (SModelS would first rank
    them by expected limits, which costs minutes for the large ones and checks nothing
    more).
    """
    from smodels.experiment.datasetObj import CombinedDataSet
    from smodels.statistics.basicStats import observed
    from smodels.statistics.statsTools import getStatsComputerModule

    computers = getStatsComputerModule()
    signal = 2.0  # events per signal region
    status: Dict[str, str] = {}
    for er in db.results:
        if not (er.hasCovarianceMatrix() or er.hasJsonFile()):
            continue
        t0 = time.perf_counter()
        try:
            dataset = CombinedDataSet(er)
            if er.hasCovarianceMatrix():
                order = er.globalInfo.datasetOrder
                computer = computers.forMultiBinSL(dataset=dataset, nsig=[signal] * len(order),
                                                   deltas_rel=0.2)
                values = [computer.likelihood(poi_test=mu, evaluationType=observed,
                                              return_nll=True) for mu in (0.0, 1.0)]
            else:
                nsig = {ds.getID(): signal for ds in dataset.origdatasets}
                pyhf = computers.forPyhf(dataset=dataset, nsig=nsig, deltas_rel=0.2).likelihoodComputer
                values = [pyhf.likelihood(mu=mu, workspace_index=index, return_nll=True)
                          for index in range(pyhf.nWS) for mu in (0.0, 1.0)]
            if any(v is None or not np.isfinite(v) for v in values):
                raise ValueError(f"likelihood values {values}")
            status[er.globalInfo.id] = "ok"
            logger.info("%s: combined likelihood ok (%.1f s)", er.globalInfo.id,
                        time.perf_counter() - t0)
        except Exception as error:
            status[er.globalInfo.id] = f"{type(error).__name__}: {error}"
    return status


def format_description(report: Dict[str, Any]) -> str:
    lines = [
        f"database {report['version']} at {report['path']}",
        f"  source {report['source']}" + (f" (sha256 {report['sha256'][:16]}...)" if report["sha256"] else ""),
        f"  SModelS {report['smodels_version']}, loaded in {report['load_seconds']} s",
        f"  {report['results']} results from {report['publications_with_superseded']} publications, "
        f"{report['publications']} of them not superseded",
    ]
    for kind, values in report["counts"].items():
        lines.append(f"  by {kind}: " + ", ".join(f"{k} {v}" for k, v in sorted(values.items())))
    if report.get("fake"):
        fake = report["fake"]
        lines.append(f"  FAKE database {fake['record']}: seed {fake['seed']}, noise {fake['noise']}, "
                     f"fudge {fake['fudge']}" + (f", injected {fake['injected']}" if fake["injected"] else "")
                     + f", base sha256 {str(fake['base_sha256'])[:16]}...")
    lines.append(f"  combined (covariance or pyhf): {len(report['combinable'])}")
    if report.get("workspaces"):
        lines.append(f"  pyhf workspaces ({report['likelihood']} likelihood):")
        for name, what in report["workspaces"].items():
            lines.append(f"    {name:<30} {what}")
    lines.append(f"  superseded (not used by default): {len(report['superseded'])}")
    if report["overrides"]:
        lines.append("  project overrides: " + ", ".join(report["overrides"]))
    failed = report["failed_to_load"]
    lines.append(f"  failed to load: {len(failed)}" + ("".join(f"\n    {f}" for f in failed)))
    if "combined_check" in report:
        lines.append("  combined results check:")
        for ana, state in sorted(report["combined_check"].items()):
            lines.append(f"    {ana:<30} {state}")
    return "\n".join(lines) + "\n"
