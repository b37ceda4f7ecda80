"""Training data of the workspace surrogates (issue 14): profiled log-likelihood ratios of
full pyhf workspaces for many signals, computed once, kept in the cache, resumable.

For a signal n = (n_1 .. n_N) (events per signal-region bin) and a data set D, the target
is the profiled log-likelihood ratio of the SModelS collaboration's surrogate study

    Delta_D(n) = ln[ L(D | n; theta-hat-hat(n)) / L(D | 0; theta-hat-hat(0)) ]

with every nuisance parameter profiled, the signal strength mu fixed at 1 and the result's
signal uncertainty (SModelS' ``signalUncertainty`` histosys) included; the workspace is
``fixed_signal.SignalAsParameters``, so with pyhf's jax backend the model compiles once.
Four data sets (``DATASETS``): the observed data; the a-priori expected data (the
background yields, as SModelS' ``r_exp`` uses); and the Asimov data of the
background-only fit to each (pyhf's ``generate_asimov_data`` at mu = 0), from which the
asymptotic CLs limits follow (Cowan, Cranmer, Gross, Vitells, arXiv:1007.1727).  One
sample costs four fixed-mu fits; Delta_D(0) = 0 by construction.

Signals (``draw_signal``): a sample's shape is one of the result's efficiency maps at a
grid point (the yields a walker produces, ``validation.validation_signals``), a mixture of
two of them, or a Dirichlet draw over all bins (the wider envelope), with a log-normal
jitter per bin; its size is set so that a rough sensitivity sum_i n_i^2 / (d_i + 1)
(d_i the observed count) is log-uniform in ``Q_RANGE``, from signals far below the
limit to well beyond it.  Sample i of a seed is a pure function of (seed, i): chunks of
``CHUNK`` samples are independent tasks (``--cluster``), each written atomically once, so
a killed job resumes where it stopped and the same seed gives the same data.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..atomic import read_json_record, write_json_atomic
from ..exceptions import WorkspaceError
from ..schemas import schema_id

logger = logging.getLogger(__name__)

SCHEMA = schema_id("surrogate-data")
BASELINE_SCHEMA = schema_id("surrogate-baseline")
DATASETS = ("observed", "expected", "observed_asimov", "expected_asimov")
CHUNK = 25  # samples per task and file
Q_RANGE = (0.01, 60.0)  # rough sensitivity sum n^2/(d+1) of the signals, log-uniform
SHAPE_KINDS = (0.6, 0.2, 0.2)  # map shape, mixture of two, Dirichlet
JITTER = 0.3  # sigma of the per-bin log-normal jitter
HOLDOUT_OFFSET = 1_000_003  # the held-out signals' seed is the training seed plus this


@dataclass(frozen=True)
class WorkspaceSource:
    """One full workspace of a pyhf result: where it is and what identifies it."""

    analysis: str
    file_name: str
    path: Path
    sha256: str
    signal_regions: Tuple[str, ...] = ()  # SModelS names of its signal regions

    @property
    def key(self) -> str:
        """Folder name in the cache: file stem and the first 16 hex digits of its sha256."""
        return f"{Path(self.file_name).stem}-{self.sha256[:16]}"


def full_workspaces(expresult) -> List[WorkspaceSource]:
    """The full workspaces of a pyhf result: ``jsonFiles_FullLikelihood`` where the
    database has it, else the result's own files that are full workspaces."""
    from . import simplified
    from .workspaces import _DEFAULT, file_map

    info = expresult.globalInfo
    folder = Path(getattr(info, "path", "") or ".").parent
    if hasattr(info, "jsonFiles_FullLikelihood"):
        mapping = file_map(info.jsonFiles_FullLikelihood)
    else:
        files, jsons = getattr(info, _DEFAULT, (info.jsonFiles, info.jsons))
        mapping = {name: files[name] for name, ws in zip(files, jsons) if simplified.is_full(ws)}
    out = []
    for name, regions in mapping.items():
        path = folder / name
        if path.is_file():
            srs = tuple(r["smodels"] for r in regions
                        if r.get("smodels") and r.get("type", "SR") == "SR")
            out.append(WorkspaceSource(info.id, name, path, simplified.sha256_file(path), srs))
    return out


def find_workspace(db, analysis: str, file_name: Optional[str] = None):
    """(expresult, WorkspaceSource) of ``analysis``'s full workspace ``file_name`` (the
    first one when None).  Raises ``WorkspaceError`` naming what is missing."""
    matches = [e for e in db.smodels.expResultList
               if e.globalInfo.id == analysis and hasattr(e.globalInfo, "jsonFiles")]
    if not matches:
        raise WorkspaceError(f"surrogate: analysis {analysis!r} is not in the database")
    sources = full_workspaces(matches[0])
    if not sources:
        raise WorkspaceError(f"surrogate: {analysis} has no full pyhf workspace")
    if file_name is None:
        return matches[0], sources[0]
    for source in sources:
        if file_name in (source.file_name, Path(source.file_name).stem):
            return matches[0], source
    raise WorkspaceError(f"surrogate: {analysis} has no full workspace {file_name!r}; it has "
                         f"{', '.join(s.file_name for s in sources)}")


def regions_of(expresult, source: WorkspaceSource) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """(region list, workspace dict) of a full workspace as SModelS uses it: the database
    must be loaded with the full likelihood (``use_likelihood(db, "full")``), whose region
    lists are repaired for order matching (``overrides.restore_order_matching``).
    Raises ``WorkspaceError`` otherwise."""
    from .workspaces import FULL, choice

    info = expresult.globalInfo
    files = list(info.jsonFiles)
    chosen = choice(expresult)
    # a simplified workspace of ours keeps the full one's file name: ask what it is
    if source.file_name not in files or (
            chosen is not None and source.file_name in chosen.files
            and chosen.kinds[chosen.files.index(source.file_name)] != FULL):
        raise WorkspaceError(f"{info.id}: {source.file_name} is not in use as the full "
                             "workspace; load the database with the full likelihood")
    index = files.index(source.file_name)
    return info.jsonFiles[source.file_name], info.jsons[index]


def folder(source: WorkspaceSource) -> Path:
    """The cache folder of a workspace's surrogate: data chunks, network and sidecar."""
    from ..database import cache_dir

    return cache_dir() / "surrogates" / source.analysis / source.key


class Generator:
    """Computes Delta_D(n) for the four data sets on one full workspace (module docstring).

    ``bins``: the input order, SModelS region names per signal-region bin;
    ``observed_counts``: the observed events of those bins (for the signals' sizes).
    """

    def __init__(self, expresult, source: WorkspaceSource):
        import pyhf

        from .fixed_signal import SHAPEFACTOR_PREFIX, SignalAsParameters

        regions, workspace = regions_of(expresult, source)
        self.source = source
        self.fit = SignalAsParameters(expresult.globalInfo, source.file_name, workspace, regions)
        self.bins: List[str] = [r for regions in self.fit.bins.values() for r in regions]
        observations = {o["name"]: o["data"] for o in self.fit.workspace["observations"]}
        counts = []
        for name, regions in self.fit.bins.items():
            data = observations[name[len(SHAPEFACTOR_PREFIX):]]
            counts.extend(float(x) for x in data[:len(regions)])
        self.observed_counts = np.asarray(counts)
        model = self.fit.model
        init, bounds = self.fit.parameters({})
        self.data = {"observed": self.fit.observed_data, "expected": self.fit.expected_data}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in ("observed", "expected"):
                self.data[f"{name}_asimov"] = pyhf.infer.calculators.generate_asimov_data(
                    0.0, self.data[name], model, init, bounds, self.fit.fixed)
        self.reference = {name: self._twice_nll(0.0, {}, name) for name in DATASETS}

    def _twice_nll(self, mu: float, signal: Dict[str, float], dataset: str) -> float:
        import pyhf

        init, bounds = self.fit.parameters(signal)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, value = pyhf.infer.mle.fixed_poi_fit(mu, self.data[dataset], self.fit.model,
                                                    init_pars=init, par_bounds=bounds,
                                                    fixed_params=self.fit.fixed,
                                                    return_fitted_val=True)
        return float(np.ravel(value)[0])

    def deltas(self, signal: Sequence[float]) -> List[float]:
        """Delta_D(n) for ``DATASETS`` of one signal (events per bin, in ``bins`` order);
        NaN where a fit fails."""
        named = {region: float(v) for region, v in zip(self.bins, signal)}
        out = []
        for name in DATASETS:
            try:
                out.append(0.5 * (self.reference[name] - self._twice_nll(1.0, named, name)))
            except Exception as error:  # a failed fit: the sample is dropped in training
                logger.debug("%s: fit failed (%s)", self.source.file_name, error)
                out.append(float("nan"))
        return out


def map_shapes(expresult, bins: Sequence[str], count: int = 4000) -> np.ndarray:
    """Signal shapes (rows sum to 1, ``bins`` order) from the result's efficiency maps."""
    from .validation import validation_signals

    signals = validation_signals(expresult, list(bins), count, seed=0)
    shapes = np.array([[s.get(b, 0.0) for b in bins] for s in signals], dtype=float)
    shapes = shapes[shapes.sum(axis=1) > 0]
    return shapes / shapes.sum(axis=1, keepdims=True)


def draw_signal(rng: np.random.Generator, shapes: np.ndarray,
                observed_counts: np.ndarray) -> np.ndarray:
    """One training signal (events per bin; module docstring)."""
    nbins = len(observed_counts)
    kind = rng.choice(3, p=SHAPE_KINDS)
    if kind == 0 and len(shapes):
        shape = shapes[rng.integers(len(shapes))]
    elif kind == 1 and len(shapes):
        w = rng.uniform()
        shape = w * shapes[rng.integers(len(shapes))] + (1 - w) * shapes[rng.integers(len(shapes))]
    else:
        shape = rng.dirichlet(np.full(nbins, 0.5))
    shape = shape * np.exp(JITTER * rng.standard_normal(nbins))
    q_unit = float(np.sum(shape ** 2 / (observed_counts + 1.0)))
    q = float(np.exp(rng.uniform(np.log(Q_RANGE[0]), np.log(Q_RANGE[1]))))
    return shape * np.sqrt(q / q_unit)


def chunk_path(source: WorkspaceSource, split: str, seed: int, index: int) -> Path:
    return folder(source) / split / f"seed{seed}-{index:05d}.json"


def make_chunk(expresult, source: WorkspaceSource, split: str, seed: int, index: int,
               generator: Optional[Generator] = None,
               shapes: Optional[np.ndarray] = None) -> Path:
    """Compute and write chunk ``index`` (samples index*CHUNK ...) of a split; a chunk
    already written is kept.  Returns its path."""
    path = chunk_path(source, split, seed, index)
    if path.is_file():
        return path
    generator = generator or Generator(expresult, source)
    if shapes is None:
        shapes = map_shapes(expresult, generator.bins)
    t0 = time.perf_counter()
    signals, deltas = [], []
    for i in range(index * CHUNK, (index + 1) * CHUNK):
        rng = np.random.default_rng([seed, i])
        signal = draw_signal(rng, shapes, generator.observed_counts)
        signals.append([float(x) for x in signal])
        deltas.append(generator.deltas(signal))
    record = {"schema": SCHEMA, "analysis": source.analysis, "workspace": source.file_name,
              "workspace_sha256": source.sha256, "split": split, "seed": seed,
              "chunk": index, "bins": generator.bins, "datasets": list(DATASETS),
              "signals": signals,
              "deltas": [[None if not np.isfinite(x) else x for x in row] for row in deltas],
              "seconds": round(time.perf_counter() - t0, 3), "versions": versions()}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    return path


def versions() -> Dict[str, str]:
    import pyhf

    return {"pyhf": pyhf.__version__, "backend": type(pyhf.tensorlib).__name__}


def read_split(source: WorkspaceSource, split: str, seed: int, samples: int):
    """(bins, signals (S, N), deltas (S, 4), seconds per sample) of the first ``samples``
    samples of a split; rows with a failed fit dropped.  Raises ``WorkspaceError`` when a
    chunk is missing or belongs to another workspace."""
    chunks = -(-samples // CHUNK)
    signals, deltas, seconds, bins = [], [], [], None
    for index in range(chunks):
        path = chunk_path(source, split, seed, index)
        if not path.is_file():
            raise WorkspaceError(f"{path}: missing; run `protomodels surrogate train "
                                 f"{source.analysis}` (it resumes)")
        record = read_json_record(path, SCHEMA, WorkspaceError, "surrogate training data")
        if record["workspace_sha256"] != source.sha256:
            raise WorkspaceError(f"{path}: field 'workspace_sha256' is "
                                 f"{record.get('workspace_sha256')!r}, not the workspace's "
                                 f"{source.sha256}; delete the folder to regenerate")
        bins = record["bins"]
        signals.extend(record["signals"])
        deltas.extend([[np.nan if x is None else x for x in row] for row in record["deltas"]])
        seconds.append(record["seconds"] / CHUNK)
    signals = np.asarray(signals[:samples], dtype=float)
    deltas = np.asarray(deltas[:samples], dtype=float)
    good = np.all(np.isfinite(deltas), axis=1)
    return bins, signals[good], deltas[good], float(np.mean(seconds)) if seconds else 0.0


# ------------------------------------------------------------------ tasks (Dask or here)

_GENERATORS: Dict[tuple, Any] = {}


def chunk_task(database: Optional[str], analysis: str, file_name: str, split: str, seed: int,
               index: int, backend: str) -> str:
    """One chunk as a task: loads the database and builds the generator once per process
    (jax, when asked, is imported here: after any fork)."""
    from .validation import pyhf_backend

    with pyhf_backend(backend):
        expresult, source, generator, shapes = _generator(database, analysis, file_name, backend)
        return str(make_chunk(expresult, source, split, seed, index, generator, shapes))


def _generator(database: Optional[str], analysis: str, file_name: str, backend: str,
               sha256: Optional[str] = None) -> tuple:
    """(expresult, source, generator, shapes) of a workspace in this process, the database
    loaded and the generator built on first use (under the caller's pyhf backend).
    Raises ``WorkspaceError`` when the workspace found is not the file ``sha256`` names
    (a worker that sees another database than the client)."""
    key = (database, analysis, file_name, backend)
    if key not in _GENERATORS:
        from ..loader import load_database

        db = load_database(database, "full")
        _prepare(key, *find_workspace(db, analysis, file_name))
    entry = _GENERATORS[key]
    if sha256 is not None and entry[1].sha256 != sha256:
        raise WorkspaceError(f"{analysis} {file_name}: this process' database has the "
                             f"workspace with sha256 {entry[1].sha256}, not {sha256}")
    return entry


def _prepare(key: tuple, expresult, source: WorkspaceSource) -> None:
    """The generator and signal shapes of a workspace, built once per process (under the
    caller's pyhf backend)."""
    if key not in _GENERATORS:
        generator = Generator(expresult, source)
        _GENERATORS[key] = (expresult, source, generator, map_shapes(expresult, generator.bins))


def limits_path(source: WorkspaceSource, backend: str) -> Path:
    """Where pyhf's upper limits of held-out signals are kept (one JSON line each)."""
    return folder(source) / f"holdout-limits-{backend}.jsonl"


#: what ``limit_task`` computes, in the key of its records (``validation.signal_key``)
LIMIT_EVALUATOR = "fixed_signal/1 {backend} upper limits"


def limit_keys(expresult, source: WorkspaceSource, signals: Sequence[Dict[str, float]],
               backend: str) -> List[str]:
    """The record key of each signal's reference limits (``validation.signal_key``): the
    workspace with its region mapping, includeCRs and signal uncertainty, the signal
    (region -> events), the backend, pyhf's and SModelS' versions."""
    from .validation import inputs_digest, signal_key

    regions, workspace = regions_of(expresult, source)
    inputs = inputs_digest(expresult.globalInfo, workspace, regions)
    evaluator = LIMIT_EVALUATOR.format(backend=backend)
    return [signal_key(source.analysis, inputs, signal, evaluator) for signal in signals]


def limit_task(database: Optional[str], analysis: str, file_name: str, sha256: str,
               signal: Dict[str, float], backend: str) -> Dict[str, Any]:
    """pyhf's observed and a-priori expected 95% CLs upper limits on mu for one signal
    (region -> events) on the full workspace, SModelS' root search
    (``fixed_signal.SignalAsParameters.upper_limit``); a task: the database and the
    workspace's model are built once per process (jax imported here, after any fork).
    Returns {"obs", "exp" (None where SModelS gives None), "seconds"}.  Raises
    ``WorkspaceError`` when this process' workspace is not the one ``sha256`` names."""
    from .validation import pyhf_backend

    with pyhf_backend(backend):
        generator = _generator(database, analysis, file_name, backend, sha256)[2]
        t0 = time.perf_counter()
        obs = generator.fit.upper_limit(signal, expected=False)
        exp = generator.fit.upper_limit(signal, expected=True)
    return {"obs": obs, "exp": exp, "seconds": round(time.perf_counter() - t0, 2)}


def reference_limits(database: Optional[str], expresult, source: WorkspaceSource,
                     bins: Sequence[str], signals: np.ndarray, backend: str = "jax",
                     cluster: Optional[str] = None, jobs: Optional[int] = None,
                     progress=None) -> List[Dict[str, Any]]:
    """pyhf's limits (``limit_task``) of each signal (shape (S, len(bins)), events per
    bin in ``bins`` order), read from ``limits_path`` where known, else computed here or
    as Dask tasks (``cluster``: as ``walk --cluster``; ``database`` is what the workers
    load) and appended there as each arrives: minutes per signal for ATLAS-SUSY-2018-16,
    so they are kept across retrainings of the network and a killed validation resumes.
    Returns one {"obs", "exp", "seconds"} per signal, in order.  Raises
    ``WorkspaceError`` naming the workspace when limits failed (the others are kept) and
    ``RunError`` when Dask is missing."""
    from ..atomic import append_keyed_line, read_keyed_lines

    path = limits_path(source, backend)
    records = read_keyed_lines(path)
    named = [{region: float(v) for region, v in zip(bins, signal)} for signal in signals]
    keys = limit_keys(expresult, source, named, backend)
    todo = [keys.index(key) for key in dict.fromkeys(keys) if key not in records]
    failures: List[str] = []

    def keep(n: int, i: int, outcome: Dict[str, Any]) -> None:
        record = {"key": keys[i], "outcome": outcome}
        append_keyed_line(path, record)
        records[keys[i]] = record
        if progress:
            progress(n, len(todo))

    args = {i: (database, source.analysis, source.file_name, source.sha256, named[i], backend)
            for i in todo}
    if cluster and todo:
        from ..cluster import tasks

        with tasks(cluster, jobs, limit_task, [args[i] for i in todo]) as batch:
            for n, outcome in enumerate(batch.completed(), 1):
                try:  # a failure is reported after the others are kept
                    keep(n, todo[outcome.index], outcome.value("pyhf limit"))
                except Exception as error:
                    failures.append(str(error))
    elif todo:
        from .validation import pyhf_backend

        with pyhf_backend(backend):  # one backend switch for all signals
            _prepare((database, source.analysis, source.file_name, backend), expresult, source)
            for n, i in enumerate(todo, 1):
                keep(n, i, limit_task(*args[i]))
    if failures:
        raise WorkspaceError(f"{source.analysis} {source.file_name}: {len(failures)} of "
                             f"{len(todo)} pyhf limits failed, e.g. {failures[0]}")
    return [records[key]["outcome"] for key in keys]


def baseline(database: Optional[str], expresult, source: WorkspaceSource, backend: str = "jax"):
    """The Gaussian baseline of a full workspace's surrogate (``surrogate_baseline``): read
    from ``baseline-<backend>.json`` in the surrogate's folder when that was made from
    this workspace (sha256) with this pyhf, else from this process' generator of it (the
    data sets' fits and one background-only fit with MINUIT: minutes for ATLAS-SUSY-2018-16)
    and written there.  Raises ``WorkspaceError`` when a fit fails."""
    import pyhf

    from .surrogate_baseline import GaussianBaseline
    from .validation import pyhf_backend

    path = folder(source) / f"baseline-{backend}.json"
    if path.is_file():
        try:
            record = read_json_record(path, BASELINE_SCHEMA, WorkspaceError, "surrogate baseline")
            if (record["workspace_sha256"], record["pyhf"]) == (source.sha256, pyhf.__version__):
                return GaussianBaseline.from_json(record["baseline"])
            logger.info("%s: made from another workspace or pyhf version; refitting", path)
        except WorkspaceError as error:
            logger.warning("%s; refitting the baseline", error)
    key = (database, source.analysis, source.file_name, backend)
    with pyhf_backend(backend):
        _prepare(key, expresult, source)
    fitted = GaussianBaseline.from_generator(_GENERATORS[key][2], DATASETS)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"schema": BASELINE_SCHEMA, "workspace_sha256": source.sha256,
                             "backend": backend, "pyhf": pyhf.__version__,
                             "baseline": fitted.to_json()})
    return fitted


def generate(database: Optional[str], analysis: str, file_name: Optional[str], samples: int,
             holdout: int, seed: int, backend: str = "jax", cluster: Optional[str] = None,
             jobs: Optional[int] = None, progress=None) -> Dict[str, Any]:
    """Compute the missing chunks of the training and held-out splits of one workspace,
    here (one process) or as Dask tasks (``cluster``: as ``walk --cluster``).  Returns
    {source, chunks computed, seconds, baseline (``surrogate_baseline.GaussianBaseline``)}.
    Resumable: written chunks are kept."""
    from ..loader import load_database

    db = load_database(database, "full")
    expresult, source = find_workspace(db, analysis, file_name)
    wanted = [("train", seed, i) for i in range(-(-samples // CHUNK))]
    wanted += [("holdout", seed + HOLDOUT_OFFSET, i) for i in range(-(-holdout // CHUNK))]
    todo = [w for w in wanted if not chunk_path(source, *w).is_file()]
    fitted = baseline(database, expresult, source, backend)  # fails before hours of fits
    logger.info("%s %s: %d of %d chunks of %d samples to compute", analysis,
                source.file_name, len(todo), len(wanted), CHUNK)
    t0 = time.perf_counter()
    if cluster:
        from ..cluster import tasks

        arguments = [(database, analysis, source.file_name, split, s, i, backend)
                     for split, s, i in todo]
        with tasks(cluster, jobs, chunk_task, arguments) as batch:
            for n, outcome in enumerate(batch.completed(), 1):
                where = chunk_path(source, *todo[outcome.index])  # the task writes it
                outcome.value(f"training data chunk {where}")
                if progress:
                    progress(n, len(todo))
    else:  # chunk_task builds this process' generator unless ``baseline`` above did
        for n, (split, s, i) in enumerate(todo, 1):
            chunk_task(database, analysis, source.file_name, split, s, i, backend)
            if progress:
                progress(n, len(todo))
    seconds = time.perf_counter() - t0
    return {"source": source, "computed": len(todo), "chunks": len(wanted), "seconds": seconds,
            "baseline": fitted}
