"""``/metrics``: Prometheus text from the node's counters, through one custom collector.

Runs in: node endpoint, on its event loop.

The collector reads the ``Tracker`` (``rusmd.node.snapshot``), the same
totals the dashboard shows; it keeps no state of its own and needs no
multiprocess directory, since every figure comes from one ``stats``
document the endpoint just polled. Names follow Prometheus conventions:
the ``rusm_`` prefix, ``_total`` on counters, seconds and bytes.

========================================  =========  ===========================
metric                                    type       labels
========================================  =========  ===========================
rusm_http_requests_total                  counter    listener, protocol, method, status
rusm_http_request_duration_seconds        histogram  listener, protocol
rusm_process_spawns_total                 counter
rusm_process_exits_total                  counter    reason
rusm_restarts_total                       counter    kind (worker, resident)
rusm_quarantines_total                    counter    kind (worker, resident)
rusm_messages_sent_total                  counter    destination (same_worker, other_worker)
rusm_messages_delivered_total             counter
rusm_mailbox_dropped_messages_total       counter
rusm_kv_reads_total / _writes / _commits  counter
rusm_kv_commit_duration_seconds           histogram
rusm_worker_cpu_seconds_total             counter    slot
rusm_worker_resident_memory_bytes         gauge      slot
rusm_worker_processes                     gauge      slot
rusm_worker_pool_slots                    gauge      slot
rusm_worker_pooling_allocator             gauge      slot (0: fell back to on-demand)
rusm_workers / rusm_workers_target        gauge
rusm_uptime_seconds                       gauge
rusm_reloads_total                        counter
========================================  =========  ===========================

``method`` is the request method for the seven a route can name, else
``OTHER``; ``status`` is the status class (``2xx``).

Messages. *Sent* counts what processes (and ``rusmctl send``) sent: a
``rusm.send``, a ``rusm.call``'s request, a fired ``rusm.send_after``,
once, where it was sent, by whether it went to a process of the same
worker or across the mesh. *Delivered* (the received side) counts what
was put in a mailbox of this node: those messages, plus exit and down
notices and WebSocket frames, which no process sent. *Dropped* counts
those messages lost to a full mailbox, a dead receiver or a backlogged
worker. So sent = the messages among delivered + dropped + in flight,
less a send to a worker slot that has no worker (answered ``NOPROC`` at
once, neither delivered nor dropped). A call's reply is none of these:
it goes to the waiting caller, not to a mailbox.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from rusmd.meter import BOUNDS_S
from rusmd.node.snapshot import Tracker


def _histogram(
    family: HistogramMetricFamily, tracker: Tracker, name: str, labels: tuple[Any, ...]
) -> None:
    """Add one labelled histogram from the tracker's ``name`` bucket counters."""
    totals = tracker.totals
    cumulative = 0.0
    buckets: list[tuple[str, float]] = []
    for index, bound in enumerate(BOUNDS_S):
        cumulative += totals.get((f"{name}_bucket", *labels, index), 0)
        buckets.append((f"{bound:.6g}", cumulative))
    count = totals.get((f"{name}_count", *labels), 0)
    buckets.append(("+Inf", count))
    family.add_metric(
        [str(label) for label in labels],
        buckets,
        totals.get((f"{name}_sum", *labels), 0.0),
    )


class NodeCollector(Collector):
    """Yields the metric families of the table above from a ``Tracker``."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def collect(self) -> Iterator[Metric]:
        """Every family, from the tracker's latest state."""
        tracker = self.tracker
        totals = tracker.totals
        document = tracker.document or {}
        yield from self._requests(tracker)
        spawns = CounterMetricFamily("rusm_process_spawns", "Processes started (inline included).")
        spawns.add_metric([], tracker.total("spawned"))
        yield spawns
        exits = CounterMetricFamily(
            "rusm_process_exits", "Processes ended, by reason.", labels=["reason"]
        )
        for reason, count in sorted(tracker.by_label("exits").items()):
            exits.add_metric([reason], count)
        yield exits
        for name, text in (
            ("restarts", "Restarts by the root supervisor, by what restarted."),
            ("quarantines", "Times a worker slot or resident was quarantined."),
        ):
            family = CounterMetricFamily(f"rusm_{name}", text, labels=["kind"])
            for kind in ("worker", "resident"):
                family.add_metric([kind], totals.get((name, kind), 0))
            yield family
        yield from self._messages(tracker)
        for name in ("reads", "writes", "commits"):
            family = CounterMetricFamily(f"rusm_kv_{name}", f"Store {name} by guests and kv.")
            family.add_metric([], tracker.total(f"kv_{name}"))
            yield family
        commit = HistogramMetricFamily(
            "rusm_kv_commit_duration_seconds", "Store write transactions, start to durable commit."
        )
        _histogram(commit, tracker, "commit", ())
        yield commit
        yield from self._workers(document)

    def _messages(self, tracker: Tracker) -> Iterator[Metric]:
        sent = CounterMetricFamily(
            "rusm_messages_sent",
            "Messages processes sent (send, a call's request, a fired send_after), "
            "by whether they went to a process of the same worker or another.",
            labels=["destination"],
        )
        by_destination = tracker.by_label("messages_sent")
        for destination in ("same_worker", "other_worker"):
            sent.add_metric([destination], by_destination.get(destination, 0))
        yield sent
        delivered = CounterMetricFamily(
            "rusm_messages_delivered",
            "Messages received: put in a mailbox (sent messages, exit and down notices, "
            "WebSocket frames).",
        )
        delivered.add_metric([], tracker.total("messages_delivered"))
        yield delivered
        dropped = CounterMetricFamily(
            "rusm_mailbox_dropped_messages",
            "Sent messages dropped: a full mailbox, a dead receiver, a backlogged worker.",
        )
        dropped.add_metric([], tracker.total("mailbox_dropped"))
        yield dropped

    def _requests(self, tracker: Tracker) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "rusm_http_requests",
            "Answered requests on http and sse listeners.",
            labels=["listener", "protocol", "method", "status"],
        )
        listeners: set[tuple[str, str]] = set()
        for key, value in sorted(tracker.totals.items(), key=lambda item: str(item[0])):
            if key[0] == "requests":
                method, status = key[3].split()
                requests.add_metric([key[1], key[2], method, status], value)
                listeners.add((key[1], key[2]))
            elif key[0] == "duration_count":
                listeners.add((key[1], key[2]))
        yield requests
        duration = HistogramMetricFamily(
            "rusm_http_request_duration_seconds",
            "Time from dispatch to the answer of requests on http and sse listeners.",
            labels=["listener", "protocol"],
        )
        for labels in sorted(listeners):
            _histogram(duration, tracker, "duration", labels)
        yield duration

    def _workers(self, document: dict[str, Any]) -> Iterator[Metric]:
        cpu = CounterMetricFamily(
            "rusm_worker_cpu_seconds", "CPU time of each worker (user + system).", labels=["slot"]
        )
        gauges = {
            "rss_bytes": GaugeMetricFamily(
                "rusm_worker_resident_memory_bytes", "Resident memory.", labels=["slot"]
            ),
            "processes": GaugeMetricFamily(
                "rusm_worker_processes", "Processes alive (pool slots in use).", labels=["slot"]
            ),
            "pool_slots": GaugeMetricFamily(
                "rusm_worker_pool_slots",
                "Instance slots the pooling allocator reserved.",
                labels=["slot"],
            ),
            "pooling": GaugeMetricFamily(
                "rusm_worker_pooling_allocator",
                "1 when the worker runs the pooling allocator, 0 when it fell back.",
                labels=["slot"],
            ),
        }
        for meters in document.get("meters", []):
            slot = [str(meters["slot"])]
            cpu.add_metric(slot, meters.get("cpu_seconds", 0.0))
            for field, family in gauges.items():
                family.add_metric(slot, float(meters.get(field, 0)))
        yield cpu
        yield from gauges.values()
        daemon = document.get("daemon", {})
        workers = GaugeMetricFamily("rusm_workers", "Workers alive.")
        workers.add_metric([], sum(1 for row in document.get("workers", []) if row.get("pid")))
        yield workers
        target = GaugeMetricFamily("rusm_workers_target", "Workers the profile asks for.")
        target.add_metric([], daemon.get("workers_target", 0))
        yield target
        uptime = GaugeMetricFamily("rusm_uptime_seconds", "Time since the daemon started.")
        uptime.add_metric([], daemon.get("uptime_s", 0.0))
        yield uptime
        reloads = CounterMetricFamily("rusm_reloads", "Manifest reloads accepted.")
        reloads.add_metric([], document.get("main", {}).get("reloads", 0))
        yield reloads
