"""The node endpoint: JSON API, ``/metrics``, the token, the attach stream, its supervision.

Runs in: any (each test starts the real ``rusmd``; the endpoint is its
``python -m rusmd.node`` child on the app's node port).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from rusmd.abi import slot_of
from rusmd.config.model import Profile
from rusmd.config.sizing import worker_count
from rusmd.node.scenario_app import PING_TRIPS, SCENARIO_NAMES, ping_answer
from tests.integration.conftest import App, Daemon, all_ready, free_port
from tests.integration.httpkit import fetch, write_http_app
from tests.integration.nodekit import (
    ENDPOINT_TIMEOUT_S,
    Attached,
    endpoint_pid,
    endpoint_up,
    get,
    get_json,
    scenario_app,
    wait_components,
    wait_endpoint,
)

CPUS = 8
EX_CONFIG = 78
TOKEN = "s3cret-token-for-the-node"
# How long a profile change takes to fork or drain workers on a busy machine.
RESIZE_TIMEOUT_S = 30.0
# Cadence is measured over this long, after the slow client is seen skipping.
CADENCE_WINDOW_S = 3.0
# How long the never-reading client may take to fill its buffers at 10 Hz.
BACKED_UP_TIMEOUT_S = 40.0


@pytest.fixture
def node_daemon(app: App, start_daemon: Callable[..., Daemon]) -> Callable[..., Daemon]:
    """Start the http test app with extra ``[node]`` lines; wait for its endpoint."""

    def start(node: str = "", **options: Any) -> Daemon:
        write_http_app(app, node=node)
        daemon = start_daemon(cpus=CPUS, **options)
        wait_endpoint(daemon)
        return daemon

    return start


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def metric(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(daemon: Daemon, headers: dict[str, str] | None = None) -> dict[Any, float]:
    status, body = get(daemon, "/metrics", headers)
    assert status == 200, body[:300]
    return samples(body.decode())


# ── the JSON API ────────────────────────────────────────────────────────


def test_api_status_agrees_with_rusmctl_status_json(node_daemon: Callable[..., Daemon]) -> None:
    daemon = node_daemon()
    from_api = get_json(daemon, "/api/status")
    result = daemon.ctl("status", "--json")
    assert result.returncode == 0, result.stderr
    from_ctl = json.loads(result.stdout)
    assert set(from_api) == set(from_ctl)
    for key in ("pid", "version", "state", "profile", "workers_target", "config", "listeners"):
        assert from_api["daemon"][key] == from_ctl["daemon"][key], key
    rows = [(w["slot"], w["pid"], w["state"]) for w in from_api["workers"]]
    assert rows == [(w["slot"], w["pid"], w["state"]) for w in from_ctl["workers"]]
    assert from_api["components"] == from_ctl["components"]
    assert from_api["residents"] == from_ctl["residents"]


def test_api_processes_and_logs_answer_bounded(node_daemon: Callable[..., Daemon]) -> None:
    daemon = node_daemon()
    processes = get_json(daemon, "/api/processes")
    assert processes["processes"] == [] and processes["unanswered"] == []
    logs = get_json(daemon, "/api/logs?lines=3")
    assert 0 < len(logs["records"]) <= 3
    assert {"time", "source", "level", "text"} <= set(logs["records"][0])
    status, body = get(daemon, "/api/logs?lines=many")
    assert status == 400 and b"lines must be a whole number" in body


def test_unknown_page_is_404_and_attach_without_upgrade_is_426(
    node_daemon: Callable[..., Daemon],
) -> None:
    daemon = node_daemon()
    status, body = get(daemon, "/api/nothing")
    assert status == 404 and b"/api/nothing" in body
    assert get(daemon, "/attach")[0] == 426
    assert get(daemon, "/static/../../etc/passwd")[0] == 404


def test_other_sites_pages_are_refused_without_a_token(node_daemon: Callable[..., Daemon]) -> None:
    daemon = node_daemon()
    port = daemon.app.node_port
    rebound = get(daemon, "/api/logs", {"Host": f"attacker.example:{port}"})
    assert rebound[0] == 403 and b"addressed to a loopback host" in rebound[1]
    assert get(daemon, "/api/status", {"Host": f"localhost:{port}"})[0] == 200
    address = f"ws://127.0.0.1:{port}/attach"
    with (
        pytest.raises(InvalidStatus) as refused,
        connect(
            address,
            origin="http://attacker.example",
            open_timeout=10,  # type: ignore[arg-type]
        ),
    ):
        pass
    assert refused.value.response.status_code == 403
    with connect(address, origin=f"http://127.0.0.1:{port}", open_timeout=10) as same:  # type: ignore[arg-type]
        assert json.loads(same.recv(timeout=10))["type"] == "hello"


# ── /metrics ────────────────────────────────────────────────────────────


def test_metrics_parse_and_counters_move_with_a_load(node_daemon: Callable[..., Daemon]) -> None:
    daemon = node_daemon()
    port = daemon.app.serve_port
    listener = f"127.0.0.1:{port}"
    labels = {"listener": listener, "protocol": "http"}
    before = scrape(daemon)
    for _ in range(20):
        assert fetch(port, "GET", "/").status == 200
    for _ in range(5):
        assert fetch(port, "GET", "/missing").status == 404
    for _ in range(3):  # a process each (inline handlers count only abnormal exits)
        assert fetch(port, "GET", "/nap").status == 200
    assert fetch(port, "GET", "/trap").status == 502
    after = scrape(daemon)

    def moved(name: str, **extra: str) -> float:
        return metric(after, name, **extra) - metric(before, name, **extra)

    assert moved("rusm_http_requests_total", **labels, method="GET", status="2xx") == 23
    assert moved("rusm_http_requests_total", **labels, method="GET", status="4xx") == 5
    assert moved("rusm_http_requests_total", **labels, method="GET", status="5xx") == 1
    assert moved("rusm_http_request_duration_seconds_count", **labels) == 29
    assert moved("rusm_http_request_duration_seconds_bucket", **labels, le="+Inf") == 29
    # Three naps of 100 ms each: at least 0.3 s, and under 1 ms bucket none of them.
    assert moved("rusm_http_request_duration_seconds_sum", **labels) >= 0.3
    fast = moved("rusm_http_request_duration_seconds_bucket", **labels, le="0.08192")
    assert fast <= 26
    assert moved("rusm_process_spawns_total") >= 24
    assert moved("rusm_process_exits_total", reason="normal") == 3
    assert moved("rusm_process_exits_total", reason="crashed") == 1
    workers = worker_count(Profile.LIGHT, CPUS)
    assert metric(after, "rusm_workers") == workers
    for slot in range(workers):
        assert metric(after, "rusm_worker_cpu_seconds_total", slot=str(slot)) > 0
        assert metric(after, "rusm_worker_resident_memory_bytes", slot=str(slot)) > 1 << 20
    assert ("rusm_restarts_total", (("kind", "worker"),)) in after


def test_metrics_count_messages_sent_across_the_mesh_and_delivered(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    scenario_app(app)  # sc_ping's handler makes PING_TRIPS calls to the resident sc_pong
    daemon = start_daemon(cpus=CPUS)
    wait_endpoint(daemon)
    wait_components(daemon)
    pong_slot = daemon.request("info", pid="sc_pong")["result"]["process"]["worker"]
    before = scrape(daemon)
    pings = {"same_worker": 0, "other_worker": 0}

    def ping_from_both_sides() -> bool:
        # A fresh connection each: the kernel spreads them over the workers.
        response = fetch(daemon.app.serve_port, "GET", "/sc/ping")
        assert response.status == 200, response.body
        same = slot_of(ping_answer(response.body)[0]) == pong_slot
        pings["same_worker" if same else "other_worker"] += 1
        return all(pings.values())

    daemon.wait_for(ping_from_both_sides, ENDPOINT_TIMEOUT_S, "a ping from each worker")
    result = daemon.ctl("send", "sc_pong", "an operator's message")
    assert result.returncode == 0, result.stderr
    after = scrape(daemon)

    def moved(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    # Each call's request is one message sent and delivered; its reply is neither.
    for destination, count in pings.items():
        expected = count * PING_TRIPS + (destination == "same_worker")  # + the operator's
        assert moved("rusm_messages_sent_total", destination=destination) == expected
    assert moved("rusm_messages_delivered_total") == sum(pings.values()) * PING_TRIPS + 1
    assert moved("rusm_mailbox_dropped_messages_total") == 0


def test_metrics_count_a_killed_workers_restart_and_keep_its_requests(
    node_daemon: Callable[..., Daemon],
) -> None:
    daemon = node_daemon()
    port = daemon.app.serve_port
    for _ in range(30):
        assert fetch(port, "GET", "/").status == 200
    before = scrape(daemon)
    served = sum(value for (name, _), value in before.items() if name == "rusm_http_requests_total")
    assert served == 30
    old = {row["slot"]: row["pid"] for row in daemon.status()["workers"]}
    os.kill(old[0], signal.SIGKILL)
    daemon.wait_for(
        lambda: all(
            w["state"] == "ready" and w["pid"] != old[0]
            for w in daemon.status()["workers"]
            if w["slot"] == 0
        ),
        RESIZE_TIMEOUT_S,
        "worker 0 replaced",
    )
    after = scrape(daemon)
    assert metric(after, "rusm_restarts_total", kind="worker") == 1
    still = sum(value for (name, _), value in after.items() if name == "rusm_http_requests_total")
    assert still == 30  # the dead worker's requests stay counted


# ── the token ───────────────────────────────────────────────────────────


def test_token_required_everywhere_when_configured(node_daemon: Callable[..., Daemon]) -> None:
    daemon = node_daemon('auth-token-env = "NODE_TOKEN"\n', env={"NODE_TOKEN": TOKEN})
    for path in ("/", "/api/status", "/api/processes", "/api/logs", "/metrics"):
        assert get(daemon, path)[0] == 401, path
        assert get(daemon, path, {"Authorization": "Bearer wrong"})[0] == 401, path
        assert get(daemon, path, {"Authorization": f"Bearer {TOKEN}"})[0] == 200, path
    assert get(daemon, f"/api/status?token={TOKEN}")[0] == 200
    assert get(daemon, "/api/status?token=nope")[0] == 401
    address = f"ws://127.0.0.1:{daemon.app.node_port}/attach"
    with pytest.raises(InvalidStatus) as refused, connect(address, open_timeout=10):
        pass
    assert refused.value.response.status_code == 401
    attached = Attached(daemon, f"?token={TOKEN}")
    try:
        daemon.wait_for(lambda: attached.latest("hello"), ENDPOINT_TIMEOUT_S, "hello")
    finally:
        attached.close()


def check(tmp_path: Path, manifest: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "rusm.toml"
    path.write_text(manifest)
    environment = {k: v for k, v in os.environ.items() if k != "NODE_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "rusmd", "check", "--config", str(path)],
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_refuses_non_loopback_listen_without_a_token(tmp_path: Path) -> None:
    open_bind = '[node]\nlisten = "0.0.0.0:4100"\n'
    refused = check(tmp_path, open_bind, {})
    assert refused.returncode == EX_CONFIG
    assert "rusm.toml:2: node: 'listen' address 0.0.0.0:4100 is not loopback" in refused.stderr
    assert "auth-token-env" in refused.stderr
    with_key = open_bind + 'auth-token-env = "NODE_TOKEN"\n'
    unset = check(tmp_path, with_key, {})
    assert unset.returncode == EX_CONFIG
    assert "names NODE_TOKEN, which is set neither in the environment nor .env" in unset.stderr
    assert check(tmp_path, with_key, {"NODE_TOKEN": TOKEN}).returncode == 0
    loopback = '[node]\nlisten = "127.0.0.1:4100"\nauth-token-env = "NODE_TOKEN"\n'
    closed = check(tmp_path, loopback, {})
    assert closed.returncode == 0
    assert "the node endpoint will answer 401 to every request" in closed.stdout + closed.stderr
    (tmp_path / ".env").write_text(f"NODE_TOKEN={TOKEN}\n")
    assert check(tmp_path, with_key, {}).returncode == 0
    bad_name = check(tmp_path, '[node]\nauth-token-env = "NOT A NAME"\n', {})
    assert bad_name.returncode == EX_CONFIG
    assert "'NOT A NAME' is not an environment variable name" in bad_name.stderr
    assert check(tmp_path, '[node]\nlisten = "[::1]:4100"\n', {}).returncode == 0


# ── supervision ─────────────────────────────────────────────────────────


def test_killed_endpoint_is_restarted(node_daemon: Callable[..., Daemon]) -> None:
    daemon = node_daemon()
    first = endpoint_pid(daemon)
    assert first is not None
    os.kill(first, signal.SIGKILL)

    def back() -> bool:
        pid = endpoint_pid(daemon)
        return pid is not None and pid != first and endpoint_up(daemon)

    daemon.wait_for(back, ENDPOINT_TIMEOUT_S, "a new endpoint child answering")
    assert f"node endpoint: pid {first} exited (killed by SIGKILL); restarting" in daemon.read_log()
    assert daemon.status()["daemon"]["state"] == "running"


def test_taken_port_is_logged_and_retried_without_stopping_the_daemon(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    write_http_app(app)
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", app.node_port))
    squatter.listen()
    daemon = start_daemon(cpus=CPUS)
    message = f"cannot listen on 127.0.0.1:{app.node_port} ([node] listen)"
    daemon.wait_for(lambda: message in daemon.read_log(), ENDPOINT_TIMEOUT_S, "the bind error")
    assert fetch(app.serve_port, "GET", "/").status == 200
    squatter.close()
    wait_endpoint(daemon)


def test_reload_that_moves_the_endpoint_restarts_it_on_the_new_port(
    app: App, node_daemon: Callable[..., Daemon]
) -> None:
    daemon = node_daemon()
    first = endpoint_pid(daemon)
    unchanged = daemon.ctl("reload")
    assert unchanged.returncode == 0, unchanged.stderr
    daemon.wait_for(lambda: all_ready(daemon.status()), ENDPOINT_TIMEOUT_S, "the roll")
    assert endpoint_pid(daemon) == first  # same listen, rate and token: left running
    old_port = app.node_port
    app.node_port = free_port()
    write_http_app(app)
    result = daemon.ctl("reload")
    assert result.returncode == 0, result.stderr
    wait_endpoint(daemon)  # on the new port
    assert endpoint_pid(daemon) != first
    assert "node endpoint: settings changed; restarting it" in daemon.read_log()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", old_port), timeout=5):
        pass


def test_endpoint_stops_with_the_daemon(node_daemon: Callable[..., Daemon]) -> None:
    daemon = node_daemon()
    pid = endpoint_pid(daemon)
    assert pid is not None
    assert daemon.stop() == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# ── the attach stream ───────────────────────────────────────────────────


@pytest.fixture
def attached() -> Iterator[list[Attached]]:
    clients: list[Attached] = []
    yield clients
    for client in clients:
        client.close()


def test_attach_says_hello_then_streams_snapshots_of_the_workers(
    node_daemon: Callable[..., Daemon], attached: list[Attached]
) -> None:
    daemon = node_daemon()
    client = Attached(daemon)
    attached.append(client)
    hello = daemon.wait_for(lambda: client.latest("hello"), ENDPOINT_TIMEOUT_S, "hello")
    assert hello["node"]["ticks_per_second"] == 20
    assert [p["name"] for p in hello["profiles"]] == [p.value for p in Profile]
    assert hello["profile"] == "light"
    assert [s["name"] for s in hello["scenarios"]] == list(SCENARIO_NAMES)
    assert hello["capacity"]["workers_target"] == worker_count(Profile.LIGHT, CPUS)
    snapshot = daemon.wait_for(client.latest, ENDPOINT_TIMEOUT_S, "a snapshot")
    pids = sorted(w["pid"] for w in daemon.status()["workers"])
    assert sorted(w["pid"] for w in snapshot["workers"]) == pids
    assert "processes" not in snapshot  # detail is off
    for _ in range(10):
        assert fetch(daemon.app.serve_port, "GET", "/").status == 200
    port = str(daemon.app.serve_port)

    def counted() -> dict[str, Any] | None:
        latest = client.latest()
        requests = (latest or {}).get("totals", {}).get("requests", {})
        return latest if requests.get(f"127.0.0.1:{port}", {}).get("2xx") == 10 else None

    counted_snapshot = daemon.wait_for(counted, ENDPOINT_TIMEOUT_S, "the requests counted")
    assert counted_snapshot["totals"]["spawned"] >= 10
    client.send({"type": "set_detail", "on": True})
    detailed = daemon.wait_for(
        lambda: (client.latest() or {}).get("processes", {}).get("total") is not None,
        ENDPOINT_TIMEOUT_S,
        "the process table",
    )
    assert detailed
    table = client.latest()
    assert table is not None and table["processes"]["total"] == len(table["processes"]["rows"])


def test_attach_set_profile_changes_the_pool(
    node_daemon: Callable[..., Daemon], attached: list[Attached]
) -> None:
    daemon = node_daemon()
    client = Attached(daemon)
    attached.append(client)
    daemon.wait_for(lambda: client.latest("hello"), ENDPOINT_TIMEOUT_S, "hello")
    wanted = worker_count(Profile.MAX, CPUS)
    assert wanted != worker_count(Profile.LIGHT, CPUS)
    client.send({"type": "set_profile", "profile": "max"})
    reply = daemon.wait_for(lambda: client.reply("set_profile"), ENDPOINT_TIMEOUT_S, "reply")
    assert reply["ok"] and reply["workers_target"] == wanted

    def grown() -> bool:
        latest = client.latest() or {}
        workers = latest.get("workers", [])
        return len(workers) == wanted and all(w["state"] == "ready" for w in workers)

    daemon.wait_for(grown, RESIZE_TIMEOUT_S, f"{wanted} ready workers in the snapshots")
    assert daemon.status()["daemon"]["profile"] == "max"
    client.send({"type": "set_profile", "profile": "huge"})
    refused = daemon.wait_for(
        lambda: [f for _, f in client.of_type("error") if f["op"] == "set_profile"],
        ENDPOINT_TIMEOUT_S,
        "the refusal",
    )
    assert "unknown profile 'huge' (valid: light, balanced, max)" in refused[0]["error"]


def test_attach_scenarios_and_bad_commands_get_clear_errors(
    node_daemon: Callable[..., Daemon], attached: list[Attached]
) -> None:
    daemon = node_daemon()
    client = Attached(daemon)
    attached.append(client)
    daemon.wait_for(lambda: client.latest("hello"), ENDPOINT_TIMEOUT_S, "hello")
    client.send({"type": "run", "scenario": "spawn-storm"})
    client.send({"type": "dance"})
    client.connection.send("{not json")

    def three_errors() -> list[tuple[float, dict[str, Any]]] | None:
        found = client.of_type("error")
        return found if len(found) >= 3 else None

    errors = daemon.wait_for(three_errors, ENDPOINT_TIMEOUT_S, "three errors")
    texts = [frame["error"] for _, frame in errors]
    assert "scenario 'spawn-storm' not available" in texts[0]
    assert "unknown command type 'dance'" in texts[1]
    assert texts[2] == "not JSON"
    # Still attached and streaming: a snapshot comes after the errors. (The
    # errors can all come back before the first tick, so a snapshot seen
    # at once is not owed.)
    last_error_at = errors[-1][0]
    daemon.wait_for(
        lambda: [at for at, _ in client.of_type("snapshot") if at > last_error_at],
        ENDPOINT_TIMEOUT_S,
        "a snapshot after the errors",
    )


def _never_reading_client(port: int) -> socket.socket:
    """A WebSocket handshake on a socket with a tiny receive buffer that is then never read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET /attach HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n".encode()
        + b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        + b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    return sock


@pytest.mark.parametrize("ticks", [10, 60])
def test_snapshot_cadence_holds_with_a_client_that_never_reads(
    node_daemon: Callable[..., Daemon], attached: list[Attached], ticks: int
) -> None:
    daemon = node_daemon(f"ticks_per_second = {ticks}\n")
    slow = _never_reading_client(daemon.app.node_port)
    try:

        def slow_skipping() -> bool:
            clients = get_json(daemon, "/api/attached")["clients"]
            return any(row["skipped"] > 0 for row in clients)

        daemon.wait_for(slow_skipping, BACKED_UP_TIMEOUT_S, "the slow client to skip frames")
        client = Attached(daemon)
        attached.append(client)
        daemon.wait_for(client.latest, ENDPOINT_TIMEOUT_S, "a snapshot")
        time.sleep(0.5)  # past the first frames' start-up
        start = time.monotonic()
        time.sleep(CADENCE_WINDOW_S)
        end = time.monotonic()
        arrived = [at for at, _ in client.of_type("snapshot") if start <= at < end]
        rate = len(arrived) / (end - start)
        assert ticks * 0.8 <= rate <= ticks * 1.2, f"{rate:.1f} snapshots/s at {ticks}/s"
        assert slow_skipping()  # the slow client is still attached, still skipping
    finally:
        slow.close()
