"""The worker pool, step by step: fake fork, kill, reaper and clock; no process, no sleep.

Each test plays the workers through ``PoolHarness`` (tests/unit/main/harness.py)
and checks what the pool decided: which slots it forks again, which it
signals, what it logs and shows in ``rusmctl status``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from rusmd.channel import Answer, Log, NameClaim, Stop
from rusmd.config import Overrides
from rusmd.config.model import Manifest
from rusmd.log import LogRecord
from rusmd.main.compile import CompileResult, CompileRun, failed
from rusmd.main.loop import DRAIN_TIMEOUT_S, DaemonState, MainProcess, _Compiling
from rusmd.main.pool import (
    HEARTBEAT_TIMEOUT_S,
    READY_TIMEOUT_S,
    WORKER_INTENSITY,
    WORKER_QUARANTINE,
    WORKER_SHUTDOWN_S,
    WorkerState,
)
from tests.unit.main.harness import PoolHarness, exited, killed_by


@pytest.fixture
def make_pool() -> Iterator[type[PoolHarness]]:
    made: list[PoolHarness] = []

    class Harness(PoolHarness):
        def __init__(self, count: int) -> None:
            super().__init__(count)
            made.append(self)

    yield Harness
    for harness in made:
        harness.close()


class FakeCompileRun:
    """A compile run whose one child is still compiling until it is cancelled."""

    def __init__(self) -> None:
        self.cancelled = False
        self.results: dict[str, CompileResult] = {}

    @property
    def done(self) -> bool:
        return self.cancelled

    def cancel(self) -> None:
        self.cancelled = True
        self.results = {"api": failed("api", "component api: compile cancelled")}

    def tick(self) -> None:
        pass


@pytest.fixture
def daemon_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[PoolHarness], MainProcess]]:
    """Builds a ``MainProcess`` (never run) whose pool is a harness's, logging to the harness."""
    for variable in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(variable, raising=False)
    made: list[MainProcess] = []

    def build(h: PoolHarness) -> MainProcess:
        main = MainProcess(Manifest(path="", app_dir="/"), Overrides(), "", tmp_path / "rusmd.sock")
        made.append(main)
        main.log = h.pool.log
        main.pool = h.pool
        main.state = DaemonState.RUNNING
        return main

    yield build
    for main in made:
        main.selector.close()
        os.close(main._wakeup_r)
        os.close(main._wakeup_w)


def stops(harness: PoolHarness, pid: int) -> list[Stop]:
    return [m for m in harness.received(pid) if isinstance(m, Stop)]


def forks(harness: PoolHarness) -> int:
    return len(harness.os.boots)


# ── start and crash ───────────────────────────────────────────────────────


def test_pool_start_forks_every_slot_and_claims_each_pid(make_pool: type[PoolHarness]) -> None:
    h = make_pool(2)

    assert sorted(h.pool.workers) == [0, 1]
    assert [boot.slot for boot in h.os.boots.values()] == [0, 1]
    assert all(h.reaper.claimed(h.pid(slot)) for slot in (0, 1))
    assert all(h.handle(slot).state is WorkerState.STARTING for slot in (0, 1))


def test_worker_saying_ready_is_ready_and_told_to_the_events(make_pool: type[PoolHarness]) -> None:
    h = make_pool(2)

    h.ready(1)

    assert h.handle(1).state is WorkerState.READY
    assert h.handle(0).state is WorkerState.STARTING
    assert h.events.calls == [("ready", 1)]
    assert ("info", f"worker 1 ready pid={h.pid(1)}") in h.lines


def test_worker_crashing_is_forked_again_in_its_slot(make_pool: type[PoolHarness]) -> None:
    h = make_pool(2)
    h.ready(0, 1)
    old = h.pid(0)

    h.exit(old, exited(1))

    assert h.pid(0) != old
    assert h.handle(0).state is WorkerState.STARTING
    assert not h.reaper.claimed(old)
    assert h.reaper.claimed(h.pid(0))
    assert h.pool.history[0].restarts == 1
    assert h.pool.history[0].last_exit == "crashed (exit status 1)"
    assert ("gone", 0, "crashed") in h.events.calls
    assert ("error", f"exit worker 0 pid={old} crashed (exit status 1)") in h.lines


def test_worker_killed_by_a_signal_from_outside_exits_killed(make_pool: type[PoolHarness]) -> None:
    h = make_pool(1)
    h.ready(0)
    old = h.pid(0)

    h.exit(old, killed_by(signal.SIGKILL))

    assert h.pool.history[0].last_exit == "killed (killed by SIGKILL)"
    assert ("warn", f"exit worker 0 pid={old} killed (killed by SIGKILL)") in h.lines
    assert h.pid(0) != old


def test_worker_dying_of_a_fault_signal_exits_crashed(make_pool: type[PoolHarness]) -> None:
    h = make_pool(1)
    h.ready(0)

    h.exit(h.pid(0), killed_by(signal.SIGSEGV))

    assert h.pool.history[0].last_exit == "crashed (killed by SIGSEGV)"


def test_worker_crashing_past_intensity_is_quarantined_then_forked_again(
    make_pool: type[PoolHarness],
) -> None:
    h = make_pool(2)
    h.ready(0, 1)
    for _ in range(WORKER_INTENSITY):
        h.exit(h.pid(0), exited(1))
        h.ready(0)
        h.clock.advance(0.1)
    forked = forks(h)

    h.exit(h.pid(0), exited(1))

    assert 0 not in h.pool.workers
    assert h.pool.quarantined == {0: h.clock.now + WORKER_QUARANTINE.base_s}
    assert forks(h) == forked
    assert ("error", "supervisor report: worker 0 crashed too often; quarantined for 1.0s") in (
        h.lines
    )
    assert 1 in h.pool.workers  # its sibling is left alone
    h.clock.advance(WORKER_QUARANTINE.base_s / 2)
    h.pool.tick()
    assert forks(h) == forked
    h.clock.advance(WORKER_QUARANTINE.base_s / 2)
    h.pool.tick()
    assert forks(h) == forked + 1
    assert 0 in h.pool.workers and h.pool.quarantined == {}
    assert h.pool.history[0].restarts == WORKER_INTENSITY  # the quarantine's end is no restart


def test_quarantined_worker_restarted_by_the_operator_is_forked_at_once(
    make_pool: type[PoolHarness],
) -> None:
    h = make_pool(1)
    h.ready(0)
    for _ in range(WORKER_INTENSITY + 1):
        h.exit(h.pid(0), exited(1))
        if 0 in h.pool.workers:
            h.ready(0)
    assert 0 in h.pool.quarantined

    assert h.pool.restart_slot(0)

    assert 0 in h.pool.workers and 0 not in h.pool.quarantined


# ── deadlines ─────────────────────────────────────────────────────────────


def test_worker_not_ready_in_time_is_killed_and_forked_again(
    make_pool: type[PoolHarness],
) -> None:
    h = make_pool(1)
    pid = h.pid(0)
    h.clock.advance(READY_TIMEOUT_S)
    h.pool.tick()
    assert h.os.kills == []

    h.clock.advance(0.1)
    h.pool.tick()

    assert h.kills_of(pid) == [signal.SIGKILL, signal.SIGCONT]
    assert ("warn", f"worker 0 pid={pid} killed: not ready after 10s") in h.lines
    h.pool.tick()
    assert h.kills_of(pid) == [signal.SIGKILL, signal.SIGCONT]  # once
    h.exit(pid, killed_by(signal.SIGKILL))
    assert h.pool.history[0].last_exit == "killed (not ready after 10s)"
    assert h.pid(0) != pid


def test_worker_whose_heartbeats_stop_is_killed(make_pool: type[PoolHarness]) -> None:
    h = make_pool(1)
    h.ready(0)
    pid = h.pid(0)
    h.clock.advance(HEARTBEAT_TIMEOUT_S - 1)
    h.heartbeat(0)
    h.clock.advance(HEARTBEAT_TIMEOUT_S - 1)
    h.pool.tick()
    assert h.os.kills == []

    h.clock.advance(2)
    h.pool.tick()

    assert h.kills_of(pid) == [signal.SIGKILL, signal.SIGCONT]
    h.exit(pid, killed_by(signal.SIGKILL))
    assert h.pool.history[0].last_exit == "killed (no heartbeat for 5s)"


def test_draining_worker_not_done_in_time_is_killed(make_pool: type[PoolHarness]) -> None:
    h = make_pool(1)
    h.ready(0)
    pid = h.pid(0)

    h.pool.stop(2.0)

    assert stops(h, pid) == [Stop(timeout_s=2.0)]
    h.clock.advance(2.1)
    h.pool.tick()
    assert h.kills_of(pid) == [signal.SIGKILL, signal.SIGCONT]
    h.exit(pid, killed_by(signal.SIGKILL))
    assert h.pool.history[0].last_exit == "killed (did not drain in time)"
    assert h.pool.idle


def test_pool_stop_again_with_a_shorter_timeout_kills_at_the_shorter_deadline(
    make_pool: type[PoolHarness],
) -> None:
    h = make_pool(2)
    h.ready(0, 1)
    pids = [h.pid(0), h.pid(1)]
    h.pool.stop(30.0)

    h.pool.stop(1.0)

    h.step(1.1)
    assert [h.kills_of(pid) for pid in pids] == [[signal.SIGKILL, signal.SIGCONT]] * 2


def test_worker_stopped_by_a_roll_is_still_killed_when_the_pool_stop_follows(
    make_pool: type[PoolHarness],
) -> None:
    h = make_pool(3)
    h.ready(0, 1, 2)
    old = [h.pid(slot) for slot in range(3)]
    h.pool.roll(Manifest(path="/app/rusm.toml", app_dir="/app"))
    assert h.handle(0).state is WorkerState.STOPPING  # the roll's first, wedged from now on

    h.pool.stop(30.0)

    assert all(handle.stop_deadline is not None for handle in h.pool.workers.values())
    h.step(WORKER_SHUTDOWN_S + 0.1)  # the roll's own drain timeout, which it keeps
    assert h.kills_of(old[0]) == [signal.SIGKILL, signal.SIGCONT]
    assert [h.kills_of(pid) for pid in old[1:]] == [[], []]
    h.exit(old[0], killed_by(signal.SIGKILL))
    assert h.pool.history[0].last_exit == "killed (did not drain in time)"
    h.step(30.0 - WORKER_SHUTDOWN_S)
    assert [h.kills_of(pid) for pid in old[1:]] == [[signal.SIGKILL, signal.SIGCONT]] * 2
    for pid in old[1:]:
        h.exit(pid, killed_by(signal.SIGKILL))
    assert h.pool.idle
    assert forks(h) == 3


def test_worker_drained_by_a_resize_gets_the_sooner_stop_deadline_when_the_pool_stops(
    make_pool: type[PoolHarness],
) -> None:
    h = make_pool(2)
    h.ready(0, 1)
    shrunk = h.pid(1)
    h.pool.resize(1)
    assert h.handle(1).state is WorkerState.STOPPING

    h.pool.stop(2.0)

    h.step(2.1)
    assert h.kills_of(shrunk) == [signal.SIGKILL, signal.SIGCONT]
    assert h.kills_of(h.pid(0)) == [signal.SIGKILL, signal.SIGCONT]


# ── a stop that must not wait ───────────────────────────────────────────


def test_pool_kill_all_during_a_drain_kills_every_worker_at_once(
    make_pool: type[PoolHarness],
) -> None:
    h = make_pool(2)
    h.ready(0, 1)
    pids = [h.pid(0), h.pid(1)]
    h.pool.stop(30.0)

    h.pool.kill_all("signal SIGTERM during the drain")

    assert [h.kills_of(pid) for pid in pids] == [[signal.SIGKILL, signal.SIGCONT]] * 2
    assert ("warn", f"worker 0 pid={pids[0]} killed: signal SIGTERM during the drain") in h.lines
    for pid in pids:
        h.exit(pid, killed_by(signal.SIGKILL))
    assert h.pool.idle
    assert forks(h) == 2
    assert h.pool.history[1].last_exit == "killed (signal SIGTERM during the drain)"


def test_pool_kill_all_without_a_drain_forks_no_worker_again(
    make_pool: type[PoolHarness],
) -> None:
    h = make_pool(2)
    h.ready(0)  # worker 1 is still starting
    pids = [h.pid(0), h.pid(1)]

    h.pool.kill_all("stop forced")

    assert [h.kills_of(pid) for pid in pids] == [[signal.SIGKILL, signal.SIGCONT]] * 2
    for pid in pids:
        h.exit(pid, killed_by(signal.SIGKILL))
    assert h.pool.idle
    assert forks(h) == 2
    assert not h.pool.restart_slot(0)


def test_pool_kill_all_signals_a_worker_already_killed_no_more(
    make_pool: type[PoolHarness],
) -> None:
    h = make_pool(1)
    pid = h.pid(0)
    h.step(READY_TIMEOUT_S + 0.1)
    assert h.kills_of(pid) == [signal.SIGKILL, signal.SIGCONT]

    h.pool.kill_all("stop forced")

    assert h.kills_of(pid) == [signal.SIGKILL, signal.SIGCONT]
    h.exit(pid, killed_by(signal.SIGKILL))
    assert h.pool.history[0].last_exit == "killed (not ready after 10s)"
    assert h.pool.idle


def test_daemon_second_stop_signal_kills_every_worker_and_the_compile_child_at_once(
    make_pool: type[PoolHarness], daemon_on: Callable[[PoolHarness], MainProcess]
) -> None:
    h = make_pool(2)
    h.ready(0, 1)
    pids = [h.pid(0), h.pid(1)]
    main = daemon_on(h)
    compile_run = FakeCompileRun()
    handed: list[dict[str, CompileResult]] = []
    main.compiling = _Compiling(
        cast(CompileRun, compile_run), {}, lambda _images, results: handed.append(results)
    )

    main.begin_drain("signal SIGTERM")

    assert [stops(h, pid) for pid in pids] == [[Stop(timeout_s=DRAIN_TIMEOUT_S)]] * 2
    assert h.os.kills == [] and not compile_run.cancelled

    main.begin_drain("signal SIGTERM")

    assert [h.kills_of(pid) for pid in pids] == [[signal.SIGKILL, signal.SIGCONT]] * 2
    assert compile_run.cancelled
    assert main.compiling is None
    assert handed == [compile_run.results]  # a reload waiting on it is answered
    for pid in pids:
        h.exit(pid, killed_by(signal.SIGKILL))
    assert h.pool.idle  # the loop exits as after a drain
    assert main.exit_code == 0
    assert h.pool.history[0].last_exit == "killed (signal SIGTERM during the drain)"


# ── stop, roll, restart, resize ──────────────────────────────────────────


def test_pool_stop_drains_every_worker_and_forks_none_again(make_pool: type[PoolHarness]) -> None:
    h = make_pool(2)
    h.ready(0, 1)
    pids = [h.pid(0), h.pid(1)]

    h.pool.stop(30.0)

    assert [stops(h, pid) for pid in pids] == [[Stop(timeout_s=30.0)]] * 2
    assert h.events.calls[-2:] == [("stopping", 1), ("stopping", 0)]  # reverse start order
    for pid in pids:
        h.exit(pid, exited(0))
    assert h.pool.idle
    assert forks(h) == 2
    assert ("info", f"exit worker 0 pid={pids[0]} shutdown") in h.lines


def test_roll_replaces_workers_one_at_a_time(make_pool: type[PoolHarness]) -> None:
    h = make_pool(3)
    h.ready(0, 1, 2)
    old = [h.pid(slot) for slot in range(3)]
    for pid in old:
        h.received(pid)  # the mesh hand-offs
    fresh = Manifest(path="/app/rusm.toml", app_dir="/app")

    h.pool.roll(fresh)

    assert [len(stops(h, pid)) for pid in old] == [1, 0, 0]
    assert ("stopping", 0) in h.events.calls
    h.exit(old[0], exited(0))
    new0 = h.pid(0)
    assert h.os.boots[new0].manifest is fresh
    assert [len(stops(h, pid)) for pid in old[1:]] == [0, 0]  # not while the new 0 starts
    h.ready(0)
    assert [len(stops(h, pid)) for pid in old[1:]] == [1, 0]
    h.exit(old[1], exited(0))
    h.ready(1)
    assert len(stops(h, old[2])) == 1
    h.exit(old[2], exited(0))
    h.ready(2)

    assert [h.os.boots[h.pid(slot)].manifest for slot in range(3)] == [fresh] * 3
    assert [h.pool.history[slot].restarts for slot in range(3)] == [0, 0, 0]
    assert [h.pool.history[slot].last_exit for slot in range(3)] == ["shutdown"] * 3
    assert h.pool.rolling == [] and h.pool.rolling_pending == set()


def test_stop_during_a_roll_ends_the_roll(make_pool: type[PoolHarness]) -> None:
    h = make_pool(3)
    h.ready(0, 1, 2)
    old = [h.pid(slot) for slot in range(3)]
    h.pool.roll(Manifest(path="/app/rusm.toml", app_dir="/app"))

    h.pool.stop(30.0)

    assert h.pool.rolling == []
    for pid in old:
        h.exit(pid, exited(0))
    assert forks(h) == 3  # the worker the roll stopped is not replaced
    assert h.pool.idle


def test_roll_while_stopping_replaces_nothing(make_pool: type[PoolHarness]) -> None:
    h = make_pool(2)
    h.ready(0, 1)
    h.pool.stop(30.0)

    h.pool.roll(Manifest(path="/app/rusm.toml", app_dir="/app"))

    assert h.pool.rolling == []
    assert not h.pool.restart_slot(0)


def test_operator_restart_stops_one_worker_with_sigterm_and_forks_it_again(
    make_pool: type[PoolHarness],
) -> None:
    h = make_pool(2)
    h.ready(0, 1)
    pid = h.pid(0)

    assert h.pool.restart_slot(0)

    assert h.events.calls[-1] == ("stopping", 0)
    assert h.kills_of(pid) == [signal.SIGTERM]
    h.exit(pid, killed_by(signal.SIGTERM))
    assert h.pool.history[0].last_exit == "shutdown (restarted by operator)"
    assert ("gone", 0, "shutdown") in h.events.calls
    assert h.pid(0) != pid


def test_operator_restart_of_a_slot_past_the_target_is_refused(
    make_pool: type[PoolHarness],
) -> None:
    h = make_pool(1)

    assert not h.pool.restart_slot(1)
    assert h.os.kills == []


def test_resize_down_drains_the_highest_slots_for_good(make_pool: type[PoolHarness]) -> None:
    h = make_pool(3)
    h.ready(0, 1, 2)
    pids = [h.pid(slot) for slot in range(3)]

    h.pool.resize(1)

    assert h.events.calls[-2:] == [("stopping", 2), ("stopping", 1)]
    assert [len(stops(h, pid)) for pid in pids] == [0, 1, 1]
    h.exit(pids[2], exited(0))
    h.exit(pids[1], exited(0))
    assert sorted(h.pool.workers) == [0]
    assert forks(h) == 3
    assert h.pool.target == 1


def test_resize_up_forks_the_new_slots(make_pool: type[PoolHarness]) -> None:
    h = make_pool(1)
    h.ready(0)

    h.pool.resize(3)

    assert sorted(h.pool.workers) == [0, 1, 2]
    assert h.pool.target == 3


# ── messages ──────────────────────────────────────────────────────────────


def test_worker_messages_reach_the_events(make_pool: type[PoolHarness]) -> None:
    h = make_pool(1)
    h.ready(0)
    record = LogRecord(1.0, "api#7", "info", "hello")
    claim = NameClaim(req=1, name="greeter", pid=7000)

    h.say(0, Log(record=record), Answer(id=5, ok=True), claim)

    assert h.events.records == [record]
    assert h.events.calls[-2:] == [("answer", 0, 5), ("actor", 0, claim)]


def test_worker_exit_is_told_to_the_events_after_its_channel_is_unwatched(
    make_pool: type[PoolHarness],
) -> None:
    h = make_pool(1)
    h.ready(0)
    handle = h.handle(0)
    assert handle.channel in h.events.watched

    h.exit(handle.pid, exited(0))

    assert handle.channel not in h.events.watched
    assert handle.channel.closed
    assert ("gone", 0, "normal") in h.events.calls
