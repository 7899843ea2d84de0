"""Guest threads: a few runners for busy processes, more only for blocked ones.

Runs in: worker.

Processes run as fibers on the loop thread (``fibers``), except those
whose module imports a WASI call that blocks the thread (``poll_oneoff``,
``fd_read``, ``sched_yield``: wasmtime's WASI calls are synchronous).
Each of those runs on a thread of its own while it runs, because a
process blocked inside a call keeps its wasm stack on that thread. Starting a thread per spawn would
make a burst of short processes cost a thread start each (and thousands
of 16 MiB stacks), so the pool keeps ``base`` runners busy from a queue
and starts another thread only when work waits and every runner is
blocked in a host call, or has not taken a job from the queue for
``STALL_S`` (a long computation: ``nudge``, called on every epoch tick,
checks), up to ``limit`` threads in all. Threads go back to the queue
when their process ends; idle ones above the base end after a while.

One runner is the default: short processes run fastest back to back on
one thread (fewer GIL hand-offs; see docs/benchmarks.md), and a long one
gets company within ``STALL_S``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

# Runners kept even when idle.
BASE_RUNNERS = 1
# Work waiting this long behind busy runners gets a new thread.
STALL_S = 0.02
# Idle threads above the base end after this long without work.
IDLE_EXIT_S = 5.0


class RunnerPool:
    """Run callables on guest threads.

    Args:
        limit: Threads at most (blocked ones included).
        base: Threads kept even when idle.
        name: Thread name prefix.
    """

    def __init__(self, limit: int, base: int = BASE_RUNNERS, name: str = "guest") -> None:
        self.limit = max(1, limit)
        self.base = max(1, min(base, self.limit))
        self.name = name
        self._queue: deque[Callable[[], None]] = deque()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._threads = 0
        self._idle = 0
        self._blocked = 0
        self._closed = False
        self._last_take = time.monotonic()
        # Threads the system refused to start (see ``_start_thread``).
        self.refused = 0

    @property
    def threads(self) -> int:
        """Guest threads alive now."""
        return self._threads

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job``; it runs on a guest thread."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the runner pool is closed")
            self._queue.append(job)
            if self._idle:
                self._work.notify()
            elif self._threads < self.base or self._all_blocked():
                self._start_thread()

    def blocking(self) -> None:
        """The calling guest thread is about to block in a host call."""
        with self._lock:
            self._blocked += 1
            if self._queue and not self._idle and self._all_blocked():
                self._start_thread()

    def unblocked(self) -> None:
        """The calling guest thread is back from its blocking host call."""
        with self._lock:
            self._blocked -= 1

    def nudge(self) -> None:
        """Start a thread if queued work has waited ``STALL_S`` behind busy runners."""
        if not self._queue or self._idle:
            return
        with self._lock:
            stalled = time.monotonic() - self._last_take > STALL_S
            if self._queue and not self._idle and stalled and self._threads < self.limit:
                self._last_take = time.monotonic()
                self._start_thread()

    def close(self) -> None:
        """Let idle threads end; queued jobs still run."""
        with self._lock:
            self._closed = True
            self._work.notify_all()

    def _all_blocked(self) -> bool:
        return self._threads - self._idle <= self._blocked and self._threads < self.limit

    def _start_thread(self) -> bool:
        """Start one more runner; False when the system refuses a thread.

        A refused thread (the kernel's thread or memory-map limits) is not
        an error of whoever asked: queued work waits for a runner to free
        up, and the count stays true.
        """
        self._threads += 1
        thread = threading.Thread(
            target=self._loop, name=f"{self.name}-{self._threads}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:
            self._threads -= 1
            self.refused += 1
            return False
        return True

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue:
                    if self._closed:
                        self._threads -= 1
                        return
                    self._idle += 1
                    woke = self._work.wait(IDLE_EXIT_S)
                    self._idle -= 1
                    if not woke and not self._queue and self._threads > self.base:
                        self._threads -= 1
                        return
                job = self._queue.popleft()
                self._last_take = time.monotonic()
            try:
                job()
            except Exception:  # a job's own bug must not cost the pool a thread
                pass
            # Waiting for the next job, a runner holds nothing of its last
            # process (its exchange, its connection).
            del job
