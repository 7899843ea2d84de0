"""The endpoint's tracker: totals that outlive a replaced worker, rates, percentiles, frames."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rusmd.meter import BOUNDS_S
from rusmd.node.metrics import NodeCollector
from rusmd.node.snapshot import MAX_DETAIL_ROWS, Tracker, flatten


def meters(
    slot: int, pid: int, *, ok: int = 0, spawned: int = 0, cpu_s: float = 0.0, bucket: int = 3
) -> dict[str, Any]:
    buckets = [0] * (len(BOUNDS_S) + 1)
    buckets[bucket] = ok
    return {
        "slot": slot,
        "pid": pid,
        "cpu_seconds": cpu_s,
        "rss_bytes": 1 << 20,
        "processes": 2,
        "spawned": spawned,
        "exits": {"normal": spawned},
        "mailbox_dropped": 0,
        "messages_delivered": 5 * spawned,
        "messages_sent": {"same_worker": 4 * spawned, "other_worker": spawned},
        "requests": [
            {
                "listener": "127.0.0.1:8080",
                "protocol": "http",
                "counts": {"GET 2xx": ok} if ok else {},
                "duration": {"buckets": buckets, "count": ok, "sum_s": ok * 1e-4},
            }
        ],
        "store": {
            "reads": 1,
            "writes": 2,
            "commits": 1,
            "commit_duration": {"buckets": [], "count": 1, "sum_s": 0.01},
        },
    }


def metrics_text(tracker: Tracker) -> str:
    """``/metrics`` as the endpoint renders it from ``tracker``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(tracker))
    return generate_latest(registry).decode()


def document(*workers: dict[str, Any], restarts: int = 0) -> dict[str, Any]:
    return {
        "daemon": {
            "uptime_s": 5.0,
            "state": "running",
            "profile": "light",
            "workers_target": len(workers),
        },
        "workers": [
            {"slot": m["slot"], "pid": m["pid"], "state": "ready", "restarts": restarts}
            for m in workers
        ],
        "main": {
            "worker_restarts": restarts,
            "worker_quarantines": 0,
            "resident_restarts": 0,
            "resident_quarantines": 0,
        },
        "meters": list(workers),
    }


def test_flatten_keys_requests_and_histograms_by_label() -> None:
    counts = flatten(meters(0, 10, ok=3, spawned=3))
    assert counts[("requests", "127.0.0.1:8080", "http", "GET 2xx")] == 3
    assert counts[("duration_bucket", "127.0.0.1:8080", "http", 3)] == 3
    assert counts[("exits", "normal")] == 3
    assert counts[("kv_writes",)] == 2


def test_a_replaced_workers_counts_stay_in_the_totals() -> None:
    tracker = Tracker()
    tracker.update(document(meters(0, 10, ok=7, spawned=7)), now=1.0)
    assert tracker.total("requests") == 7
    tracker.update(document(meters(0, 11, ok=2, spawned=2), restarts=1), now=2.0)
    assert tracker.total("requests") == 9
    assert tracker.total("spawned") == 9
    assert tracker.total("messages_delivered") == 45
    assert tracker.by_label("messages_sent") == {"same_worker": 36, "other_worker": 9}
    frame = tracker.snapshot(1, 2.0, False)
    assert frame["totals"]["messages"] == {"sent": 45, "delivered": 45, "dropped": 0}
    exposed = {
        (sample.name, tuple(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics_text(tracker))
        for sample in family.samples
    }
    assert exposed[("rusm_messages_sent_total", (("destination", "same_worker"),))] == 36
    assert exposed[("rusm_messages_sent_total", (("destination", "other_worker"),))] == 9
    assert exposed[("rusm_messages_delivered_total", ())] == 45
    assert exposed[("rusm_mailbox_dropped_messages_total", ())] == 0
    assert tracker.by_label("restarts") == {"worker": 1, "resident": 0}


def test_a_worker_gone_from_the_pool_keeps_its_counts() -> None:
    tracker = Tracker()
    tracker.update(document(meters(0, 10, ok=1), meters(1, 20, ok=4)), now=1.0)
    tracker.update(document(meters(0, 10, ok=1)), now=2.0)
    assert tracker.total("requests") == 5


def test_rates_and_cpu_come_from_the_window() -> None:
    tracker = Tracker()
    tracker.update(document(meters(0, 10, ok=0, cpu_s=1.0)), now=10.0)
    tracker.update(document(meters(0, 10, ok=50, cpu_s=1.25)), now=10.5)
    assert tracker.rate("requests") == pytest.approx(100.0)
    assert tracker.cpu_percent[0] == pytest.approx(50.0)


def test_old_entries_leave_the_window() -> None:
    tracker = Tracker()
    tracker.update(document(meters(0, 10, ok=0)), now=0.0)
    tracker.update(document(meters(0, 10, ok=100)), now=0.5)
    tracker.update(document(meters(0, 10, ok=100)), now=5.0)
    tracker.update(document(meters(0, 10, ok=100)), now=5.5)
    assert tracker.rate("requests") == 0.0


def test_latency_percentiles_cover_only_the_window() -> None:
    tracker = Tracker()
    assert tracker.latency_ms() == {"p50": None, "p95": None, "p99": None}
    tracker.update(document(meters(0, 10, ok=10, bucket=20)), now=0.0)
    tracker.update(document(meters(0, 10, ok=10, bucket=20)), now=0.5)
    assert tracker.latency_ms()["p50"] is None  # nothing new in the window
    tracker.update(document(meters(0, 10, ok=20, bucket=20)), now=0.9)
    p50 = tracker.latency_ms()["p50"]
    assert p50 is not None and BOUNDS_S[19] * 1000 <= p50 <= BOUNDS_S[20] * 1000


def test_snapshot_frame_carries_workers_totals_and_detail_only_when_asked() -> None:
    tracker = Tracker()
    tracker.update(document(meters(0, 10, ok=3, spawned=3)), now=1.0)
    frame = tracker.snapshot(7, now=1.2, detail=False)
    assert frame["type"] == "snapshot" and frame["seq"] == 7
    assert frame["age_s"] == pytest.approx(0.2)
    assert frame["workers"][0]["pid"] == 10 and frame["workers"][0]["processes"] == 2
    assert frame["totals"]["requests"] == {"127.0.0.1:8080": {"2xx": 3}}
    assert "processes" not in frame
    tracker.set_processes([{"pid": n} for n in range(MAX_DETAIL_ROWS + 50)])
    detailed = tracker.snapshot(8, now=1.2, detail=True)
    assert detailed["processes"]["total"] == MAX_DETAIL_ROWS + 50
    assert len(detailed["processes"]["rows"]) == MAX_DETAIL_ROWS
