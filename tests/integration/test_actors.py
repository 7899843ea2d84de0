"""Actors on the real daemon: messages, links, monitors, names, timers, call, supervisors.

Runs in: any (the test process; ``rusmd`` runs as a subprocess with two
workers, so processes spawned one after the other land on different
workers).

The guest is ``tests/guests/actor.c``, a command interpreter: a test
sends it text with ``rusmctl send`` (``link 3001``, ``call 2000 500
hi``, ``crash``…), and it logs what it receives and each command's
result (``result link=0``). The names follow OTP's ``supervisor_SUITE``
and RUSM's process tests where a test is ported from them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rusmd.errors import EX_OK
from tests.integration.actorkit import SETTLE_S, Actors, actor_wasm, write_actor_app
from tests.integration.conftest import App, Daemon, wait_for

__all__ = ["actor_wasm"]  # a fixture, used by name


@pytest.fixture
def actors(app: App, actor_wasm: Path, start_daemon: Callable[..., Daemon]) -> Iterator[Actors]:
    write_actor_app(
        app,
        actor_wasm,
        {
            "actor": 'capability = "boss"',
            "sandboxed": 'capability = "sandboxed"',
            "greeter": 'capability = "boss"\nresident = true',
        },
    )
    yield Actors(start_daemon())


# ── messages ────────────────────────────────────────────────────────────


def test_ping_pong_between_processes_on_different_workers(actors: Actors) -> None:
    a = actors.spawn("actor", slot=0)
    b = actors.spawn("actor", slot=1)
    assert actors.result(a, "actor", "pingpong", f"pingpong {b} 200") == "200"
    pings = [t for t in actors.lines(f"actor#{b}") if t == f"got message from={a} data=ping"]
    assert len(pings) == 200


def test_messages_between_one_pair_arrive_in_order(actors: Actors) -> None:
    a = actors.spawn("actor", slot=0)
    b = actors.spawn("actor", slot=1)
    for i in range(30):
        actors.send(a, f"send {b} n{i}")
    wait_for(
        lambda: len([t for t in actors.lines(f"actor#{b}") if "data=n" in t]) == 30 or None,
        SETTLE_S,
        "30 messages to arrive",
    )
    got = [t.rsplit("data=", 1)[1] for t in actors.lines(f"actor#{b}") if "data=n" in t]
    assert got == [f"n{i}" for i in range(30)]


def test_send_to_a_dead_local_pid_returns_noproc(actors: Actors) -> None:
    a = actors.spawn("actor", slot=0)
    b = actors.spawn("actor", slot=0)
    actors.send(b, "exit 0")
    actors.exit_line(b, "actor")
    assert actors.result(a, "actor", "send", f"send {b} hello") == "-1"


def test_whereis_a_resident_on_another_worker_and_call_it(actors: Actors) -> None:
    resident = wait_for(
        lambda: next(
            (r for r in actors.daemon.status()["residents"] if r["state"] == "running"), None
        ),
        SETTLE_S,
        "the greeter resident to run",
    )
    other = 1 - resident["worker"]
    a = actors.spawn("actor", slot=other)
    assert actors.result(a, "actor", "whereis", "whereis greeter") == str(resident["pid"])
    assert actors.result(a, "actor", "call", "call_name greeter 2000 hello") == "8 reply=re:hello"


# ── links, trap_exit, monitors ──────────────────────────────────────────


@pytest.mark.parametrize("same_worker", [True, False], ids=["same_worker", "across_workers"])
def test_link_cascades_with_the_original_reason(actors: Actors, same_worker: bool) -> None:
    a = actors.spawn("actor", slot=0)
    b = actors.spawn("actor", slot=0 if same_worker else 1)
    assert actors.result(a, "actor", "link", f"link {b}") == "0"
    actors.send(b, "crash")
    assert actors.exit_line(b, "actor").startswith(f"exit actor#{b} crashed")
    # The exit line names the peer by label when it is known on this worker.
    peer = f"actor#{b}" if same_worker else f"#{b}"
    assert actors.exit_line(a, "actor") == f"exit actor#{a} crashed (linked to {peer})"


def test_normal_exit_does_not_cascade_over_a_link(actors: Actors) -> None:
    a = actors.spawn("actor", slot=0)
    b = actors.spawn("actor", slot=1)
    assert actors.result(a, "actor", "link", f"link {b}") == "0"
    actors.send(b, "exit 0")
    assert actors.exit_line(b, "actor") == f"exit actor#{b} normal"
    assert actors.result(a, "actor", "self", "self") == str(a)


def test_trap_exit_turns_a_linked_crash_into_a_message(actors: Actors) -> None:
    a = actors.spawn("actor", slot=0)
    b = actors.spawn("actor", slot=1)
    assert actors.result(a, "actor", "trap_exit", "trap_exit 1") == "0"
    assert actors.result(a, "actor", "link", f"link {b}") == "0"
    actors.send(b, "crash")
    actors.line(a, "actor", f"got exit from={b} reason=crashed")
    assert actors.alive(a)


def test_kill_is_untrappable_and_links_see_killed(actors: Actors) -> None:
    a = actors.spawn("actor", slot=0)
    b = actors.spawn("actor", slot=1)
    c = actors.spawn("actor", slot=0)
    assert actors.result(b, "actor", "trap_exit", "trap_exit 1") == "0"
    assert actors.result(a, "actor", "trap_exit", "trap_exit 1") == "0"
    assert actors.result(a, "actor", "link", f"link {b}") == "0"
    assert actors.result(c, "actor", "kill", f"kill {b}") == "0"
    assert actors.exit_line(b, "actor") == f"exit actor#{b} killed (killed by #{c})"
    actors.line(a, "actor", f"got exit from={b} reason=killed")


def test_monitor_delivers_down_with_the_reason(actors: Actors) -> None:
    a = actors.spawn("actor", slot=0)
    b = actors.spawn("actor", slot=1)
    ref = actors.result(a, "actor", "monitor", f"monitor {b}")
    assert int(ref) > 0
    actors.send(b, "exit 3")
    actors.line(a, "actor", f"got down ref={ref} from={b} reason=crashed")


@pytest.mark.parametrize("where", ["local", "remote", "never_existed"])
def test_monitor_of_a_dead_pid_is_down_noproc_at_once(actors: Actors, where: str) -> None:
    a = actors.spawn("actor", slot=0)
    if where == "never_existed":
        dead = 999_999_001
    else:
        dead = actors.spawn("actor", slot=0 if where == "local" else 1)
        actors.send(dead, "exit 0")
        actors.exit_line(dead, "actor")
    ref = actors.result(a, "actor", "monitor", f"monitor {dead}")
    actors.line(a, "actor", f"got down ref={ref} from={dead} reason=noproc")


def test_demonitor_means_no_down(actors: Actors) -> None:
    a = actors.spawn("actor", slot=0)
    b = actors.spawn("actor", slot=1)
    ref = actors.result(a, "actor", "monitor", f"monitor {b}")
    assert actors.result(a, "actor", "demonitor", f"demonitor {ref}") == "0"
    actors.send(b, "crash")
    actors.exit_line(b, "actor")
    assert actors.result(a, "actor", "self", "self") == str(a)
    assert not [t for t in actors.lines(f"actor#{a}") if t.startswith("got down")]


# ── names ───────────────────────────────────────────────────────────────


def test_names_are_node_wide_and_released_on_exit(actors: Actors) -> None:
    a = actors.spawn("actor", slot=0)
    b = actors.spawn("actor", slot=1)
    assert actors.result(a, "actor", "register", "register keeper") == "0"
    assert actors.result(b, "actor", "whereis", "whereis keeper") == str(a)
    assert actors.result(b, "actor", "register", "register keeper") == "-9"
    actors.send(a, "exit 0")
    actors.exit_line(a, "actor")
    wait_for(
        lambda: actors.result(b, "actor", "whereis", "whereis keeper") == "-4" or None,
        SETTLE_S,
        "the name to be released",
    )
    assert actors.result(b, "actor", "register", "register keeper") == "0"


def test_a_guest_unregisters_only_its_own_names(actors: Actors) -> None:
    a = actors.spawn("actor", slot=0)
    b = actors.spawn("actor", slot=1)
    assert actors.result(a, "actor", "register", "register mine") == "0"
    assert actors.result(b, "actor", "unregister", "unregister mine") == "-2"
    assert actors.result(b, "actor", "whereis", "whereis mine") == str(a)
    assert actors.result(a, "actor", "unregister", "unregister mine") == "0"


# ── call, timers ────────────────────────────────────────────────────────


def test_call_returns_the_reply(actors: Actors) -> None:
    a = actors.spawn("actor", slot=0)
    b = actors.spawn("actor", slot=1)
    assert actors.result(a, "actor", "call", f"call {b} 2000 hi") == "5 reply=re:hi"


def test_call_to_a_dead_pid_fails_with_noproc(actors: Actors) -> None:
    a = actors.spawn("actor", slot=0)
    assert actors.result(a, "actor", "call", "call 999999001 60000 hi").startswith("-1")


def test_call_to_a_killed_callee_fails_fast(actors: Actors) -> None:
    a = actors.spawn("actor", slot=0)
    b = actors.spawn("actor", slot=1)
    actors.send(a, f"call {b} 600000 sleep 600000")
    actors.line(b, "actor", f"got call from={a}")
    started = time.monotonic()
    assert actors.daemon.ctl("kill", f"#{b}").returncode == EX_OK
    line = actors.line(a, "actor", "result call=")
    # The call had ten minutes left: its end came from the callee's death.
    assert line.startswith("result call=-1"), line
    assert time.monotonic() - started < 300


def test_call_times_out_and_a_late_reply_is_dropped(actors: Actors) -> None:
    a = actors.spawn("actor", slot=0)
    b = actors.spawn("actor", slot=1)
    assert actors.result(a, "actor", "call", f"call {b} 100 sleep 600").startswith("-6")
    actors.line(b, "actor", "result sleep=")
    assert actors.result(a, "actor", "self", "self") == str(a)
    assert not [t for t in actors.lines(f"actor#{a}") if "re:sleep" in t]


def test_a_cancelled_timer_never_fires(actors: Actors) -> None:
    a = actors.spawn("actor", slot=0)
    # Had it not been cancelled, the first timer would fire before the second.
    ref = actors.result(a, "actor", "send_after", f"send_after {a} 3000 cancelled")
    assert actors.result(a, "actor", "cancel_timer", f"cancel_timer {ref}") == "0"
    fired = actors.result(a, "actor", "send_after", f"send_after {a} 3500 kept")
    actors.line(a, "actor", f"got timer ref={fired} data=kept")
    assert not [t for t in actors.lines(f"actor#{a}") if "data=cancelled" in t]
    assert actors.result(a, "actor", "cancel_timer", f"cancel_timer {fired}") == "-4"


# ── sandboxing ──────────────────────────────────────────────────────────


def test_a_sandboxed_guest_cannot_kill_inspect_or_unregister_others(actors: Actors) -> None:
    other = actors.spawn("actor", slot=0)
    assert actors.result(other, "actor", "register", "register precious") == "0"
    guest = actors.spawn("sandboxed", slot=1)
    assert actors.result(guest, "sandboxed", "kill", f"kill {other}") == "-2"
    assert actors.result(guest, "sandboxed", "exit_signal", f"exit_signal {other} crashed") == "-2"
    assert actors.result(guest, "sandboxed", "is_alive", f"is_alive {other}") == "-2"
    assert actors.result(guest, "sandboxed", "info", f"info {other}").startswith("-2")
    assert actors.result(guest, "sandboxed", "unregister", "unregister precious") == "-2"
    assert actors.result(guest, "sandboxed", "list", "list") == "1"
    assert actors.alive(other)
    assert actors.result(guest, "sandboxed", "self", "self") == str(guest)


def test_rusmctl_list_shows_links_monitors_names_and_mailbox(actors: Actors) -> None:
    a = actors.spawn("actor", slot=0)
    b = actors.spawn("actor", slot=1)
    assert actors.result(a, "actor", "register", "register listed") == "0"
    assert actors.result(a, "actor", "link", f"link {b}") == "0"
    assert int(actors.result(a, "actor", "monitor", f"monitor {b}")) > 0
    actors.send(a, "sleep 3000")
    for i in range(3):
        actors.send(a, f"queued {i}")
    rows = wait_for(
        lambda: (
            [
                row
                for row in json.loads(actors.daemon.ctl("list", "--json").stdout)["processes"]
                if row["pid"] == a and row["mailbox"] >= 3
            ]
            or None
        ),
        SETTLE_S,
        "three messages queued",
    )
    row = rows[0]
    assert row["links"] == [b]
    assert row["monitors"] == [b]
    assert row["names"] == ["listed"]
    text = actors.daemon.ctl("list").stdout
    assert "MBOX" in text
    assert re.search(rf"actor#{a} .* 3\s+listed\s+#{b}\s+#{b}", text), text


# ── residents ───────────────────────────────────────────────────────────


def test_kill_9_of_a_residents_worker_brings_it_back_with_its_name(actors: Actors) -> None:
    daemon = actors.daemon
    resident = wait_for(
        lambda: next((r for r in daemon.status()["residents"] if r["state"] == "running"), None),
        SETTLE_S,
        "the greeter resident to run",
    )
    old_pid, slot = resident["pid"], resident["worker"]
    watcher = actors.spawn("actor", slot=1 - slot)
    ref = actors.result(watcher, "actor", "monitor", f"monitor {old_pid}")
    worker_pid = daemon.workers()[slot]["pid"]
    killed_at = time.monotonic()
    os.kill(worker_pid, signal.SIGKILL)
    back = wait_for(
        lambda: next(
            (
                r
                for r in daemon.status()["residents"]
                if r["state"] == "running" and r["pid"] != old_pid
            ),
            None,
        ),
        SETTLE_S,
        "the resident to be back",
    )
    took = time.monotonic() - killed_at
    print(f"resident back after {took:.3f}s")
    assert back["name"] == "greeter"
    actors.line(watcher, "actor", f"got down ref={ref} from={old_pid} reason=killed")
    assert actors.result(watcher, "actor", "whereis", "whereis greeter") == str(back["pid"])


def test_a_crashing_resident_is_restarted_then_quarantined(
    app: App, actor_wasm: Path, start_daemon: Callable[..., Daemon]
) -> None:
    write_actor_app(
        app, actor_wasm, {"flaky": 'capability = "boss"\nresident = true\nintensity = 2'}
    )
    actors = Actors(start_daemon())
    daemon = actors.daemon
    pids: list[int] = []
    for crash in range(3):
        row = wait_for(
            lambda: next(
                (
                    r
                    for r in daemon.status()["residents"]
                    if r["state"] == "running" and r["pid"] not in pids
                ),
                None,
            ),
            SETTLE_S,
            f"the resident to run (crash {crash})",
        )
        pids.append(row["pid"])
        actors.line(row["pid"], "flaky", "ready")
        actors.send("flaky", "crash")
    quarantined = wait_for(
        lambda: next(
            (r for r in daemon.status()["residents"] if r["state"] == "quarantined"), None
        ),
        SETTLE_S,
        "the resident to be quarantined",
    )
    assert quarantined["restarts"] == 2
    assert "quarantined" in daemon.ctl("status").stdout


def test_resident_moved_by_reload_after_reload_is_never_quarantined(
    app: App, actor_wasm: Path, start_daemon: Callable[..., Daemon]
) -> None:
    """Replacing its worker moves a resident: five reloads in a row are no crashes."""
    write_actor_app(
        app,
        actor_wasm,
        {
            "actor": 'capability = "boss"',
            "greeter": 'capability = "boss"\nresident = true\nintensity = 2',
        },
    )
    actors = Actors(start_daemon())
    daemon = actors.daemon

    def running() -> dict[str, Any] | None:
        return next((r for r in daemon.status()["residents"] if r["state"] == "running"), None)

    first = wait_for(running, SETTLE_S, "the greeter to run")
    for _ in range(5):
        before = {w["pid"] for w in daemon.status()["workers"]}
        assert daemon.ctl("reload").returncode == 0

        def rolled(before: set[int] = before) -> bool:
            rows = daemon.status()["workers"]
            return not {w["pid"] for w in rows} & before and all(
                w["state"] == "ready" for w in rows
            )

        daemon.wait_for(rolled, SETTLE_S, "the workers to be replaced")

    back = wait_for(running, SETTLE_S, "the greeter to run after the reloads")
    assert back["pid"] != first["pid"]
    assert back["restarts"] == 0
    assert "quarantined" not in daemon.read_log()
    assert "moving, its worker is being replaced" in daemon.read_log()
    assert actors.result(actors.spawn("actor"), "actor", "whereis", "whereis greeter") == str(
        back["pid"]
    )


def test_resident_name_is_registered(actors: Actors) -> None:
    resident = wait_for(
        lambda: next(
            (r for r in actors.daemon.status()["residents"] if r["state"] == "running"), None
        ),
        SETTLE_S,
        "the greeter resident to run",
    )
    a = actors.spawn("actor")
    assert actors.result(a, "actor", "whereis", "whereis greeter") == str(resident["pid"])
    assert re.match(r"^\d+$", str(resident["pid"]))


def test_a_large_message_crosses_workers_through_shared_memory_intact(actors: Actors) -> None:
    a = actors.spawn("actor", slot=0)
    b = actors.spawn("actor", slot=1)
    # Over the 64 KiB mark, so it travels in a memfd beside the mesh frame,
    # there as a call and back as its reply ("re:" + the request).
    body = "".join(f"{i:07d}" for i in range(15_000))
    actors.send(a, f"call {b} 5000 {body}")
    line = actors.line(a, "actor", "result call=")
    size, _, reply = line.removeprefix("result call=").partition(" reply=")
    assert int(size) == len(body) + 3
    # The guest logs only the start of the reply; it must be the start, in order.
    shown = reply.split(" …")[0]
    assert ("re:" + body).startswith(shown) and len(shown) > 4_000
