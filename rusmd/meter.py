"""Counters and fixed-bucket latency histograms the workers keep and the node endpoint reads.

Runs in: any. Workers update them on their loop thread (a request's
answer, a store commit) and hand plain copies to the main process in
their ``stats`` answer; the node endpoint (``rusmd.node``) adds the
workers' copies up, takes differences between two polls for rates and
percentiles, and exposes them to Prometheus.

A ``Histogram`` has the same bucket bounds everywhere (``BOUNDS_S``), so
histograms from different workers and from two moments add and subtract
bucket by bucket. The bounds grow by √2 from 10 µs to about 7.4 s: a
percentile read from them (``percentile``, linear inside a bucket) is
within a factor √2 of the truth at worst, and recording one value is a
``bisect`` over 40 floats (well under a microsecond), cheap enough for
the inline HTTP path. A bucket list is a count per bound plus one for
values past the last (``+Inf``), not cumulative; Prometheus's cumulative
form is made when it is exposed.

``RequestMeter`` counts one listener's answered requests by method class
and status class, with their durations.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

# 10 µs · √2^i: the fastest inline request takes ~10 µs; past ~7.4 s every
# request lands in +Inf, beyond any listener's useful timeout-s resolution.
BOUNDS_S: tuple[float, ...] = tuple(1e-5 * 2 ** (i / 2) for i in range(40))

# Method classes: the methods a route can name, the rest counted together
# so a client inventing methods cannot grow the table.
METHOD_CLASSES = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
OTHER_METHOD = "OTHER"
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class Histogram:
    """Counts of observed durations in the fixed ``BOUNDS_S`` buckets, with their sum."""

    __slots__ = ("buckets", "count", "sum_s")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BOUNDS_S) + 1)
        self.count = 0
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        self.buckets[bisect_left(BOUNDS_S, seconds)] += 1
        self.count += 1
        self.sum_s += seconds

    def export(self) -> dict[str, Any]:
        """A plain copy for a ``stats`` answer: ``{"buckets", "count", "sum_s"}``."""
        return {"buckets": list(self.buckets), "count": self.count, "sum_s": self.sum_s}


def status_class(status: int) -> str:
    """``2xx`` for 200–299 and so on; anything outside 100–599 is ``5xx``."""
    index = status // 100 - 1
    return _STATUS_CLASSES[index] if 0 <= index < len(_STATUS_CLASSES) else "5xx"


class RequestMeter:
    """One listener's answered requests: counts by (method, status), durations.

    ``record`` runs once per answered request on the worker's loop, inline
    path included, so it does the least it can: one dict count keyed by
    the raw (method, status) pair and one histogram bucket, written out
    rather than through ``Histogram.observe``. The pairs are folded into
    method and status classes by ``export``. Their number is bounded:
    httptools accepts only the methods it knows, and a status is 100–599.

    Attributes:
        counts: ``(method, status)`` → requests answered so.
        duration: Every answered request's time from dispatch to answer.
    """

    __slots__ = ("buckets", "counts", "duration")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}
        self.duration = Histogram()
        self.buckets = self.duration.buckets

    def record(self, method: str, status: int, seconds: float) -> None:
        """One answered request."""
        counts = self.counts
        key = (method, status)
        counts[key] = counts.get(key, 0) + 1
        self.buckets[bisect_left(BOUNDS_S, seconds)] += 1
        duration = self.duration
        duration.count += 1
        duration.sum_s += seconds

    def export(self) -> dict[str, Any]:
        """A plain copy for a ``stats`` answer: counts as ``"GET 2xx"`` → requests."""
        classes: dict[str, int] = {}
        for (method, status), count in list(self.counts.items()):
            name = method if method in METHOD_CLASSES else OTHER_METHOD
            key = f"{name} {status_class(status)}"
            classes[key] = classes.get(key, 0) + count
        return {"counts": classes, "duration": self.duration.export()}


def add_buckets(into: list[int], other: list[int]) -> None:
    """Add ``other``'s bucket counts into ``into`` (both ``BOUNDS_S`` shaped)."""
    for index, count in enumerate(other[: len(into)]):
        into[index] += count


def percentile(buckets: list[int], fraction: float) -> float | None:
    """The ``fraction`` quantile (0–1) of a bucket list, in seconds; None if it is empty.

    Linear inside the bucket the quantile falls in; a quantile in +Inf
    reads as the last bound.
    """
    total = sum(buckets)
    if total <= 0:
        return None
    rank = fraction * total
    seen = 0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            if index >= len(BOUNDS_S):
                return BOUNDS_S[-1]
            low = BOUNDS_S[index - 1] if index else 0.0
            return low + (BOUNDS_S[index] - low) * max(0.0, rank - seen) / count
        seen += count
    return BOUNDS_S[-1]
