"""Walkers on a Dask cluster: one task per walker, the database loaded once per worker.

``--cluster`` takes the address of a running Dask scheduler (``tcp://host:8786``),
``local`` (a ``LocalCluster`` of single-threaded worker processes on this machine), or a
batch system through dask-jobqueue (``slurm``, ``htcondor``, ``pbs``, ``sge``, ``lsf``;
configured by dask-jobqueue's own ``~/.config/dask/jobqueue.yaml``).  The run directory
and the database must be on a file system that every worker sees.

A task runs its walker *up to an absolute step* and starts by resuming from the walker's
checkpoint if there is one.  So when a worker dies, Dask re-runs its tasks elsewhere and
they continue from the last checkpoint: at most ``checkpoint_every`` steps are redone,
and, resumes being exact, the histories are those of an uninterrupted run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from .exceptions import RunError

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


def _physics_score(config: Dict[str, Any]) -> Callable:
    """The physics score of this worker process, its database loaded on first use."""
    key = (config["database"], config.get("likelihood"), config["r_limit"],
           tuple(config["sqrts"]), tuple(config["analyses"]))
    if key not in _SCORES:
        from .runs import WalkConfig, load_physics_score

        _SCORES[key] = load_physics_score(WalkConfig(**config))[1]
    return _SCORES[key]


def walker_task(out: str, index: int, seed, target_step: int, config: Dict[str, Any],
                score_factory: Optional[Callable] = None) -> Dict[str, Any]:
    """Run walker ``index`` of the run in ``out`` until its step ``target_step``."""
    from .moves import Space
    from .runs import WalkerStore, run_walker

    folder = Path(out) / f"walker-{index}"
    store = WalkerStore(folder)
    done = store.load_checkpoint()["step"] if store.checkpoint.exists() else None
    if done is not None and done >= target_step:
        return {"walker": index, "step": done}
    score = score_factory() if score_factory is not None else _physics_score(config)
    common = dict(temperature=config["temperature"], checkpoint_every=config["checkpoint_every"],
                  hiscores=Path(out) / "hiscores.json", walker=index)
    if done is None:
        run_walker(folder, seed, score, target_step, Space(), resume=False, **common)
    else:
        logger.warning("walker %d: resuming at step %d", index, done)
        run_walker(folder, seed, score, target_step - done, Space(), resume=True, **common)
    return {"walker": index, "step": target_step}


def run_walkers(out: Path, seeds: List, targets: List[int], config: Dict[str, Any],
                spec: str, jobs: Optional[int], report: Callable[[], None],
                score_factory: Optional[Callable] = None) -> List[int]:
    """Submit one task per walker and wait, reporting progress; returns crashed walkers."""
    client, closers = connect(spec, jobs)
    try:
        logger.warning("cluster: %s, %d walkers", client.dashboard_link or spec, len(seeds))
        futures = [client.submit(walker_task, str(out), i, seeds[i], targets[i], config,
                                 score_factory, key=f"protomodels-walker-{i}-{targets[i]}",
                                 pure=False)
                   for i in range(len(seeds))]
        while not all(f.done() for f in futures):
            time.sleep(0.5)
            report()
        crashed = []
        for i, future in enumerate(futures):
            if future.status != "finished":
                logger.error("walker %d failed on the cluster: %s", i, future.exception())
                crashed.append(i)
        return crashed
    finally:
        for thing in closers:
            try:
                thing.close()
            except Exception:  # closing a dead cluster must not hide the result
                logger.debug("closing %s failed", thing, exc_info=True)
