"""The worker pool: fork, watch, replace and resize worker OS processes.

Runs in: main.

The pool is the root supervisor's first user. Each worker slot is a
permanent child ``worker.<slot>`` under one_for_one with root-mode
quarantine: a worker that dies is forked again at once; one that crashes
faster than ``WORKER_INTENSITY`` in ``WORKER_PERIOD_S`` waits out an
exponential backoff (1 s, 2 s, 4 s, … up to a minute) while the daemon
stays up. The supervisor decides; this module forks and signals, and
the main process's ``Reaper`` hands it the exits of the pids it claimed
at fork time.

A worker is ``starting`` until its ``Ready`` arrives (within
``READY_TIMEOUT_S``), then ``ready``; it is killed when its heartbeats
stop for ``HEARTBEAT_TIMEOUT_S`` (a wedged loop or SIGSTOP).

What the pool has to say goes to one ``PoolEvents`` object given at
construction (the main process); the OS effects (fork, kill) and the
clock are injected too, so the pool is driven step by step in tests
without a process or a sleep.
"""

from __future__ import annotations

import enum
import gc
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from rusmd.channel import (
    Answer,
    Channel,
    ChannelClosed,
    ComponentImage,
    Components,
    Heartbeat,
    LeaseRequest,
    Loaded,
    Log,
    MeshPeer,
    Message,
    NameClaim,
    NameDrop,
    PidLease,
    ProcessExit,
    Ready,
    Stop,
)
from rusmd.config.model import Manifest
from rusmd.log import Logger, LogRecord
from rusmd.main.reaper import Reaper, describe_exit
from rusmd.supervision import (
    ChildSpec,
    Escalate,
    ExitReason,
    QuarantinePolicy,
    Shutdown,
    ShutdownKind,
    StartChild,
    StopChild,
    Strategy,
    Supervisor,
    SupervisorFlags,
)
from rusmd.supervision.action import Action, Quarantine
from rusmd.worker.boot import WorkerBoot
from rusmd.worker.entry import run_worker

# Crash budget of one worker slot before it is quarantined: a worker that
# dies at fork (bad host, out of memory) must not fork-bomb the machine.
WORKER_INTENSITY = 3
WORKER_PERIOD_S = 5.0
WORKER_QUARANTINE = QuarantinePolicy(base_s=1.0, factor=2.0, max_s=60.0)
# A worker that has not said Ready by then is wedged in start-up.
READY_TIMEOUT_S = 10.0
# Missed heartbeats for this long mean a stuck loop (or SIGSTOP): kill it.
HEARTBEAT_TIMEOUT_S = 5.0
# How long a worker may drain after Stop before it is killed.
WORKER_SHUTDOWN_S = 10.0
# Pid serials handed to a worker at once; it asks for more when low
# (wasm.pids.LEASE_LOW_WATER, which this must exceed). A slot's serials only
# grow, so no pid is reused during the node's life; at ~10,000 requests/s a
# worker asks every few seconds.
PID_LEASE_SIZE = 65536


class PoolEvents(Protocol):
    """What the worker pool tells its owner (the main process)."""

    def watch_channel(self, channel: Channel, watch: bool) -> None:
        """Watch a new worker channel (True), or stop watching it before it is closed."""

    def want_write(self, channel: Channel) -> None:
        """Output is queued on ``channel``: watch it for writability too."""

    def worker_log(self, record: LogRecord) -> None:
        """A log record a worker sent, for the main process's single writer."""

    def worker_answer(self, slot: int, answer: Answer) -> None:
        """Worker ``slot`` answered a control query."""

    def worker_ready(self, slot: int) -> None:
        """Worker ``slot`` has just become ready (it needs the name table)."""

    def worker_stopping(self, slot: int) -> None:
        """Worker ``slot`` is being stopped on purpose (roll, restart, resize), not failing."""

    def worker_gone(self, slot: int, reason: str) -> None:
        """Worker ``slot`` exited with ``reason``; its pending answers will not come."""

    def actor_message(self, slot: int, message: NameClaim | NameDrop | ProcessExit) -> None:
        """Worker ``slot`` claimed or dropped a name, or says a resident exited."""


def fork_worker(boot: WorkerBoot) -> int:
    """Fork a worker process that runs from ``boot``; its pid (the child never returns)."""
    # Objects already alive stay out of the child's cyclic GC, so no
    # inherited wrapper is collected there and closes a reused fd.
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        run_worker(boot)
    gc.unfreeze()
    return pid


class WorkerState(enum.StrEnum):
    """Where one worker process is in its life."""

    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"


@dataclass
class WorkerHandle:
    """The main process's view of one live worker process."""

    slot: int
    generation: int
    pid: int
    channel: Channel
    started_at: float
    started_wall: float
    state: WorkerState = WorkerState.STARTING
    last_heartbeat: float = 0.0
    peers: list[int] = field(default_factory=list)
    stop_deadline: float | None = None
    kill_reason: ExitReason | None = None
    kill_detail: str = ""
    processes: int = 0
    loaded: bool = False  # its listeners serve every component (``Ready``/``Loaded``)


@dataclass
class SlotHistory:
    """What outlives one worker process in its slot."""

    generations: int = 0
    restarts: int = 0
    last_exit: str = ""
    # The next pid serial never leased to any worker of this slot.
    next_serial: int = 1


class WorkerPool:
    """Forks and supervises ``count`` workers.

    Args:
        manifest: The resolved manifest workers start from.
        count: How many worker slots to run.
        listeners: Listen sockets every worker inherits.
        log: The main process's logger.
        events: Told about channels to watch and what workers say and do.
        reaper: The main process's reaper; each worker's pid is claimed
            with it at fork time.
        clock: Monotonic clock. Optional; defaults to ``time.monotonic``.
        fork: Starts a worker from its boot and returns its pid. Optional;
            defaults to ``fork_worker``.
        kill: Sends a signal to a pid. Optional; defaults to ``os.kill``.
    """

    def __init__(
        self,
        manifest: Manifest,
        count: int,
        *,
        listeners: list[socket.socket],
        log: Logger,
        events: PoolEvents,
        reaper: Reaper,
        clock: Callable[[], float] = time.monotonic,
        fork: Callable[[WorkerBoot], int] = fork_worker,
        kill: Callable[[int, int], None] = os.kill,
    ) -> None:
        self.manifest = manifest
        self.listeners = listeners
        self.log = log
        self.events = events
        self.reaper = reaper
        self.clock = clock
        self.fork = fork
        self.kill_pid = kill
        self.workers: dict[int, WorkerHandle] = {}
        self.by_pid: dict[int, WorkerHandle] = {}
        self.by_channel: dict[Channel, WorkerHandle] = {}
        self.history: dict[int, SlotHistory] = {}
        self.quarantined: dict[int, float] = {}
        self.quarantines = 0  # times a slot was quarantined, for /metrics
        self.target = count
        self.rolling: list[int] = []
        self.rolling_pending: set[int] = set()
        # The compiled components workers load (None until compiled).
        self.images: list[ComponentImage] | None = None
        self.supervisor = Supervisor(
            SupervisorFlags(
                strategy=Strategy.ONE_FOR_ONE,
                intensity=WORKER_INTENSITY,
                period_s=WORKER_PERIOD_S,
            ),
            [self._spec(slot) for slot in range(count)],
            quarantine=WORKER_QUARANTINE,
        )

    # ── decisions in, effects out ───────────────────────────────────────

    def start(self) -> None:
        """Fork the initial workers."""
        self._apply(self.supervisor.start(self.clock()))

    def tick(self) -> None:
        """Time-driven steps: quarantine ends, start and stop deadlines, heartbeats."""
        now = self.clock()
        self._apply(self.supervisor.tick(now))
        for handle in list(self.workers.values()):
            self._check_deadlines(handle, now)

    def stop(self, timeout_s: float) -> None:
        """Stop every worker in reverse start order (drain, then kill).

        A roll in progress ends here: a worker it stopped is not replaced
        once it exits (the supervisor is terminated by then). Every worker
        still alive leaves with a kill deadline at most ``timeout_s`` away:
        one already stopping (a roll, a resize) keeps its own if that is
        sooner, since heartbeats are not checked while a worker drains and
        a wedged one would otherwise never be killed.
        """
        self.rolling.clear()
        self.rolling_pending.clear()
        now = self.clock()
        actions = self.supervisor.stop(now)
        self._apply([_with_timeout(a, timeout_s) for a in actions])
        deadline = now + timeout_s
        for handle in self.workers.values():
            if handle.stop_deadline is None or handle.stop_deadline > deadline:
                handle.stop_deadline = deadline

    def kill_all(self, detail: str) -> None:
        """Kill every worker now, without a drain; none is forked again.

        For a stop that must not wait (a second stop signal): each worker
        gets SIGKILL, and its exit is reported as ``killed (detail)``.
        """
        self.rolling.clear()
        self.rolling_pending.clear()
        # Terminated, the supervisor restarts nothing; the drains it asks
        # for are moot, as every worker is killed here.
        self.supervisor.stop(self.clock())
        for handle in list(self.workers.values()):
            if handle.kill_reason is not ExitReason.KILLED:
                self._kill(handle, signal.SIGKILL, ExitReason.KILLED, detail)

    def resize(self, count: int) -> None:
        """Grow or drain the pool to ``count`` workers, live."""
        now = self.clock()
        count = max(1, count)
        if self.supervisor.terminated:
            return  # stopping: nothing grows now
        old, self.target = self.target, count
        for slot in range(old, count):
            self._apply(self.supervisor.add_child(self._spec(slot), now))
        for slot in reversed(range(count, old)):
            self._apply(self.supervisor.remove_child(_child_id(slot), now))

    def set_components(self, images: list[ComponentImage]) -> None:
        """Hand freshly compiled components to every worker (and to later forks)."""
        self.images = images
        for handle in self.workers.values():
            if handle.state is not WorkerState.STOPPING:
                self._send(handle, Components(images=images))

    def roll(self, manifest: Manifest, images: list[ComponentImage] | None = None) -> None:
        """Replace the workers one at a time with ones started from ``manifest``."""
        self.manifest = manifest
        if images is not None:
            self.images = images
        if self.supervisor.terminated:
            return  # stopping: the workers are not replaced
        self.rolling = sorted(slot for slot in self.workers if slot < self.target)
        self._roll_next()

    def restart_slot(self, slot: int) -> bool:
        """Replace one worker now (an operator's ``restart``); False if no such slot."""
        if slot >= self.target or self.supervisor.terminated:
            return False
        if slot in self.quarantined:
            self._apply(self.supervisor.lift_quarantine(_child_id(slot), self.clock()))
            return True
        handle = self.workers.get(slot)
        if handle is None:
            return False
        self.events.worker_stopping(slot)
        self._kill(handle, signal.SIGTERM, ExitReason.SHUTDOWN, "restarted by operator")
        return True

    def restarts_in_window(self) -> dict[int, int]:
        """Each slot's restarts within the intensity period, as the supervisor counts them."""
        return {
            _slot_of(info.id): info.restarts_in_window
            for info in self.supervisor.which_children(self.clock())
        }

    @property
    def idle(self) -> bool:
        """True once no worker process is left."""
        return not self.workers

    # ── events from the loop ─────────────────────────────────────────────

    def on_channel_ready(self, channel: Channel) -> None:
        """Read a worker's channel and act on its messages."""
        handle = self.by_channel.get(channel)
        if handle is None:
            return
        try:
            messages = channel.read_ready()
        except ChannelClosed:
            # The process is exiting; the reaper reports why.
            self._unwatch(handle)
            return
        now = self.clock()
        for message in messages:
            self._on_message(handle, message, now)

    def child_exited(self, pid: int, status: int) -> None:
        """The reaper collected worker ``pid``: tell the supervisor why it exited."""
        handle = self.by_pid.pop(pid, None)
        if handle is not None:
            self._on_exit(handle, status)

    # ── internals ───────────────────────────────────────────────────────

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, StartChild):
                self._fork(_slot_of(action.id))
            elif isinstance(action, StopChild):
                self._stop(_slot_of(action.id), action.shutdown)
            elif isinstance(action, Quarantine):
                slot = _slot_of(action.id)
                self.quarantined[slot] = action.until
                self.quarantines += 1
                delay_s = max(0.0, action.until - self.clock())
                self.log.error(
                    f"supervisor report: worker {slot} crashed too often; "
                    f"quarantined for {delay_s:.1f}s"
                )
            elif isinstance(action, Escalate):
                self.log.error(f"supervisor report: worker pool gave up ({action.reason})")

    def _fork(self, slot: int) -> None:
        self.quarantined.pop(slot, None)
        history = self.history.setdefault(slot, SlotHistory())
        history.generations += 1
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mesh = self._mesh_for(slot)
        lease = (history.next_serial, history.next_serial + PID_LEASE_SIZE)
        history.next_serial = lease[1]
        boot = WorkerBoot(
            slot=slot,
            generation=history.generations,
            parent_pid=os.getpid(),
            channel=child_end,
            mesh={peer: ends[1] for peer, ends in mesh.items()},
            listeners=self.listeners,
            manifest=self.manifest,
            images=self.images,
            lease=lease,
        )
        pid = self.fork(boot)
        # Claimed before the loop's next reap, so no exit goes unclaimed.
        self.reaper.claim(pid, self.child_exited)
        child_end.close()
        now = self.clock()
        handle = WorkerHandle(
            slot=slot,
            generation=history.generations,
            pid=pid,
            channel=Channel(parent_end),
            started_at=now,
            started_wall=time.time(),
            last_heartbeat=now,
        )
        self.workers[slot] = handle
        self.by_pid[pid] = handle
        self.by_channel[handle.channel] = handle
        self.events.watch_channel(handle.channel, True)
        self._hand_mesh(slot, mesh)
        self.log.debug(f"worker {slot} forked pid={pid}")

    def _mesh_for(self, slot: int) -> dict[int, tuple[socket.socket, socket.socket]]:
        """Fresh socketpairs to every live sibling: (sibling's end, new worker's end)."""
        return {
            peer: socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            for peer, handle in self.workers.items()
            if peer != slot and handle.state is not WorkerState.STOPPING
        }

    def _hand_mesh(self, slot: int, mesh: dict[int, tuple[socket.socket, socket.socket]]) -> None:
        """Send each sibling its end of the new worker's channel; close ours."""
        for peer, (peer_end, new_end) in mesh.items():
            try:
                self.workers[peer].channel.send(MeshPeer(slot=slot), [peer_end.fileno()])
            except ChannelClosed:
                pass  # that sibling is exiting; its successor gets a fresh pair
            finally:
                peer_end.close()
                new_end.close()

    def _on_message(self, handle: WorkerHandle, message: Message, now: float) -> None:
        if isinstance(message, Heartbeat):
            handle.last_heartbeat = now
            handle.peers = message.peers
            handle.processes = message.processes
        elif isinstance(message, Log):
            self.events.worker_log(message.record)
        elif isinstance(message, Answer):
            self.events.worker_answer(handle.slot, message)
        elif isinstance(message, LeaseRequest):
            history = self.history.setdefault(handle.slot, SlotHistory())
            lease = PidLease(start=history.next_serial, end=history.next_serial + PID_LEASE_SIZE)
            history.next_serial = lease.end
            self._send(handle, lease)
        elif isinstance(message, Loaded):
            handle.loaded = True
        elif isinstance(message, Ready) and handle.state is WorkerState.STARTING:
            handle.loaded = handle.loaded or message.loaded
            handle.state = WorkerState.READY
            handle.last_heartbeat = now
            self.supervisor.child_started(_child_id(handle.slot), now)
            self.log.info(f"worker {handle.slot} ready pid={handle.pid}")
            self.events.worker_ready(handle.slot)
            self._roll_next()
        elif isinstance(message, NameClaim | NameDrop | ProcessExit):
            self.events.actor_message(handle.slot, message)

    def _check_deadlines(self, handle: WorkerHandle, now: float) -> None:
        if handle.kill_reason is ExitReason.KILLED:
            return
        if handle.state is WorkerState.STARTING and now - handle.started_at > READY_TIMEOUT_S:
            self._kill(
                handle, signal.SIGKILL, ExitReason.KILLED, f"not ready after {READY_TIMEOUT_S:g}s"
            )
        elif (
            handle.state is WorkerState.READY and now - handle.last_heartbeat > HEARTBEAT_TIMEOUT_S
        ):
            self._kill(
                handle,
                signal.SIGKILL,
                ExitReason.KILLED,
                f"no heartbeat for {HEARTBEAT_TIMEOUT_S:g}s",
            )
        elif handle.stop_deadline is not None and now > handle.stop_deadline:
            self._kill(handle, signal.SIGKILL, ExitReason.KILLED, "did not drain in time")

    def _stop(self, slot: int, shutdown: Shutdown) -> None:
        handle = self.workers.get(slot)
        if handle is None:
            return
        if shutdown.kind is ShutdownKind.BRUTAL_KILL:
            self._kill(handle, signal.SIGKILL, ExitReason.KILLED, "brutal_kill")
            return
        handle.state = WorkerState.STOPPING
        handle.stop_deadline = self.clock() + shutdown.timeout_s
        self.events.worker_stopping(slot)
        try:
            handle.channel.send(Stop(timeout_s=shutdown.timeout_s))
        except ChannelClosed:
            self._kill(handle, signal.SIGKILL, ExitReason.KILLED, "channel closed during stop")

    def _kill(self, handle: WorkerHandle, signum: int, reason: ExitReason, detail: str) -> None:
        if handle.kill_reason is None or reason is ExitReason.KILLED:
            handle.kill_reason, handle.kill_detail = reason, detail
        if signum == signal.SIGKILL:
            self.log.warn(f"worker {handle.slot} pid={handle.pid} killed: {detail}")
        try:
            self.kill_pid(handle.pid, signum)
            if signum == signal.SIGKILL:
                # A stopped process cannot die until it runs again.
                self.kill_pid(handle.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def _on_exit(self, handle: WorkerHandle, status: int) -> None:
        now = self.clock()
        self._unwatch(handle)
        if self.workers.get(handle.slot) is handle:
            del self.workers[handle.slot]
        reason, detail = _exit_reason(handle, status)
        self.events.worker_gone(handle.slot, str(reason))
        history = self.history.setdefault(handle.slot, SlotHistory())
        history.last_exit = f"{reason} ({detail})" if detail else str(reason)
        line = f"exit worker {handle.slot} pid={handle.pid} {history.last_exit}"
        # Clean exits at info, kills at warn, crashes at error.
        if reason in (ExitReason.NORMAL, ExitReason.SHUTDOWN):
            self.log.info(line)
        elif reason is ExitReason.KILLED:
            self.log.warn(line)
        else:
            self.log.error(line)
        child = _child_id(handle.slot)
        if handle.state is WorkerState.STARTING and handle.kill_reason is not ExitReason.SHUTDOWN:
            actions = self.supervisor.child_start_failed(child, now)
        else:
            actions = self.supervisor.child_exited(child, reason, now)
        if (
            any(isinstance(a, StartChild) for a in actions)
            and handle.state is not WorkerState.STOPPING
        ):
            history.restarts += 1
        self._apply(actions)
        if (
            handle.slot in self.rolling_pending
            and handle.slot < self.target
            and not self.supervisor.terminated
        ):
            self.rolling_pending.discard(handle.slot)
            self._apply(self.supervisor.add_child(self._spec(handle.slot), now))

    def _roll_next(self) -> None:
        if any(h.state is not WorkerState.READY for h in self.workers.values()):
            return
        while self.rolling:
            slot = self.rolling.pop(0)
            if slot in self.workers:
                self.rolling_pending.add(slot)
                self._apply(self.supervisor.remove_child(_child_id(slot), self.clock()))
                return

    def send_to(self, slot: int, message: Message) -> bool:
        """Send ``message`` to worker ``slot``; False if it is not there to take it."""
        handle = self.workers.get(slot)
        if handle is None or handle.state is WorkerState.STOPPING:
            return False
        return self._send(handle, message)

    def _send(self, handle: WorkerHandle, message: Message) -> bool:
        try:
            handle.channel.send(message)
        except ChannelClosed:
            return False
        if handle.channel.wants_write:
            self.events.want_write(handle.channel)
        return True

    def _unwatch(self, handle: WorkerHandle) -> None:
        self.by_channel.pop(handle.channel, None)
        if not handle.channel.closed:
            self.events.watch_channel(handle.channel, False)
            handle.channel.close()

    def _spec(self, slot: int) -> ChildSpec:
        return ChildSpec(
            id=_child_id(slot), shutdown=Shutdown.timeout(WORKER_SHUTDOWN_S), start=slot
        )


def _child_id(slot: int) -> str:
    return f"worker.{slot}"


def _slot_of(child_id: str) -> int:
    return int(child_id.rsplit(".", 1)[1])


def _with_timeout(action: Action, timeout_s: float) -> Action:
    if isinstance(action, StopChild) and action.shutdown.kind is ShutdownKind.TIMEOUT:
        return StopChild(action.id, Shutdown.timeout(timeout_s), action.reason)
    return action


def _exit_reason(handle: WorkerHandle, status: int) -> tuple[ExitReason, str]:
    """The supervision reason for a worker's exit, and the detail its status rows show.

    A kill the pool sent itself keeps the reason and detail it was sent
    with; any other signal or non-zero exit is described by ``describe_exit``.
    """
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if handle.kill_reason is not None and signum == signal.SIGKILL:
            return handle.kill_reason, handle.kill_detail
        if signum == signal.SIGKILL:
            return ExitReason.KILLED, describe_exit(status)
        if handle.kill_reason is ExitReason.SHUTDOWN and signum == signal.SIGTERM:
            return ExitReason.SHUTDOWN, handle.kill_detail
        return ExitReason.CRASHED, describe_exit(status)
    if os.WEXITSTATUS(status) == 0:
        if handle.state is WorkerState.STOPPING or handle.kill_reason is ExitReason.SHUTDOWN:
            return ExitReason.SHUTDOWN, handle.kill_detail
        return ExitReason.NORMAL, ""
    return ExitReason.CRASHED, describe_exit(status)
