"""Benchmark scenarios against the real daemon: headless, from the attach stream, ``rusmd bench``.

Runs in: the test process, against ``rusmd`` daemons on the scenario
app (``rusmd.node.scenario_app``: WAT guests compiled at run time, and
kv-storm's C guest, ``kv_get.c``, built through the module cache).

Each scenario runs for about a second against one shared daemon (two
workers) and must count something, with latency percentiles in order;
a run from the attach stream must send ``scenario`` frames with a
non-zero rate and a last one with the result; ``rusmd bench
spawn-storm --json`` must print one document with a rate.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rusmd.node.scenario_app import KV_BUCKET, KV_KEY, KV_PATH, KV_VALUE, SCENARIO_NAMES
from rusmd.node.scenario_drivers import prepare
from rusmd.node.scenarios import Run
from tests.integration.conftest import App, Daemon, free_port
from tests.integration.nodekit import (
    SETUP_TIMEOUT_S,
    Attached,
    scenario_app,
    wait_components,
    wait_endpoint,
)

BENCH_TIMEOUT_S = 180.0
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scenario_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    app = App(tmp_path_factory.mktemp("app"), free_port(), free_port())
    scenario_app(app)
    daemon = Daemon(app, tmp_path_factory.mktemp("log") / "rusmd.log")
    daemon.start()
    try:
        daemon.wait_ready()
        wait_components(daemon)
        yield daemon
    finally:
        daemon.kill_group()


def run_scenario(daemon: Daemon, name: str, seconds: float, *, wrk: bool = False) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        scenario, driver = await prepare(name, daemon.app.socket_path, wrk=wrk)
        return await Run(scenario, driver, seconds).run()

    return asyncio.run(go())


def check_figures(result: dict[str, Any]) -> None:
    assert result["state"] == "done", result
    assert result["count"] > 0 and result["rate_per_s"] > 0, result
    latency = result["latency_us"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"], result
    assert result["warmup_s"] > 0 and result["measured_s"] > 0


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_every_scenario_counts_with_percentiles(scenario_daemon: Daemon, name: str) -> None:
    result = run_scenario(scenario_daemon, name, 1.2)
    check_figures(result)
    assert result["scenario"] == name and result["counts"]
    if name == "ping-pong":
        assert set(result["parts"]) == {"same_worker", "across_workers"}  # two workers
        assert sum(part["count"] for part in result["parts"].values()) == result["count"]
        # each trip as the guest timed it: PING_TRIPS latencies a request
        assert result["operations"] == result["count"], result
    if name == "fairness":
        assert result["workers_spinning"] == 2  # one spinner on each worker
    if name in ("spawn-storm", "fault-recovery"):
        assert result["workers"] == 2  # one spawner or supervisor on each worker
    if name == "kv-storm":
        # every request answered the stored value (the driver compares each body)
        assert result["errors"] == 0, result
        check_kv_guest(scenario_daemon)
    # every scenario cleans up: no spinner, spawner, supervisor or their children left
    left = ("sc_spin", "sc_quick", "sc_spawner", "sc_sup", "sc_crasher", "supervisor")
    listing = scenario_daemon.request("list")["result"]["processes"]
    assert not [p for p in listing if p["component"] in left], listing


def get(daemon: Daemon, path: str) -> tuple[int, str | None, bytes]:
    """``GET path`` on the scenario app's HTTP listener: status, content type, body."""
    conn = http.client.HTTPConnection("127.0.0.1", daemon.app.serve_port, timeout=10)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.getheader("content-type"), answer.read()
    finally:
        conn.close()


def check_kv_guest(daemon: Daemon) -> None:
    """sc_kv is bench http's C guest: it reads the route's key and answers JSON."""
    assert get(daemon, KV_PATH) == (200, "application/json", KV_VALUE)
    assert get(daemon, "/sc/kv/absent") == (404, "application/json", b'{"error":"no such key"}')


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_kv_storm_driven_by_wrk_stores_the_value_it_reads(scenario_daemon: Daemon) -> None:
    # Another value under the key: the run must store its own before it reads.
    stale = {"bucket": KV_BUCKET, "key_b64": base64.b64encode(KV_KEY.encode()).decode()}
    stale["value_b64"] = base64.b64encode(b'"stale"').decode()
    assert scenario_daemon.request("kv", action="set", **stale)["ok"]
    assert get(scenario_daemon, KV_PATH) == (200, "application/json", b'"stale"')
    result = run_scenario(scenario_daemon, "kv-storm", 2.0, wrk=True)
    check_figures(result)
    assert result["client"] == "wrk -t1 -c64" and result["errors"] == 0, result
    check_kv_guest(scenario_daemon)


def test_a_run_from_the_attach_stream_sends_live_frames(scenario_daemon: Daemon) -> None:
    wait_endpoint(scenario_daemon)
    client = Attached(scenario_daemon)
    try:
        hello = scenario_daemon.wait_for(lambda: client.latest("hello"), SETUP_TIMEOUT_S, "hello")
        assert [s["name"] for s in hello["scenarios"]] == list(SCENARIO_NAMES)
        client.send({"type": "run", "scenario": "http-throughput", "seconds": 2})
        started = scenario_daemon.wait_for(lambda: client.reply("run"), SETUP_TIMEOUT_S, "run")
        assert started["ok"] and started["scenario"] == "http-throughput", started
        since = len(client.frames)
        client.send({"type": "run", "scenario": "ws-echo"})
        refused = scenario_daemon.wait_for(
            lambda: client.reply("run", since), SETUP_TIMEOUT_S, "the second run refused"
        )
        assert "http-throughput is running" in refused["error"]

        def finished() -> dict[str, Any] | None:
            last = client.latest("scenario")
            return last if last and "result" in last else None

        final = scenario_daemon.wait_for(finished, SETUP_TIMEOUT_S, "the run's last frame")
        frames = [frame for _at, frame in client.of_type("scenario")]
        live = [f for f in frames if f["state"] == "running" and "result" not in f]
        assert live and max(f["rate"] for f in live) > 0, frames
        assert all(f["scenario"] == "http-throughput" for f in frames)
        check_figures(final["result"])
        since = len(client.frames)
        client.send({"type": "stop"})
        stopped = scenario_daemon.wait_for(
            lambda: client.reply("stop", since), SETUP_TIMEOUT_S, "stop"
        )
        assert stopped["error"] == "nothing to stop: no scenario is running"
    finally:
        client.close()


def test_an_in_worker_scenario_from_the_attach_stream_has_a_live_rate(
    scenario_daemon: Daemon,
) -> None:
    # spawn-storm counts from the workers' counters, read every 0.1 s: the
    # dashboard still gets a rate every tick while it runs.
    wait_endpoint(scenario_daemon)
    client = Attached(scenario_daemon)
    try:
        scenario_daemon.wait_for(lambda: client.latest("hello"), SETUP_TIMEOUT_S, "hello")
        client.send({"type": "run", "scenario": "spawn-storm", "seconds": 2})
        started = scenario_daemon.wait_for(lambda: client.reply("run"), SETUP_TIMEOUT_S, "run")
        assert started["ok"], started

        def finished() -> dict[str, Any] | None:
            last = client.latest("scenario")
            return last if last and "result" in last else None

        final = scenario_daemon.wait_for(finished, SETUP_TIMEOUT_S, "the run's last frame")
        frames = [frame for _at, frame in client.of_type("scenario")]
        live = [f for f in frames if f["state"] == "running" and "result" not in f]
        assert len([f for f in live if f["rate"] > 0]) >= 2, frames
        check_figures(final["result"])
    finally:
        client.close()


CRASHER_EXIT = re.compile(r"exit sc_crasher#\d+ (crashed|killed)")
CRASHER_HELD = re.compile(r"log: suppressed (\d+) exit lines of sc_crasher ")


def test_a_crash_loop_logs_a_burst_of_exit_lines_and_counts_the_rest(
    scenario_daemon: Daemon,
) -> None:
    # fault-recovery restarts sc_crasher thousands of times a second: the log
    # shows its component's burst of exit lines, and summary lines count
    # the rest, so that lines and counts add up to every crash the workers
    # counted (no other component of this app crashes). At the log level
    # warn the budget also takes sc_crasher's `killed` lines (a run's end
    # kills the child it finds alive), so the sum may pass the crashes by
    # at most the workers' kills.
    run_scenario(scenario_daemon, "fault-recovery", 1.2)

    def accounted() -> tuple[int, int, int] | None:
        meters = scenario_daemon.request("stats")["result"]["meters"]
        crashed = sum(int(m.get("exits", {}).get("crashed", 0)) for m in meters)
        killed = sum(int(m.get("exits", {}).get("killed", 0)) for m in meters)
        log = scenario_daemon.read_log()
        shown = len(CRASHER_EXIT.findall(log))
        held = sum(int(count) for count in CRASHER_HELD.findall(log))
        return (crashed, shown, held) if crashed <= shown + held <= crashed + killed else None

    crashed, shown, held = scenario_daemon.wait_for(
        accounted, SETUP_TIMEOUT_S, "every crash shown or counted by a summary line"
    )
    assert held > 0 and shown < crashed, (crashed, shown, held)


def _bench_json(tmp_path: Path, scenario: str, seconds: str) -> dict[str, Any]:
    """``rusmd bench SCENARIO --seconds S --json`` in ``tmp_path``: its one JSON document."""
    done = subprocess.run(
        [sys.executable, "-m", "rusmd", "bench", scenario, "--seconds", seconds, "--json"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    check_figures(result)
    return result


def test_rusmd_bench_prints_one_json_document_with_a_rate(tmp_path: Path) -> None:
    result = _bench_json(tmp_path, "spawn-storm", "1")
    assert result["scenario"] == "spawn-storm" and result["unit"] == "spawns"


def test_rusmd_bench_drives_http_throughput_with_wrk_when_it_is_installed(tmp_path: Path) -> None:
    result = _bench_json(tmp_path, "http-throughput", "2")
    if shutil.which("wrk"):
        assert result["client"] == "wrk -t1 -c64" and result["lanes"] == 64, result
        assert "note" not in result
    else:  # the Python client, and a result that says it is not comparable
        assert "wrk is not on PATH" in result["note"], result


def test_rusmd_bench_refuses_an_unknown_scenario_and_bad_seconds() -> None:
    for arguments, expected in (
        (["nope"], "invalid choice: 'nope'"),
        (["ping-pong", "--seconds", "0"], "--seconds must be from 0.1 to 600"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "rusmd", "bench", *arguments],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2 and expected in done.stderr, done.stderr
