"""The actor scenarios that run in the worker: spawn-storm and fault-recovery.

Runs in: node endpoint, on its event loop, or the ``rusmd bench``
command's process, on its own loop.

As ``python -m bench actors`` measures them, inside the worker: the
driver spawns a guest on every worker (``sc_spawner``, which spawns and
reaps ``sc_quick`` children; ``sc_sup``, whose supervisor restarts the
crashing ``sc_crasher``) over the control socket, and counts what the
workers count themselves, their exits by reason, read with the ``stats``
control command (as ``/metrics`` reads them). The guests are killed at
the end, and the run ends once what they were linked to (sc_sup's
supervisor and its child) is gone too. ``OnEveryWorker`` also places fairness's spinners.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rusmd.abi import slot_of
from rusmd.node.control import ControlClient, ControlRefused, ControlUnavailable
from rusmd.node.scenario_target import Target
from rusmd.node.scenarios import Driver, Lane, Outcome, ScenarioError

# The workers' counters are read this often: each read is one ``stats``
# request (a query to every worker), so a live rate every tick costs the
# node ten requests a second.
POLL_S = 0.1
# A process is spawned until every worker has one; the daemon places
# spawns itself, so it may take a few tries, but never more than this.
SPAWN_ATTEMPTS_PER_WORKER = 8
# After the kill, what the killed processes were linked to (sc_sup's
# supervisor, which then stops its child) ends on the workers' loops a
# moment later; the driver waits for that this long at most, looking
# every CLEANUP_POLL_S, so a run ends with nothing of it left.
CLEANUP_TIMEOUT_S = 10.0
CLEANUP_POLL_S = 0.02


class OnEveryWorker:
    """One process of a component on every worker of the node, and their kill."""

    def __init__(self, control: ControlClient, component: str, workers: int) -> None:
        self.control, self.component = control, component
        self.workers = max(1, workers)
        self.pids: list[int] = []
        self.covered = 0

    async def spawn(self) -> None:
        """Spawn until every worker has one, killing one that lands beside another."""
        covered: set[int] = set()
        for _ in range(SPAWN_ATTEMPTS_PER_WORKER * self.workers):
            if len(covered) == self.workers:
                break
            try:
                reply = await self.control.request("spawn", name=self.component)
            except (ControlRefused, ControlUnavailable) as exc:
                raise ScenarioError(f"spawn {self.component}: {exc}") from None
            pid = int(reply["pid"])
            self.pids.append(pid)
            if slot_of(pid) in covered:
                await self.kill(pid)
            covered.add(slot_of(pid))
        self.covered = len(covered)

    async def kill(self, pid: int) -> None:
        """Kill ``pid`` (gone already is fine: a CPU budget may have ended it)."""
        try:
            await self.control.request("kill", pid=f"#{pid}")
        except ControlRefused:
            pass
        self.pids.remove(pid)

    async def kill_all(self) -> None:
        """Kill every one still listed."""
        for pid in list(self.pids):
            await self.kill(pid)


class _Counted(Driver):
    """A process of ``component`` on every worker, counted by the workers' own counters.

    The lane reads the workers' meters (the ``stats`` control command,
    as ``/metrics`` does) every ``POLL_S``: its units are how many exits
    of reason ``reason`` the workers counted since the last read, its
    latency that window divided by them (fault-recovery's restarts
    follow one another, so that is the time one takes; spawn-storm's
    overlap, so it is the inverse of the rate). The counters are the
    node's: anything else that exits that way meanwhile counts too.
    """

    component = ""
    children: tuple[str, ...] = ()
    reason = ""

    def __init__(self, target: Target) -> None:
        target.need(self.component, *self.children)
        self.control = target.control
        self.placed = OnEveryWorker(target.control, self.component, target.workers)
        self.since_ns = 0
        # (slot, worker pid) → its count at the last read that had it
        self.known: dict[tuple[int, int], int] = {}

    async def start(self) -> list[Lane]:
        self.since_ns, self.known = await self._read()
        await self.placed.spawn()
        return [self._poll]

    async def _read(self) -> tuple[int, dict[tuple[int, int], int]]:
        try:
            stats = await self.control.request("stats")
        except (ControlRefused, ControlUnavailable) as exc:
            raise ScenarioError(f"stats: {exc}") from None
        counts = {
            (int(meters["slot"]), int(meters["pid"])): int(
                meters.get("exits", {}).get(self.reason, 0)
            )
            for meters in stats.get("meters", [])
        }
        return time.monotonic_ns(), counts

    async def _poll(self) -> Outcome:
        await asyncio.sleep(POLL_S)
        at, counts = await self._read()
        since, self.since_ns = self.since_ns, at
        units = 0
        for worker, count in counts.items():
            # A worker first seen now (a replacement, or one that did not
            # answer before) starts its count here: what it counted
            # before may predate the run. One that did not answer this
            # time keeps its last count, and its exits count at the next.
            if worker in self.known:
                units += count - self.known[worker]
            self.known[worker] = count
        return units, [(at - since) // units] if units else [], ""

    async def finish(self) -> dict[str, Any]:
        linked = await self._linked()
        await self.placed.kill_all()
        await self._until_gone(linked)
        return {"workers": self.placed.covered}

    async def _linked(self) -> set[int]:
        """The pids the placed processes are linked to (a supervisor, children)."""
        linked: set[int] = set()
        for pid in self.placed.pids:
            try:
                info = await self.control.request("info", pid=f"#{pid}")
            except (ControlRefused, ControlUnavailable):
                continue  # gone already: whatever it was linked to got its signal
            linked.update(int(other) for other in info["process"].get("links", []))
        return linked

    async def _until_gone(self, linked: set[int]) -> None:
        """Until no process of the scenario's components, nor one in ``linked``, is left."""
        components = {self.component, *self.children}
        deadline = time.monotonic() + CLEANUP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                listing = await self.control.request("list")
            except (ControlRefused, ControlUnavailable):
                return
            left = [
                p
                for p in listing.get("processes", [])
                if p["component"] in components or int(p["pid"]) in linked
            ]
            if not left:
                return
            await asyncio.sleep(CLEANUP_POLL_S)


class SpawnStorm(_Counted):
    """sc_spawner on every worker: spawn+run+exit of sc_quick, counted as exits ``normal``."""

    component = "sc_spawner"
    children = ("sc_quick",)
    reason = "normal"


class FaultRecovery(_Counted):
    """sc_sup on every worker: restarts of its crashing child, counted as exits ``crashed``."""

    component = "sc_sup"
    children = ("sc_crasher",)
    reason = "crashed"
