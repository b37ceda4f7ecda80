"""The per-process memo of the results' statistics.

The statistics of an EM or combined result (upper limits, CLs values, likelihood values
and curves) depend on nothing but the result, the statistical model it uses (for pyhf
results: which workspaces, see ``protomodels.statistics.workspaces``) and its signal
yields per region, and they are what a walker step costs.  ``StatisticsCache`` keeps them
by exactly that key (``predictor.statistics_key``), so every cached value is a pure
function of its key and a warm cache gives the numbers of an empty one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, TYPE_CHECKING, Dict, Hashable, Optional

if TYPE_CHECKING:  # pragma: no cover
    from ..likelihood import TabulatedNll

CACHE_SIZE = 20000  # results' statistics kept per process (a few kB each)


@dataclass
class ResultStatistics:
    """The costly statistics of one result for one signal, filled in as they are asked for."""

    uls: Dict[str, Optional[float]] = field(default_factory=dict)  # "obs"/"exp" UL in fb
    curves: Dict[float, "TabulatedNll"] = field(default_factory=dict)  # by grid end
    cls: Dict[float, float] = field(default_factory=dict)  # observed CLs by mu
    nlls: Dict[float, float] = field(default_factory=dict)  # exact -ln L by mu
    surrogate: Any = None  # --likelihood surrogate: its SignalSurrogate (workspace chosen)


class StatisticsCache:
    """LRU of ``ResultStatistics`` keyed by (statistical model, result, region, signal)."""

    def __init__(self, maxsize: int = CACHE_SIZE):
        self.maxsize = maxsize
        self._entries: "OrderedDict[Hashable, ResultStatistics]" = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Optional[Hashable]) -> ResultStatistics:
        """The entry of ``key`` (made empty if new); a fresh, unshared one for None."""
        if key is None or self.maxsize <= 0:
            return ResultStatistics()
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry
        self.misses += 1
        entry = self._entries[key] = ResultStatistics()
        if len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)
        return entry

    def clear(self) -> None:
        self._entries.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)
