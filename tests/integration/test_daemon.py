"""The real ``rusmd`` daemon: worker pool, supervision, reloads, systemd, control socket.

Runs in: any (each test starts ``python -m rusmd`` in its own session
through the ``Daemon`` harness in ``conftest.py``, on free loopback ports).
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from rusmd.config.model import Profile
from rusmd.config.sizing import worker_count
from rusmd.control.protocol import MAX_FRAME_BYTES, encode_frame
from rusmd.errors import EX_REFUSED, EX_USAGE
from rusmd.main.loop import DRAIN_TIMEOUT_S
from rusmd.main.pool import (
    HEARTBEAT_TIMEOUT_S,
    WORKER_INTENSITY,
    WORKER_QUARANTINE,
)
from rusmd.worker.runtime import HEARTBEAT_INTERVAL_S
from tests.integration.conftest import (
    App,
    Daemon,
    all_ready,
    process_gone,
    read_frame,
    run_rusmctl,
    wait_for,
)

CPUS = 8
EX_OK = 0
EX_UNAVAILABLE = 69
EX_CONFIG = 78

# Generous deadlines for a two-core machine running a daemon and its workers.
REPLACE_TIMEOUT_S = 20.0
EXIT_TIMEOUT_S = 20.0
# Modules only a worker may load: a forking parent holding them (and their
# threads or native state) would hand broken copies to every worker.
WORKER_ONLY_LIBRARIES = ("_libwasmtime", "uvloop", "httptools", "lmdb", "websockets")

Workers = dict[int, dict[str, Any]]


def expected_workers(profile: Profile) -> int:
    return worker_count(profile, CPUS)


def pids(workers: Workers) -> dict[int, int]:
    return {slot: row["pid"] for slot, row in workers.items()}


def replaced(daemon: Daemon, slot: int, old_pids: set[int]) -> Callable[[], Workers | None]:
    """A predicate: ``slot`` has a ready worker whose pid is none of ``old_pids``."""

    def check() -> Workers | None:
        workers = daemon.workers()
        row = workers.get(slot)
        fresh = row is not None and row["state"] == "ready" and row["pid"] not in old_pids
        return workers if fresh else None

    return check


def fully_ready(daemon: Daemon) -> Callable[[], Workers | None]:
    def check() -> Workers | None:
        status = daemon.status()
        return {w["slot"]: w for w in status["workers"]} if all_ready(status) else None

    return check


def ready_without(daemon: Daemon, gone: set[int]) -> Callable[[], Workers | None]:
    """A predicate: every slot has a ready worker, and none of them is one of ``gone``."""

    def check() -> Workers | None:
        workers = fully_ready(daemon)()
        return workers if workers and gone.isdisjoint(pids(workers).values()) else None

    return check


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_fd_count(pid: int) -> int:
    """The fd count once it stops changing (a control connection just closed is released)."""
    readings: list[int] = []

    def stable() -> bool:
        readings.append(fd_count(pid))
        return len(readings) >= 5 and len(set(readings[-5:])) == 1

    wait_for(stable, 10.0, f"the fd count of pid {pid} to settle")
    return readings[-1]


def mapped_paths(pid: int) -> set[str]:
    paths = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6:
            paths.add(fields[5])
    return paths


def texts(records: list[dict[str, Any]]) -> list[str]:
    return [record["text"] for record in records]


def index_of(lines: list[str], needle: str) -> int:
    """Index of the only line containing ``needle``."""
    found = [n for n, line in enumerate(lines) if needle in line]
    assert len(found) == 1, (needle, found, lines)
    return found[0]


def typo_manifest(app: App) -> int:
    """Add a misspelled key to ``[components.api]`` (the last table); return its line."""
    text = app.manifest.read_text() + 'capabilty = "network-client"\n'
    app.manifest.write_text(text)
    return len(text.splitlines())


# ── the pool ────────────────────────────────────────────────────────────


@pytest.mark.parametrize("profile", list(Profile), ids=[str(p) for p in Profile])
def test_pool_profile_forks_its_worker_count_of_ready_children(
    start_daemon: Callable[..., Daemon], profile: Profile
) -> None:
    daemon = start_daemon(profile=profile)

    status = daemon.status()

    assert status["daemon"]["profile"] == str(profile)
    assert status["daemon"]["workers_target"] == expected_workers(profile)
    workers = status["workers"]
    assert [w["slot"] for w in workers] == list(range(expected_workers(profile)))
    assert {w["state"] for w in workers} == {"ready"}
    worker_pids = [w["pid"] for w in workers]
    assert len(set(worker_pids)) == len(worker_pids)
    assert daemon.pid not in worker_pids
    for pid in worker_pids:
        assert psutil.Process(pid).ppid() == daemon.pid


def test_worker_killed_is_replaced_in_its_slot_and_sibling_untouched(daemon: Daemon) -> None:
    before = daemon.workers()

    os.kill(before[0]["pid"], signal.SIGKILL)

    after = daemon.wait_for(
        replaced(daemon, 0, {before[0]["pid"]}), REPLACE_TIMEOUT_S, "worker 0 to be replaced"
    )
    assert after[0]["restarts"] == 1
    assert "killed" in after[0]["last_exit"]
    assert after[0]["generation"] == before[0]["generation"] + 1
    assert after[1]["pid"] == before[1]["pid"]
    assert after[1]["state"] == "ready"
    assert after[1]["restarts"] == 0
    assert process_gone(before[0]["pid"], daemon.pid)


def test_worker_killed_faster_than_intensity_is_quarantined_then_restarted(
    daemon: Daemon,
) -> None:
    sibling = daemon.workers()[1]
    killed: set[int] = set()

    def sibling_untouched(workers: Workers) -> Workers:
        assert workers[1]["pid"] == sibling["pid"], workers
        assert workers[1]["state"] == "ready", workers
        return workers

    def slot0(predicate: Callable[[dict[str, Any]], bool]) -> Callable[[], Workers | None]:
        def check() -> Workers | None:
            workers = sibling_untouched(daemon.workers())
            return workers if 0 in workers and predicate(workers[0]) else None

        return check

    for kill in range(WORKER_INTENSITY + 1):
        workers = daemon.wait_for(
            slot0(lambda row: row["state"] == "ready" and row["pid"] not in killed),
            REPLACE_TIMEOUT_S,
            f"a ready worker 0 to kill (kill {kill + 1})",
        )
        if kill == WORKER_INTENSITY:
            # The budget is spent only if the earlier restarts fell in one period.
            assert workers[0]["restarts_in_window"] == WORKER_INTENSITY, workers[0]
        killed.add(workers[0]["pid"])
        os.kill(workers[0]["pid"], signal.SIGKILL)

    quarantined = daemon.wait_for(
        slot0(lambda row: row["state"] == "quarantined"), 10.0, "worker 0 to be quarantined"
    )
    assert 0 < quarantined[0]["quarantine_ends_in_s"] <= WORKER_QUARANTINE.base_s
    assert quarantined[0]["pid"] is None
    assert quarantined[0]["restarts"] == WORKER_INTENSITY
    assert daemon.status()["daemon"]["state"] == "running"

    back = daemon.wait_for(
        slot0(lambda row: row["state"] == "ready" and row["pid"] not in killed),
        WORKER_QUARANTINE.base_s + REPLACE_TIMEOUT_S,
        "worker 0 to come back after its quarantine",
    )
    assert back[0]["pid"] not in killed
    assert any("worker 0 crashed too often; quarantined" in t for t in texts(daemon.log_records()))


def test_worker_stopped_by_sigstop_is_killed_for_missing_heartbeats(daemon: Daemon) -> None:
    before = daemon.workers()
    stopped = before[0]["pid"]

    os.kill(stopped, signal.SIGSTOP)
    try:
        after = daemon.wait_for(
            replaced(daemon, 0, {stopped}),
            HEARTBEAT_TIMEOUT_S + REPLACE_TIMEOUT_S,
            "the stopped worker 0 to be replaced",
        )
    finally:
        try:
            os.kill(stopped, signal.SIGCONT)
        except ProcessLookupError:
            pass

    assert "heartbeat" in after[0]["last_exit"]
    assert after[1]["pid"] == before[1]["pid"]
    daemon.wait_for(lambda: process_gone(stopped, daemon.pid), 10.0, "the stopped worker to exit")


# ── stopping ────────────────────────────────────────────────────────────


def test_daemon_sigterm_exits_0_leaving_no_process_or_socket(daemon: Daemon) -> None:
    workers = [psutil.Process(pid) for pid in pids(daemon.workers()).values()]

    code = daemon.stop()

    assert code == EX_OK
    for worker in workers:
        # The daemon reaps its workers before it exits: none is even a zombie.
        assert not worker.is_running(), worker
    with pytest.raises(ProcessLookupError):
        os.killpg(daemon.pid, 0)
    assert not daemon.socket_path.exists()
    result = run_rusmctl("status", "--socket", str(daemon.socket_path), cwd=daemon.app.directory)
    assert result.returncode == EX_UNAVAILABLE
    assert str(daemon.socket_path) in result.stderr
    assert "stop: done" in daemon.read_log()


def test_daemon_second_sigterm_kills_a_worker_that_cannot_drain_and_exits_0(
    daemon: Daemon,
) -> None:
    workers = pids(daemon.workers())
    processes = [psutil.Process(pid) for pid in workers.values()]
    wedged = workers[0]
    # A stopped worker cannot drain: only a kill ends it, and heartbeats are
    # not checked while a worker drains. The drain's own kill would come
    # after DRAIN_TIMEOUT_S.
    os.kill(wedged, signal.SIGSTOP)
    daemon.signal(signal.SIGTERM)

    def waiting_on_the_wedged_worker() -> bool:
        status = daemon.status()
        rows = status["workers"]
        return status["daemon"]["state"] == "draining" and [r["pid"] for r in rows] == [wedged]

    daemon.wait_for(waiting_on_the_wedged_worker, EXIT_TIMEOUT_S, "the drain to wait on worker 0")
    daemon.signal(signal.SIGTERM)

    # Room for the drain timeout itself: without the second signal's kill
    # the daemon still exits, but its log then says the drain timed out.
    assert daemon.wait_exit(DRAIN_TIMEOUT_S + EXIT_TIMEOUT_S) == EX_OK
    log = daemon.read_log()
    assert "stop: signal SIGTERM again; killing workers now" in log
    assert f"exit worker 0 pid={wedged} killed (signal SIGTERM during the drain)" in log
    assert "did not drain in time" not in log
    for process in processes:
        # The daemon reaps its workers before it exits: none is even a zombie.
        assert not process.is_running(), process
    with pytest.raises(ProcessLookupError):
        os.killpg(daemon.pid, 0)


def test_daemon_sigkill_of_main_process_takes_every_worker_down(daemon: Daemon) -> None:
    worker_pids = list(pids(daemon.workers()).values())
    # A stopped worker cannot notice its channel closing; only PDEATHSIG ends it.
    os.kill(worker_pids[0], signal.SIGSTOP)
    try:
        daemon.signal(signal.SIGKILL)
        daemon.wait_exit(EXIT_TIMEOUT_S)

        for pid in worker_pids:
            wait_for(
                lambda pid=pid: process_gone(pid, daemon.pid),
                EXIT_TIMEOUT_S,
                f"worker pid {pid} to exit with its parent",
            )
    finally:
        try:
            os.kill(worker_pids[0], signal.SIGCONT)
        except ProcessLookupError:
            pass


# ── reloads ─────────────────────────────────────────────────────────────


def test_rusmctl_reload_with_broken_manifest_exits_1_naming_the_line(
    daemon: Daemon, app: App
) -> None:
    before = pids(daemon.workers())
    line = typo_manifest(app)

    result = daemon.ctl("reload")

    assert result.returncode == EX_REFUSED
    assert f"{app.manifest}:{line}:" in result.stderr
    assert "capabilty" in result.stderr
    status = daemon.status()
    assert status["daemon"]["state"] == "running"
    assert status["daemon"]["reloads"] == 0
    assert pids({w["slot"]: w for w in status["workers"]}) == before
    assert all_ready(status)


def test_sighup_with_broken_manifest_is_rejected_and_workers_kept(daemon: Daemon, app: App) -> None:
    before = pids(daemon.workers())
    line = typo_manifest(app)

    daemon.signal(signal.SIGHUP)

    rejected = daemon.wait_for(
        lambda: [t for t in texts(daemon.log_records()) if t.startswith("reload rejected")],
        REPLACE_TIMEOUT_S,
        "the reload to be rejected in the log",
    )
    assert f"{app.manifest}:{line}:" in rejected[0]
    assert "capabilty" in rejected[0]
    status = daemon.status()
    assert status["daemon"]["state"] == "running"
    assert status["daemon"]["reloads"] == 0
    assert pids({w["slot"]: w for w in status["workers"]}) == before


def test_rusmctl_reload_with_valid_manifest_rolls_workers_one_at_a_time(
    daemon: Daemon, app: App
) -> None:
    before = pids(daemon.workers())
    assert len(before) == 2
    app.write(extra='"GET /about" = "api#home"\n')

    result = daemon.ctl("reload")

    assert result.returncode == EX_OK, result.stderr
    after = pids(
        daemon.wait_for(
            ready_without(daemon, set(before.values())),
            2 * REPLACE_TIMEOUT_S,
            "both workers to be replaced",
        )
    )
    assert daemon.status()["daemon"]["reloads"] == 1
    lines = texts(daemon.log_records())
    exit0 = index_of(lines, f"exit worker 0 pid={before[0]} ")
    ready0 = index_of(lines, f"worker 0 ready pid={after[0]}")
    exit1 = index_of(lines, f"exit worker 1 pid={before[1]} ")
    ready1 = index_of(lines, f"worker 1 ready pid={after[1]}")
    assert exit0 < ready0 < exit1 < ready1, lines


# ── profiles ────────────────────────────────────────────────────────────


def test_rusmctl_profile_grows_and_shrinks_the_pool_live(daemon: Daemon) -> None:
    light = expected_workers(Profile.LIGHT)
    most = expected_workers(Profile.MAX)
    assert most > light
    first = pids(daemon.workers())

    grown = daemon.ctl("profile", "max")

    assert grown.returncode == EX_OK, grown.stderr
    assert f"profile max: {most} worker(s)" in grown.stdout
    workers = daemon.wait_for(fully_ready(daemon), REPLACE_TIMEOUT_S, "the pool to grow")
    assert sorted(workers) == list(range(most))
    assert {slot: pids(workers)[slot] for slot in first} == first
    extra = [pids(workers)[slot] for slot in range(light, most)]

    shrunk = daemon.ctl("profile", "light")

    assert shrunk.returncode == EX_OK, shrunk.stderr
    workers = daemon.wait_for(fully_ready(daemon), REPLACE_TIMEOUT_S, "the pool to shrink")
    assert pids(workers) == first
    for pid in extra:
        daemon.wait_for(lambda pid=pid: process_gone(pid, daemon.pid), 10.0, f"pid {pid} to exit")

    shown = daemon.ctl("profile")
    assert shown.returncode == EX_OK
    assert shown.stdout.strip() == f"profile light: {light} worker(s)"

    unknown = daemon.ctl("profile", "fast")
    assert unknown.returncode == EX_USAGE
    assert "'fast'" in unknown.stderr
    assert daemon.status()["daemon"]["profile"] == "light"


# ── systemd ─────────────────────────────────────────────────────────────


def notify_listener(app: App) -> tuple[socket.socket, Path]:
    """A bound datagram socket for ``NOTIFY_SOCKET`` (in the short app dir: 108-byte limit)."""
    path = app.directory / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(REPLACE_TIMEOUT_S)
    return sock, path


def notification(sock: socket.socket) -> dict[str, str]:
    fields = sock.recv(4096).decode().split("\n")
    return dict(field.split("=", 1) for field in fields)


def test_systemd_notify_ready_reloading_ready_stopping_in_order(
    start_daemon: Callable[..., Daemon], app: App
) -> None:
    sock, path = notify_listener(app)
    with sock:
        daemon = start_daemon(env={"NOTIFY_SOCKET": str(path)})
        ready = notification(sock)
        daemon.signal(signal.SIGHUP)
        reloading = notification(sock)
        ready_again = notification(sock)
        daemon.wait_for(fully_ready(daemon), REPLACE_TIMEOUT_S, "the reload's roll to finish")
        code = daemon.stop()
        stopping = notification(sock)
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(4096)

    assert code == EX_OK
    assert ready["READY"] == "1"
    assert f"{expected_workers(Profile.LIGHT)} worker(s)" in ready["STATUS"]
    assert reloading["RELOADING"] == "1"
    assert 0 < int(reloading["MONOTONIC_USEC"]) <= time.monotonic_ns() // 1000
    assert ready_again["READY"] == "1"
    assert stopping == {"STOPPING": "1"}


# ── the control socket ──────────────────────────────────────────────────


def connect(path: Path) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(REPLACE_TIMEOUT_S)
    conn.connect(str(path))
    return conn


def test_control_socket_is_private_and_survives_bad_frames(daemon: Daemon) -> None:
    assert stat.S_IMODE(os.stat(daemon.socket_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(daemon.socket_path.parent).st_mode) == 0o700

    with connect(daemon.socket_path) as bystander, connect(daemon.socket_path) as garbage:
        garbage.sendall(struct.pack(">I", 8) + b"not json")
        reply = read_frame(garbage)
        assert reply["ok"] is False
        assert "not JSON" in reply["error"]
        assert garbage.recv(1) == b""

        bystander.sendall(encode_frame({"command": "status", "args": {}}))
        reply = read_frame(bystander)
        assert reply["ok"] is True
        assert reply["result"]["daemon"]["pid"] == daemon.pid

    with connect(daemon.socket_path) as oversized:
        oversized.sendall(struct.pack(">I", 0x7FFFFFFF))
        reply = read_frame(oversized)
        assert reply["ok"] is False
        assert str(MAX_FRAME_BYTES) in reply["error"]
        assert oversized.recv(1) == b""
    assert all_ready(daemon.status())

    unknown = daemon.request("explode")
    assert unknown["ok"] is False
    assert unknown["code"] == EX_USAGE
    assert "explode" in unknown["error"]


# ── resources ───────────────────────────────────────────────────────────

KILLS = 20


def test_worker_kills_leave_no_zombie_and_no_descriptor_behind(daemon: Daemon) -> None:
    baseline = settled_fd_count(daemon.pid)
    target = len(daemon.workers())

    for kill in range(KILLS):
        slot = kill % target
        victim = daemon.workers()[slot]["pid"]
        os.kill(victim, signal.SIGKILL)
        daemon.wait_for(
            ready_without(daemon, {victim}),
            REPLACE_TIMEOUT_S + WORKER_QUARANTINE.max_s,
            f"worker {slot} replaced after kill {kill + 1}",
        )

    children = psutil.Process(daemon.pid).children()
    assert [c for c in children if c.status() == psutil.STATUS_ZOMBIE] == []
    # The workers and the node endpoint (``python -m rusmd.node``), nothing else.
    endpoints = [c for c in children if "rusmd.node" in c.cmdline()]
    assert len(endpoints) == 1
    assert len(children) == target + 1
    daemon.wait_for(
        lambda: fd_count(daemon.pid) == baseline,
        10.0,
        f"the main process's fd count to return to {baseline}",
    )


# ── the mesh and the listeners ──────────────────────────────────────────


def mesh_complete(
    daemon: Daemon, dead: tuple[int, int] | None = None
) -> Callable[[], Workers | None]:
    """Every worker lists every other slot.

    With ``dead`` (slot, pid): that slot must have a new worker, and only
    heartbeats sent a full interval after it was forked count, so a
    sibling's report from before the kill cannot pass for a healed mesh.
    """

    def check() -> Workers | None:
        workers = fully_ready(daemon)()
        if not workers:
            return None
        if dead is not None:
            slot, pid = dead
            if workers[slot]["pid"] == pid:
                return None
            fresh_since_s = workers[slot]["uptime_s"] - HEARTBEAT_INTERVAL_S
            if any(row["heartbeat_age_s"] >= fresh_since_s for row in workers.values()):
                return None
        for slot, row in workers.items():
            if row["mesh_peers"] != sorted(set(workers) - {slot}):
                return None
        return workers

    return check


def test_mesh_every_worker_reaches_every_sibling_again_after_a_kill(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(profile=Profile.BALANCED)
    assert expected_workers(Profile.BALANCED) == 3

    workers = daemon.wait_for(mesh_complete(daemon), REPLACE_TIMEOUT_S, "a complete mesh")
    os.kill(workers[1]["pid"], signal.SIGKILL)

    after = daemon.wait_for(
        mesh_complete(daemon, dead=(1, workers[1]["pid"])), REPLACE_TIMEOUT_S, "the mesh to heal"
    )
    assert after[1]["mesh_peers"] == [0, 2]
    assert after[0]["pid"] == workers[0]["pid"]
    assert after[2]["pid"] == workers[2]["pid"]


def test_listener_accepts_connections_while_its_only_worker_restarts(
    start_daemon: Callable[..., Daemon], app: App
) -> None:
    daemon = start_daemon(cpus=1)
    [only] = daemon.workers().values()

    os.kill(only["pid"], signal.SIGKILL)
    with socket.create_connection(("127.0.0.1", app.serve_port), timeout=10.0) as conn:
        assert conn.getpeername() == ("127.0.0.1", app.serve_port)

    daemon.wait_for(replaced(daemon, 0, {only["pid"]}), REPLACE_TIMEOUT_S, "the worker to return")


# ── fork-clean main process ─────────────────────────────────────────────


def test_main_process_maps_no_worker_library_and_runs_one_thread(daemon: Daemon) -> None:
    main_paths = mapped_paths(daemon.pid)
    worker_paths = mapped_paths(daemon.workers()[0]["pid"])

    for library in WORKER_ONLY_LIBRARIES:
        assert not [p for p in main_paths if library in p], library
    assert any("uvloop" in p for p in worker_paths)
    assert os.listdir(f"/proc/{daemon.pid}/task") == [str(daemon.pid)]


# ── start-up failures ───────────────────────────────────────────────────


def test_daemon_invalid_manifest_exits_78_printing_the_line(
    start_daemon: Callable[..., Daemon], app: App
) -> None:
    line = typo_manifest(app)

    daemon = start_daemon(wait=False)

    assert daemon.wait_exit(EXIT_TIMEOUT_S) == EX_CONFIG
    log = daemon.read_log()
    assert f"{app.manifest}:{line}: components.api: unknown key 'capabilty'" in log
    assert not daemon.socket_path.exists()


def test_daemon_listen_port_in_use_exits_69_naming_the_listener(
    start_daemon: Callable[..., Daemon], app: App
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", app.serve_port))
        squatter.listen()

        daemon = start_daemon(wait=False)

        assert daemon.wait_exit(EXIT_TIMEOUT_S) == EX_UNAVAILABLE
    log = daemon.read_log()
    assert f"serve[0]: cannot listen on 127.0.0.1:{app.serve_port}" in log
    assert not daemon.socket_path.exists()


@pytest.mark.parametrize("delay_s", [0.0, 0.05, 0.3, 1.0])
def test_sigterm_during_a_worker_roll_exits_0(
    start_daemon: Callable[..., Daemon], delay_s: float
) -> None:
    """Stopping at any moment of ``restart workers`` drains what is there and exits 0."""
    daemon = start_daemon()
    assert daemon.request("restart", what="workers")["ok"]
    time.sleep(delay_s)  # a point in the roll: before, during or after a worker's drain

    daemon.signal(signal.SIGTERM)

    assert daemon.wait_exit(EXIT_TIMEOUT_S) == EX_OK, daemon.read_log()
    assert "has terminated" not in daemon.read_log()


def test_restart_after_sigterm_is_refused_and_the_daemon_exits_0(daemon: Daemon) -> None:
    daemon.signal(signal.SIGTERM)
    reply: dict[str, Any] = {"ok": False}
    try:
        reply = daemon.request("restart", what="workers")
    except OSError:
        pass  # the socket may already be gone: nothing was restarted either way
    assert not reply["ok"]
    assert daemon.wait_exit(EXIT_TIMEOUT_S) == EX_OK
