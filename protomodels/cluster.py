"""Chains on a Dask cluster: one task per chain and round, the database loaded once per
worker.

``--cluster`` takes the address of a running Dask scheduler (``tcp://host:8786``),
``local`` (a ``LocalCluster`` of single-threaded worker processes on this machine), or a
batch system through dask-jobqueue (``slurm``, ``htcondor``, ``pbs``, ``sge``, ``lsf``;
configured by dask-jobqueue's own ``~/.config/dask/jobqueue.yaml``).  The run directory
and the database must be on a file system that every worker sees.

A task runs its chain *up to an absolute step* (the next swap sweep, or the end) and starts
by resuming from the chain's checkpoint if there is one.  So when a worker dies, Dask re-runs its tasks elsewhere and
they continue from the last checkpoint: at most ``checkpoint_every`` steps are redone,
and, resumes being exact, the histories are those of an uninterrupted run.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .exceptions import ProtomodelsError, RunError
from .runs import ChainSettings, Runner, advance_chain

logger = logging.getLogger(__name__)

JOBQUEUE = {"slurm": "SLURMCluster", "htcondor": "HTCondorCluster", "pbs": "PBSCluster",
            "sge": "SGECluster", "lsf": "LSFCluster"}

_SCORES: Dict[Tuple, Callable] = {}  # per worker process: one loaded database per setting


def connect(spec: str, jobs: Optional[int] = None):
    """(client, things to close) for a ``--cluster`` value."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise RunError("--cluster needs Dask: pip install 'protomodels[cluster]'") from None
    if spec == "local":
        cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                               dashboard_address=":0")
        client = Client(cluster)
        return client, [client, cluster]
    if spec in JOBQUEUE:
        try:
            import dask_jobqueue
        except ImportError:
            raise RunError(f"--cluster {spec} needs dask-jobqueue: pip install "
                           "'protomodels[cluster]' dask-jobqueue") from None
        cluster = getattr(dask_jobqueue, JOBQUEUE[spec])()
        cluster.scale(jobs=jobs or 1)
        client = Client(cluster)
        return client, [client, cluster]
    if "://" in spec or ":" in spec:
        try:
            client = Client(spec, timeout="30s")
        except OSError as error:
            raise RunError(f"--cluster {spec}: cannot reach the Dask scheduler ({error})") from None
        return client, [client]
    raise RunError(f"--cluster {spec!r}: expected a scheduler address (tcp://host:port), "
                   f"'local', or one of {', '.join(JOBQUEUE)}")


@dataclass
class TaskOutcome:
    """One finished task of ``tasks``: its index among the arguments, and its result or
    the reason it has none (``error``: the task's exception, or a sentence when it was
    cancelled because its worker or the scheduler went away)."""

    index: int
    result: Any = None
    error: Optional[BaseException] = None

    def value(self, what: str = "task") -> Any:
        """The result.  When the task failed, raises its error if that is one of ours
        (``ProtomodelsError``: it names its file or result), else ``RunError`` naming
        ``what``."""
        if self.error is None:
            return self.result
        if isinstance(self.error, ProtomodelsError):
            raise self.error
        raise RunError(f"{what} failed on the cluster: {self.describe()}") from self.error

    def describe(self) -> str:
        """The failure in one line (empty for a result)."""
        if self.error is None:
            return ""
        return str(self.error) if isinstance(self.error, ProtomodelsError) else repr(self.error)


class TaskBatch:
    """Tasks submitted by ``tasks``: ``client``, ``workers`` (at submission), ``label``
    (the dashboard link or the ``--cluster`` value) and ``completed()``."""

    def __init__(self, client, futures: List[Any], label: str):
        self.client, self.futures, self.label = client, futures, label
        self.workers = len(client.scheduler_info().get("workers", {}))

    def completed(self) -> Iterator[TaskOutcome]:
        """The tasks' outcomes in the order they finish."""
        from dask.distributed import as_completed

        index = {future.key: i for i, future in enumerate(self.futures)}
        for future in as_completed(self.futures):
            i = index[future.key]
            if future.status == "finished":
                yield TaskOutcome(i, result=future.result())
            elif future.status == "cancelled":  # exception() would raise CancelledError
                yield TaskOutcome(i, error=RunError(
                    f"task {future.key} was cancelled (its worker or the scheduler went "
                    "away); run again to continue"))
            else:
                yield TaskOutcome(i, error=future.exception())


@contextmanager
def tasks(spec: str, jobs: Optional[int], function: Callable,
          arguments: Sequence[tuple], keys: Optional[Sequence[str]] = None) -> Iterator[TaskBatch]:
    """``function(*arguments[i])`` for every i as Dask tasks on ``--cluster spec``
    (``connect``), as a context that yields the ``TaskBatch``.  An error or Ctrl-C inside
    it cancels the unfinished tasks: those not started are dropped (running ones finish
    on a scheduler that outlives the client, so tasks must write atomically); leaving it
    always disconnects.  ``keys``: Dask task keys (default: Dask's own, unique);
    give them where tasks of several clients share a scheduler and must not be merged.
    Raises ``RunError`` as ``connect`` does."""
    client, closers = connect(spec, jobs)
    futures: List[Any] = []
    try:
        for i, args in enumerate(arguments):
            extra = {"key": keys[i]} if keys is not None else {}
            futures.append(client.submit(function, *args, pure=False, **extra))
        batch = TaskBatch(client, futures, client.dashboard_link or spec)
        try:
            yield batch
        except BaseException:
            try:  # a scheduler that went away must not hide the error
                client.cancel(futures, force=True)
            except Exception:
                logger.debug("cancelling the tasks failed", exc_info=True)
            raise
    finally:
        disconnect(closers)


def _physics_score(config: Dict[str, Any]) -> Callable:
    """The physics score of this worker process, its database loaded on first use."""
    key = (config["database"], config.get("likelihood"), config["r_limit"],
           tuple(config["sqrts"]), tuple(config["analyses"]))
    if key not in _SCORES:
        from .runs import WalkConfig, load_physics_score

        _SCORES[key] = load_physics_score(WalkConfig(**config))[1]
    return _SCORES[key]


def chain_task(out: str, chain: int, seed, target_step: int, temperature: float,
               config: Dict[str, Any], score_factory: Optional[Callable] = None) -> Dict[str, Any]:
    """Advance chain ``chain`` of the run in ``out`` to its step ``target_step``."""
    score = score_factory() if score_factory is not None else _physics_score(config)
    step = advance_chain(Path(out), chain, seed, target_step, temperature,
                         config["checkpoint_every"], score,
                         settings=ChainSettings.of(config))
    return {"walker": chain, "step": step}


class DaskRunner(Runner):
    """One Dask task per chain and round (``--cluster``; module docstring).  A task that
    dies with its worker is re-run elsewhere and resumes from the chain's checkpoint."""

    def __init__(self, spec: str, jobs: Optional[int] = None,
                 score_factory: Optional[Callable] = None):
        self.spec, self.jobs, self.score_factory = spec, jobs, score_factory
        self.client = None
        self.closers: List[Any] = []

    def start(self, out, seeds, ladder, config, score) -> None:
        from dataclasses import asdict

        import hashlib

        self.out, self.seeds, self.ladder = str(out), seeds, ladder
        # task keys unique to this run: runs sharing a scheduler must not share futures
        self.run_key = hashlib.sha256(f"{Path(out).resolve()}:{config.seed}".encode()).hexdigest()[:12]
        self.config = {k: v for k, v in asdict(config).items() if k != "processes"}
        self.client, self.closers = connect(self.spec, self.jobs)
        logger.info("cluster: %s, %d chains", self.client.dashboard_link or self.spec,
                    ladder.chains)

    def advance(self, targets, report):
        futures = {c: self.client.submit(chain_task, self.out, c, self.seeds[c], t,
                                         self.ladder.temperature(c), self.config,
                                         self.score_factory,
                                         key=f"protomodels-{self.run_key}-walker-{c}-{t}",
                                         pure=False)
                   for c, t in sorted(targets.items())}
        try:
            while not all(f.done() for f in futures.values()):
                time.sleep(0.5)
                report()
        except KeyboardInterrupt:  # no task may write after this run's lock is released
            self.client.cancel(list(futures.values()), force=True)
            raise
        crashed = []
        for c, future in futures.items():
            if future.status != "finished":
                problem = future.exception() if future.status == "error" else future.status
                logger.error("walker %d failed on the cluster: %s", c, problem)
                crashed.append(c)
        return crashed, []

    def close(self) -> None:
        disconnect(self.closers)
        self.closers = []


def disconnect(closers: List[Any]) -> None:
    """Close what ``connect`` opened (client, cluster), ignoring failures: closing a dead
    cluster must not hide the result."""
    for thing in closers:
        try:
            thing.close()
        except Exception:
            logger.debug("closing %s failed", thing, exc_info=True)
