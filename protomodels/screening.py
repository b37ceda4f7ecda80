"""A learned K for screening walker proposals (issue 14; SPEC section 9, the proto-model
talk's "network that learns K"): a regressor on a fixed-length encoding of a proto-model,
trained on the scores a chain has already computed, used by ``walker.sample`` for the
first stage of delayed acceptance.  The sampler stays exact whatever the regressor
predicts (``walker``); a better regressor only saves more evaluations.

Schedule: a chain with ``screen_train_at = (t1, t2, ...)`` walks without a screen up to
step t1, then (re)trains its regressor after steps t1, t2, ... on every model it scored
so far (accepted states and rejected proposals, from its history) and keeps the last one
frozen from the last tk on: from there the chain is an exact, non-adaptive
Metropolis-Hastings chain (before it, an adaptive one, i.e. a burn-in).  Training is a
deterministic function of those history lines and the chain's seed, so a resumed chain
retrains the regressor it had instead of storing it.

The regressor is scikit-learn's ``HistGradientBoostingRegressor`` (chosen for: no feature
scaling needed, fast to train on thousands of points, deterministic without early
stopping and with one thread, and a small, well-kept dependency).  A resumed chain
retrains with the scikit-learn it has; run.json records the version a run started with.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .exceptions import RunError
from .model import CHANNELS, LSP, NAMES, ProtoModel, ssm_key
from .xsec import reference_xsecs

logger = logging.getLogger(__name__)
#: Train after these steps unless a run says otherwise (``walk --screen``).
DEFAULT_TRAIN_AT = (100, 200, 400, 800)
MIN_POINTS = 30  # fewer scored models than this: no screen yet
_PIDS = tuple(sorted(NAMES))
_CHANNELS = tuple((pid, spec.name) for pid in _PIDS for spec in CHANNELS.get(pid, ()))


@functools.lru_cache(maxsize=1)
def _processes() -> Tuple[Tuple[int, int], ...]:
    """Every production process (multiplier key) any spectrum of the candidates has."""
    keys = set()
    for low, high in ((200.0, 210.0), (1000.0, 1010.0)):
        masses = {pid: high for pid in _PIDS}
        masses[LSP] = low
        keys |= {ssm_key(*pair) for pair in reference_xsecs(masses, 13)}
    return tuple(sorted(keys))


def n_features() -> int:
    """The length of ``encode``'s vector."""
    return 3 * len(_PIDS) + len(_CHANNELS) + len(_processes())


def encode(model: ProtoModel) -> np.ndarray:
    """The fixed-length encoding of ``model``, shape (``n_features()``,): per candidate
    particle (by pid) its presence, mass and mass gap to the LSP in TeV (0 when absent);
    per decay channel of ``model.CHANNELS`` its BR; per production process its log10
    multiplier, floored at 1e-3 (so 0 gives -3; a process the model does not store: 0,
    i.e. multiplier 1)."""
    processes = _processes()
    x = np.zeros(n_features())
    lsp = model.masses[LSP]
    for i, pid in enumerate(_PIDS):
        if pid in model.masses:
            x[3 * i: 3 * i + 3] = (1.0, model.masses[pid] / 1000.0,
                                   (model.masses[pid] - lsp) / 1000.0)
    offset = 3 * len(_PIDS)
    for j, (pid, channel) in enumerate(_CHANNELS):
        x[offset + j] = model.decays.get(pid, {}).get(channel, 0.0)
    offset += len(_CHANNELS)
    for k, key in enumerate(processes):
        if key in model.ssm:
            x[offset + k] = math.log10(max(model.ssm[key], 1e-3))
    return x


def require_sklearn() -> None:
    """Raise ``RunError`` (with the install command) unless scikit-learn is importable:
    checked when a screened run starts, not at its first training 100 steps later."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise RunError("--screen needs scikit-learn: pip install 'protomodels[screen]'") from None


def sklearn_version() -> Optional[str]:
    """The installed scikit-learn's version (None without it), recorded in run.json."""
    try:
        import sklearn
    except ImportError:
        return None
    return sklearn.__version__


def _regressor(seed: int):
    """A fresh, unfitted regressor (replaced by tests with a deliberately poor one)."""
    require_sklearn()
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(max_iter=200, learning_rate=0.1,
                                         early_stopping=False, random_state=seed)


class KSurrogate:
    """A regressor of K on ``encode``; ``predict(model)`` is its estimate of K."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._fitted = None

    def fit(self, models: Sequence[ProtoModel], ks: Sequence[float]) -> "KSurrogate":
        """Train on ``models`` and their K (non-finite K are left out), with one thread so
        that the fit is the same on any machine; ValueError with fewer than MIN_POINTS
        finite ones."""
        pairs = [(m, k) for m, k in zip(models, ks) if math.isfinite(k)]
        if len(pairs) < MIN_POINTS:
            raise ValueError(f"{len(pairs)} scored models: need at least {MIN_POINTS}")
        from threadpoolctl import threadpool_limits

        x = np.array([encode(m) for m, _ in pairs])
        y = np.array([k for _, k in pairs])
        regressor = _regressor(self.seed)
        with threadpool_limits(limits=1):
            regressor.fit(x, y)
        self._fitted = regressor
        return self

    def predict(self, model: ProtoModel) -> float:
        """The learned K of ``model``; ValueError before ``fit``.  About 1 ms in a process
        limited to one thread (a walker), about 20 ms with OpenMP's start-up per call."""
        if self._fitted is None:
            raise ValueError("the surrogate is not trained")
        return float(self._fitted.predict(encode(model)[None, :])[0])


def scored_models(entries: Iterable[Dict[str, Any]], until: int
                  ) -> Tuple[List[ProtoModel], List[float]]:
    """The models a chain scored up to step ``until`` and their K, from its history
    lines: every accepted state and every rejected proposal it scored (``proposal``)."""
    models: List[ProtoModel] = []
    ks: List[float] = []
    for entry in entries:
        if entry["step"] > until:
            break
        if entry.get("accepted"):
            models.append(ProtoModel.from_dict(entry["model"]))
            ks.append(float(entry["K"]))
        elif "proposal" in entry:
            models.append(ProtoModel.from_dict(entry["proposal"]["model"]))
            ks.append(float(entry["proposal"]["K"]))
    return models, ks


class Screen:
    """A chain's screen on its training schedule (module docstring): call it with a
    model for the surrogate's K, or None while there is no surrogate yet."""

    def __init__(self, train_at: Sequence[int], seed: int):
        self.train_at = tuple(sorted(int(t) for t in train_at))
        self.seed = int(seed)
        self.surrogate: Optional[KSurrogate] = None
        self.trained_at: Optional[int] = None
        self.data: Optional[str] = None  # fingerprint of the training data
        self._memo: Dict[bytes, float] = {}  # the chain's state is asked about every step

    def due(self, step: int) -> bool:
        """Whether the surrogate is retrained after ``step``."""
        return step in self.train_at

    def last_due(self, step: int) -> Optional[int]:
        """The last training step at or before ``step`` (None if none)."""
        done = [t for t in self.train_at if t <= step]
        return done[-1] if done else None

    def train(self, entries: Sequence[Dict[str, Any]], step: int) -> None:
        """Retrain on the history lines up to ``step``; with fewer than MIN_POINTS scored
        models the chain stays unscreened until the next training step (logged)."""
        models, ks = scored_models(entries, step)
        surrogate = None
        if sum(math.isfinite(k) for k in ks) >= MIN_POINTS:
            surrogate = KSurrogate(self.seed).fit(models, ks)
        else:
            later = [t for t in self.train_at if t > step]
            logger.warning("step %d: %d scored models, fewer than %d: no screen %s", step,
                           len(ks), MIN_POINTS,
                           f"until step {later[0]}" if later else "for the rest of the run")
        # all at once: an interrupted training leaves the previous screen whole
        self.surrogate, self.trained_at, self.data = surrogate, step, fingerprint(entries, step)
        self._memo = {}

    def __call__(self, model: ProtoModel) -> Optional[float]:
        """The learned K of ``model`` (memoised per encoding), or None before a training."""
        if self.surrogate is None:
            return None
        key = encode(model).tobytes()
        if key not in self._memo:
            if len(self._memo) > 1000:
                self._memo.clear()
            self._memo[key] = self.surrogate.predict(model)
        return self._memo[key]


def fingerprint(entries: Iterable[Dict[str, Any]], step: int) -> str:
    """sha256 of the history lines up to ``step``: what a screen trained at ``step`` was
    trained on, so that a kept screen is reused only for the very same data."""
    digest = hashlib.sha256()
    for entry in entries:
        if entry["step"] > step:
            break
        digest.update(json.dumps(entry, sort_keys=True).encode())
    return digest.hexdigest()
