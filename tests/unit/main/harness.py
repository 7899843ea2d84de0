"""A fake OS for the worker pool: no fork, no signals, no sleeping.

Runs in: any (tests only).

``PoolHarness`` builds a ``WorkerPool`` whose fork hands out made-up pids
and keeps the worker's end of each channel, whose kill only records, whose
reaper's ``waitpid`` returns the exits a test queues, and whose clock only
moves when the test moves it. A test plays the workers: it sends their
messages on the real socketpair and reads what the pool sent them.
"""

from __future__ import annotations

import os
import signal
from collections import deque
from dataclasses import dataclass, field

from rusmd.channel import (
    Answer,
    Channel,
    Heartbeat,
    Message,
    NameClaim,
    NameDrop,
    ProcessExit,
    Ready,
)
from rusmd.config.model import LogLevel, Manifest
from rusmd.log import Logger, LogRecord
from rusmd.main.pool import WorkerHandle, WorkerPool
from rusmd.main.reaper import Reaper
from rusmd.worker.boot import WorkerBoot

FIRST_PID = 1000


def exited(code: int) -> int:
    """The raw wait status of a process that exited with ``code``."""
    return code << 8


def killed_by(signum: int) -> int:
    """The raw wait status of a process a signal killed."""
    return signum


class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeOs:
    """Fork, kill and waitpid for the pool, without processes."""

    def __init__(self) -> None:
        self.next_pid = FIRST_PID
        self.boots: dict[int, WorkerBoot] = {}
        self.worker_ends: dict[int, Channel] = {}
        self.kills: list[tuple[int, int]] = []
        self.exits: deque[tuple[int, int]] = deque()

    def fork(self, boot: WorkerBoot) -> int:
        pid = self.next_pid
        self.next_pid += 1
        self.boots[pid] = boot
        # The pool closes its copy of the worker's end after the fork, as a
        # parent does; the fake worker keeps its own.
        self.worker_ends[pid] = Channel(boot.channel.dup())
        return pid

    def kill(self, pid: int, signum: int) -> None:
        self.kills.append((pid, signum))

    def waitpid(self, pid: int, options: int) -> tuple[int, int]:
        assert (pid, options) == (-1, os.WNOHANG)
        return self.exits.popleft() if self.exits else (0, 0)

    def close(self) -> None:
        for channel in self.worker_ends.values():
            channel.close()


@dataclass
class RecordingEvents:
    """A ``PoolEvents`` that writes down what the pool said, in order."""

    calls: list[tuple[object, ...]] = field(default_factory=list)
    watched: set[Channel] = field(default_factory=set)
    records: list[LogRecord] = field(default_factory=list)

    def watch_channel(self, channel: Channel, watch: bool) -> None:
        if watch:
            self.watched.add(channel)
        else:
            self.watched.discard(channel)

    def want_write(self, channel: Channel) -> None:
        self.calls.append(("want_write",))

    def worker_log(self, record: LogRecord) -> None:
        self.records.append(record)

    def worker_answer(self, slot: int, answer: Answer) -> None:
        self.calls.append(("answer", slot, answer.id))

    def worker_ready(self, slot: int) -> None:
        self.calls.append(("ready", slot))

    def worker_stopping(self, slot: int) -> None:
        self.calls.append(("stopping", slot))

    def worker_gone(self, slot: int, reason: str) -> None:
        self.calls.append(("gone", slot, reason))

    def actor_message(self, slot: int, message: NameClaim | NameDrop | ProcessExit) -> None:
        self.calls.append(("actor", slot, message))


class PoolHarness:
    """A started ``WorkerPool`` of ``count`` fake workers, driven by hand."""

    def __init__(self, count: int) -> None:
        self.clock = FakeClock()
        self.os = FakeOs()
        self.events = RecordingEvents()
        self.lines: list[tuple[str, str]] = []
        self.reaper = Reaper(waitpid=self.os.waitpid)
        self.pool = WorkerPool(
            Manifest(path="", app_dir="/"),
            count,
            listeners=[],
            log=Logger(LogLevel.DEBUG, self._log),
            events=self.events,
            reaper=self.reaper,
            clock=self.clock,
            fork=self.os.fork,
            kill=self.os.kill,
        )
        self.pool.start()

    def _log(self, record: LogRecord) -> None:
        self.lines.append((record.level, record.text))

    def close(self) -> None:
        self.os.close()
        for handle in self.pool.workers.values():
            handle.channel.close()

    # ── playing the workers ─────────────────────────────────────────────

    def handle(self, slot: int) -> WorkerHandle:
        return self.pool.workers[slot]

    def pid(self, slot: int) -> int:
        return self.handle(slot).pid

    def say(self, slot: int, *messages: Message) -> None:
        """Worker ``slot`` sends ``messages``; the pool reads them as its loop would."""
        handle = self.handle(slot)
        for message in messages:
            self.os.worker_ends[handle.pid].send(message)
        self.pool.on_channel_ready(handle.channel)

    def ready(self, *slots: int) -> None:
        """Each of ``slots`` reports Ready (its components loaded)."""
        for slot in slots:
            self.say(slot, Ready(slot=slot, pid=self.pid(slot), loaded=True))

    def heartbeat(self, slot: int) -> None:
        self.say(slot, Heartbeat(slot=slot, peers=[]))

    def received(self, pid: int) -> list[Message]:
        """What the pool sent the worker ``pid`` since the last look."""
        messages: list[Message] = []
        # One read stops where a frame carrying descriptors begins or ends.
        while batch := self.os.worker_ends[pid].read_ready():
            messages += batch
        return messages

    def exit(self, pid: int, status: int) -> None:
        """Worker ``pid`` exits with ``status``; the loop's next turn reaps it."""
        self.os.exits.append((pid, status))
        self.reaper.reap()

    def step(self, seconds: float) -> None:
        """``seconds`` pass; the loop's next turn checks the pool's deadlines."""
        self.clock.advance(seconds)
        self.pool.tick()

    def kills_of(self, pid: int) -> list[signal.Signals]:
        return [signal.Signals(signum) for p, signum in self.os.kills if p == pid]

    def lines_with(self, text: str) -> list[tuple[str, str]]:
        return [line for line in self.lines if text in line[1]]
