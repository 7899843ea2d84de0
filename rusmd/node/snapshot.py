"""The node's counters as the endpoint sees them: totals that never go back, rates, percentiles.

Runs in: node endpoint, on its event loop (pure: no I/O; time is passed in).

``Tracker.update`` takes one ``stats`` document (the control command:
the status document, each worker's ``meters`` and main's own counts) and
keeps:

- **totals** that only grow: a worker's counters start again from zero
  when it is replaced, so the last figures of every worker pid that went
  away are kept in ``retired`` and added to the live ones. Prometheus and
  the dashboard then see a counter that never drops when a worker dies.
- a **window** of recent totals (``RATE_WINDOW_S``): rates and request
  latency percentiles are differences between its oldest and newest
  entries, so they describe the last second, not the node's life.
- per worker, CPU % from the worker's own CPU seconds between two polls.

A counter is keyed by a tuple: its name, then its labels, e.g.
``("requests", "127.0.0.1:8080", "http", "GET 2xx")`` or
``("duration_bucket", "127.0.0.1:8080", "http", 7)``.
``snapshot`` turns the latest state into one attach-stream frame.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from rusmd.meter import BOUNDS_S, percentile

# Rates and percentiles cover about this much of the recent past: short
# enough to follow a load as it changes, long enough to hold a few polls.
RATE_WINDOW_S = 1.0
# Entries the window keeps at most: polls come at most ~60 a second.
MAX_WINDOW_ENTRIES = 256
# Process rows one snapshot carries with detail on (the total is always
# sent): a node with 100,000 processes must not send them all per tick.
MAX_DETAIL_ROWS = 200

Key = tuple[Any, ...]
Counts = dict[Key, float]


def flatten(meters: dict[str, Any]) -> Counts:
    """One worker's ``meters`` answer as counters keyed by (name, labels...)."""
    counts: Counts = {}

    def histogram(name: str, labels: tuple[Any, ...], data: dict[str, Any]) -> None:
        for index, count in enumerate(data.get("buckets", [])):
            if count:
                counts[(f"{name}_bucket", *labels, index)] = count
        counts[(f"{name}_count", *labels)] = data.get("count", 0)
        counts[(f"{name}_sum", *labels)] = data.get("sum_s", 0.0)

    counts[("spawned",)] = meters.get("spawned", 0)
    counts[("mailbox_dropped",)] = meters.get("mailbox_dropped", 0)
    counts[("messages_delivered",)] = meters.get("messages_delivered", 0)
    for destination, count in (meters.get("messages_sent") or {}).items():
        counts[("messages_sent", destination)] = count
    for reason, count in (meters.get("exits") or {}).items():
        counts[("exits", reason)] = count
    for listener in meters.get("requests", []):
        labels = (listener["listener"], listener["protocol"])
        for key, count in listener.get("counts", {}).items():
            counts[("requests", *labels, key)] = count
        histogram("duration", labels, listener.get("duration", {}))
    store = meters.get("store")
    if store:
        for name in ("reads", "writes", "commits"):
            counts[(f"kv_{name}",)] = store.get(name, 0)
        histogram("commit", (), store.get("commit_duration", {}))
    return counts


def _add(into: Counts, other: Counts) -> None:
    for key, value in other.items():
        into[key] = into.get(key, 0) + value


def _matching(counts: Counts, name: str) -> float:
    return sum(value for key, value in counts.items() if key[0] == name)


class Tracker:
    """Totals, rates and percentiles over successive ``stats`` documents."""

    def __init__(self) -> None:
        self.document: dict[str, Any] | None = None
        self.updated_at = 0.0
        self.totals: Counts = {}
        self.retired: Counts = {}
        self.live: dict[int, tuple[int, Counts]] = {}  # slot → (pid, its counters)
        self.window: deque[tuple[float, Counts]] = deque(maxlen=MAX_WINDOW_ENTRIES)
        self.cpu: dict[int, tuple[int, float, float]] = {}  # slot → (pid, at, seconds)
        self.cpu_percent: dict[int, float] = {}
        self.processes: dict[str, Any] | None = None

    def update(self, document: dict[str, Any], now: float) -> None:
        """Take a fresh ``stats`` document, polled at monotonic ``now``."""
        self.document = document
        self.updated_at = now
        for meters in document.get("meters", []):
            slot, pid = meters["slot"], meters["pid"]
            known = self.live.get(slot)
            if known is not None and known[0] != pid:
                _add(self.retired, known[1])  # a replaced worker: its counts stay counted
            self.live[slot] = (pid, flatten(meters))
            self._cpu(slot, pid, float(meters.get("cpu_seconds", 0.0)), now)
        current = {row["slot"] for row in document.get("workers", []) if row.get("pid")}
        for slot in set(self.live) - current:
            _add(self.retired, self.live.pop(slot)[1])
            self.cpu.pop(slot, None)
            self.cpu_percent.pop(slot, None)
        totals = dict(self.retired)
        for _pid, counts in self.live.values():
            _add(totals, counts)
        main = document.get("main", {})
        totals[("restarts", "worker")] = main.get("worker_restarts", 0)
        totals[("restarts", "resident")] = main.get("resident_restarts", 0)
        totals[("quarantines", "worker")] = main.get("worker_quarantines", 0)
        totals[("quarantines", "resident")] = main.get("resident_quarantines", 0)
        self.totals = totals
        self.window.append((now, totals))
        while len(self.window) > 2 and now - self.window[0][0] > RATE_WINDOW_S:
            self.window.popleft()

    def _cpu(self, slot: int, pid: int, seconds: float, now: float) -> None:
        before = self.cpu.get(slot)
        if before is not None and before[0] == pid and now > before[1]:
            used = max(0.0, seconds - before[2])
            self.cpu_percent[slot] = round(100.0 * used / (now - before[1]), 1)
        elif before is None or before[0] != pid:
            self.cpu_percent[slot] = 0.0
        self.cpu[slot] = (pid, now, seconds)

    # ── derived figures ─────────────────────────────────────────────────

    def rate(self, name: str) -> float:
        """Per second, over the window, of every counter named ``name``."""
        if len(self.window) < 2:
            return 0.0
        (first_at, first), (last_at, last) = self.window[0], self.window[-1]
        elapsed = last_at - first_at
        if elapsed <= 0:
            return 0.0
        return max(0.0, _matching(last, name) - _matching(first, name)) / elapsed

    def latency_ms(self, name: str = "duration") -> dict[str, float | None]:
        """p50/p95/p99 in ms of the ``name`` histograms' observations in the window."""
        buckets = [0.0] * (len(BOUNDS_S) + 1)
        if len(self.window) >= 2:
            first, last = self.window[0][1], self.window[-1][1]
            bucket = f"{name}_bucket"
            for key, value in last.items():
                if key[0] == bucket:
                    buckets[key[-1]] += max(0.0, value - first.get(key, 0))
        result: dict[str, float | None] = {}
        for label, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            seconds = percentile([int(count) for count in buckets], fraction)
            result[label] = None if seconds is None else round(seconds * 1000, 3)
        return result

    def total(self, name: str) -> float:
        """The sum of every counter named ``name``."""
        return _matching(self.totals, name)

    def by_label(self, name: str, position: int = 1) -> dict[str, float]:
        """Counters named ``name`` summed by the label at ``position``."""
        result: dict[str, float] = {}
        for key, value in self.totals.items():
            if key[0] == name:
                result[str(key[position])] = result.get(str(key[position]), 0) + value
        return result

    # ── the attach stream's frame ───────────────────────────────────────

    def snapshot(self, seq: int, now: float, detail: bool) -> dict[str, Any]:
        """One ``snapshot`` frame (see ``docs/operations.md`` for its fields)."""
        document = self.document or {}
        daemon = document.get("daemon", {})
        meters = {m["slot"]: m for m in document.get("meters", [])}
        workers = []
        for row in document.get("workers", []):
            slot = row["slot"]
            meter = meters.get(slot, {})
            workers.append(
                {
                    "slot": slot,
                    "pid": row.get("pid"),
                    "state": row.get("state"),
                    "cpu_percent": self.cpu_percent.get(slot, 0.0),
                    "rss_bytes": meter.get("rss_bytes", 0),
                    "processes": meter.get("processes", row.get("processes", 0)),
                    "restarts": row.get("restarts", 0),
                    "last_exit": row.get("last_exit", ""),
                }
            )
        requests: dict[str, dict[str, float]] = {}
        for key, value in self.totals.items():
            if key[0] == "requests":
                status = key[3].split()[1]
                per = requests.setdefault(key[1], {})
                per[status] = per.get(status, 0) + value
        frame: dict[str, Any] = {
            "type": "snapshot",
            "seq": seq,
            "age_s": round(max(0.0, now - self.updated_at), 3) if self.document else None,
            "uptime_s": daemon.get("uptime_s"),
            "state": daemon.get("state"),
            "profile": daemon.get("profile"),
            "workers_target": daemon.get("workers_target"),
            "workers": workers,
            "totals": {
                "spawned": self.total("spawned"),
                "exited": self.by_label("exits"),
                "restarts": self.by_label("restarts"),
                "quarantines": self.by_label("quarantines"),
                "processes": sum(w["processes"] or 0 for w in workers),
                "messages": {
                    "sent": self.total("messages_sent"),
                    "delivered": self.total("messages_delivered"),
                    "dropped": self.total("mailbox_dropped"),
                },
                "requests": requests,
                "kv": {
                    "reads": self.total("kv_reads"),
                    "writes": self.total("kv_writes"),
                    "commits": self.total("kv_commits"),
                },
            },
            "rates": {
                "requests_per_s": round(self.rate("requests"), 1),
                "spawns_per_s": round(self.rate("spawned"), 1),
                "exits_per_s": round(self.rate("exits"), 1),
                "kv_reads_per_s": round(self.rate("kv_reads"), 1),
                "kv_writes_per_s": round(self.rate("kv_writes"), 1),
            },
            "latency_ms": self.latency_ms(),
        }
        if detail:
            frame["processes"] = self.processes or {"total": None, "rows": []}
        return frame

    def set_processes(self, rows: list[dict[str, Any]], error: str = "") -> None:
        """The latest process table (``list``), capped to ``MAX_DETAIL_ROWS``."""
        self.processes = {"total": len(rows), "rows": rows[:MAX_DETAIL_ROWS], "error": error}
