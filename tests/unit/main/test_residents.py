"""Resident components, step by step: fake workers, fake queries, fake clock.

The ``Residents`` decide where and when a resident starts; a spawn is a
query to a worker, answered here by hand, so each test walks through one
resident's life without a worker process or a sleep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rusmd.abi import make_pid
from rusmd.channel import Answer, Message, Names, ProcessExit
from rusmd.config.model import Component, LogLevel, Manifest
from rusmd.log import Logger, LogRecord
from rusmd.main.residents import RESIDENT_QUARANTINE, Registry, Residents
from tests.unit.main.harness import FakeClock


@dataclass
class Spawn:
    """One spawn query the residents sent, waiting for its answer."""

    slot: int
    args: dict[str, Any]
    done: Callable[[dict[int, Answer | None]], None]


class ResidentsHarness:
    """``Residents`` over fake workers: ``ready`` slots, spawns answered by hand."""

    def __init__(self, *components: Component, ready: tuple[int, ...] = (0, 1)) -> None:
        self.clock = FakeClock()
        self.ready = list(ready)
        self.spawns: list[Spawn] = []
        self.broadcasts: list[Message] = []
        self.lines: list[tuple[str, str]] = []
        self.serial = 0
        self._turn = 0
        self.registry = Registry(broadcast=self.broadcasts.append, reply=lambda _s, _m: None)
        manifest = Manifest(path="", app_dir="/", components={c.name: c for c in components})
        self.residents = Residents(
            manifest,
            Logger(LogLevel.DEBUG, self._log),
            ask=self._ask,
            pick_worker=self._pick,
            registry=self.registry,
            clock=self.clock,
        )

    def _log(self, record: LogRecord) -> None:
        self.lines.append((record.level, record.text))

    def _pick(self) -> int | None:
        if not self.ready:
            return None
        self._turn += 1
        return self.ready[self._turn % len(self.ready)]

    def _ask(
        self,
        slots: list[int],
        op: str,
        args: dict[str, Any],
        done: Callable[[dict[int, Answer | None]], None],
    ) -> None:
        assert op == "spawn" and len(slots) == 1
        self.spawns.append(Spawn(slots[0], args, done))

    def start(self) -> None:
        self.residents.start(set(self.residents.manifest.components))

    def answer_spawn(self) -> int:
        """The oldest spawn succeeds on its worker; the new pid."""
        spawn = self.spawns.pop(0)
        self.serial += 1
        pid = make_pid(self.serial, spawn.slot)
        spawn.done({spawn.slot: Answer(id=0, ok=True, result={"pid": pid})})
        return pid

    def refuse_spawn(self, error: str) -> None:
        spawn = self.spawns.pop(0)
        spawn.done({spawn.slot: Answer(id=0, ok=False, error=error)})

    def row(self, name: str) -> dict[str, Any]:
        [row] = [r for r in self.residents.rows() if r["name"] == name]
        return row

    def exit(self, name: str, reason: str, detail: str = "") -> None:
        """The resident's worker reports that it exited."""
        pid = self.row(name)["pid"]
        self.residents.on_exit(ProcessExit(pid=pid, component=name, reason=reason, detail=detail))


def resident(name: str = "greeter", **keys: Any) -> Component:
    return Component(name=name, resident=True, **keys)


def running(*components: Component, ready: tuple[int, ...] = (0, 1)) -> ResidentsHarness:
    """Residents started, each spawned on a worker."""
    h = ResidentsHarness(*components, ready=ready)
    h.start()
    while h.spawns:
        h.answer_spawn()
    return h


def test_resident_is_spawned_on_a_ready_worker_and_registered_by_name() -> None:
    h = ResidentsHarness(resident(), Component(name="api"))

    h.start()
    pid = h.answer_spawn()

    assert h.spawns == []  # the component that is not resident is not spawned
    row = h.row("greeter")
    assert (row["state"], row["pid"], row["label"]) == ("running", pid, f"greeter#{pid}")
    assert h.registry.names == {"greeter": pid}
    assert h.broadcasts[-1] == Names(set={"greeter": pid}, removed=[])


def test_resident_that_did_not_compile_is_not_spawned() -> None:
    h = ResidentsHarness(resident())

    h.residents.start(set())

    assert h.spawns == [] and h.residents.rows() == []


def test_resident_crashing_is_restarted_with_a_new_pid_under_its_name() -> None:
    h = running(resident())
    old = h.row("greeter")["pid"]

    h.exit("greeter", "crashed", "trap: unreachable")
    new = h.answer_spawn()

    assert new != old
    row = h.row("greeter")
    assert (row["pid"], row["restarts"]) == (new, 1)
    assert row["last_exit"] == "crashed (trap: unreachable)"
    assert h.registry.names == {"greeter": new}


def test_resident_crashing_past_intensity_is_quarantined_then_restarted() -> None:
    h = running(resident(intensity=2, period_s=5))
    for _ in range(2):
        h.exit("greeter", "crashed")
        h.answer_spawn()
        h.clock.advance(0.1)

    h.exit("greeter", "crashed")

    assert h.spawns == []
    row = h.row("greeter")
    assert row["state"] == "quarantined"
    assert row["quarantine_ends_in_s"] == RESIDENT_QUARANTINE.base_s
    assert (
        "error",
        "supervisor report: resident greeter crashed too often; quarantined for 1.0s",
    ) in h.lines
    h.clock.advance(RESIDENT_QUARANTINE.base_s / 2)
    h.residents.tick()
    assert h.spawns == []
    h.clock.advance(RESIDENT_QUARANTINE.base_s / 2)
    h.residents.tick()
    assert len(h.spawns) == 1
    h.answer_spawn()
    assert h.row("greeter")["state"] == "running"


def test_transient_resident_exiting_normally_is_not_restarted() -> None:
    h = running(resident(restart="transient"))

    h.exit("greeter", "normal")

    assert h.spawns == []
    row = h.row("greeter")
    assert (row["state"], row["pid"], row["restarts"]) == ("exited", None, 0)
    assert h.registry.names == {}


def test_transient_resident_crashing_is_restarted() -> None:
    h = running(resident(restart="transient"))

    h.exit("greeter", "crashed")

    assert len(h.spawns) == 1


def test_temporary_resident_crashing_is_not_restarted() -> None:
    h = running(resident(restart="temporary"))

    h.exit("greeter", "crashed")

    assert h.spawns == []


def test_resident_whose_worker_dies_is_restarted_on_a_ready_worker() -> None:
    h = running(resident())
    slot = h.row("greeter")["worker"]
    h.ready.remove(slot)

    h.residents.worker_gone(slot, "killed")
    new = h.answer_spawn()

    row = h.row("greeter")
    assert row["worker"] != slot and row["pid"] == new
    assert row["restarts"] == 1
    assert row["last_exit"] == f"killed (its worker {slot} exited)"


def test_resident_on_a_stopping_worker_is_moved_not_counted_toward_intensity() -> None:
    h = running(resident(restart="transient", intensity=1, period_s=60))

    for _ in range(5):  # more moves than the intensity allows restarts
        slot = h.row("greeter")["worker"]
        h.residents.worker_stopping(slot)
        h.residents.worker_gone(slot, "shutdown")
        h.answer_spawn()

    row = h.row("greeter")
    assert (row["state"], row["restarts"]) == ("running", 0)
    assert ("info", "resident greeter: moving, its worker is being replaced") in h.lines
    h.exit("greeter", "crashed")  # the budget is still whole: one restart
    assert len(h.spawns) == 1


def test_resident_exiting_with_shutdown_on_a_worker_that_is_not_stopping_is_no_move() -> None:
    h = running(resident(restart="transient"))

    h.residents.worker_gone(h.row("greeter")["worker"], "shutdown")

    assert h.spawns == []  # a transient child's shutdown exit is final
    assert h.row("greeter")["state"] == "exited"


def test_resident_without_a_ready_worker_waits_and_starts_on_a_later_tick() -> None:
    h = ResidentsHarness(resident(), ready=())
    h.start()
    assert h.row("greeter")["state"] == "waiting for a worker"
    h.residents.tick()
    assert h.spawns == []

    h.ready.append(0)
    h.residents.tick()

    assert [spawn.slot for spawn in h.spawns] == [0]
    assert h.spawns[0].args == {"component": "greeter", "resident": True}


def test_resident_refused_by_its_worker_counts_as_a_failed_start() -> None:
    h = ResidentsHarness(resident(intensity=1))
    h.start()

    h.refuse_spawn("component greeter: out of memory")

    row = h.row("greeter")
    assert row["last_exit"] == "crashed (did not start: component greeter: out of memory)"
    assert ("error", "resident greeter did not start: component greeter: out of memory") in (
        h.lines
    )
    assert len(h.spawns) == 1  # restarted once, within its intensity
    h.refuse_spawn("component greeter: out of memory")
    assert h.spawns == []
    assert h.row("greeter")["state"] == "quarantined"


def test_resident_exits_while_the_daemon_drains_are_not_restarted() -> None:
    h = running(resident())

    h.residents.stop()
    h.exit("greeter", "crashed")
    h.residents.tick()

    assert h.spawns == []
    assert h.row("greeter")["state"] == "exited"
