"""Pids of one worker: serials leased by the main process, handed out one at a time.

Runs in: worker (any thread: spawns come from the loop thread and guest
threads, inline requests from the I/O thread).

A pid is ``serial * PID_STRIDE + slot`` (``make_pid``): the last
digits name the worker, so any worker can route to any pid. Serials are
unique across the node because the main process leases them in ranges
(``PidLease``); a worker asks for more when fewer than
``LEASE_LOW_WATER`` remain, and a spawn with none left fails with LIMIT
until the next lease arrives.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from rusmd.abi import PID_STRIDE, ErrorCode, make_pid
from rusmd.errors import SpawnError

# Ask the main process for more pid serials when fewer than this remain:
# more than one turn of the worker's loop uses before the lease it asked
# for can be read (a turn serves a request of each of thousands of
# connections); a request that finds no pid left gets 503.
LEASE_LOW_WATER = 16384


class PidLeases:
    """The pid serials this worker holds, and the next one to hand out.

    Args:
        slot: This worker's slot (the last three digits of its pids).
        request_lease: Called (from any thread) when serials run low.
    """

    def __init__(self, slot: int, request_lease: Callable[[], None]) -> None:
        self.slot = slot
        self.request_lease = request_lease
        self._lock = threading.Lock()
        self._leases: deque[tuple[int, int]] = deque()
        self._next_serial = 0
        self._serial_end = 0
        # Below this serial no lease needs asking for (the fast path).
        self._serial_low = 0
        self._lease_pending = False

    def add(self, start: int, end: int) -> None:
        """Pid serials ``[start, end)`` are ours (from the main process)."""
        with self._lock:
            self._leases.append((start, end))
            self._lease_pending = False

    def allocate(self) -> int:
        """A new pid.

        Raises:
            SpawnError: LIMIT: every leased serial is used (a lease is on its way).
        """
        with self._lock:
            serial = self._next_serial
            if serial < self._serial_low:  # the common case: far from the lease's end
                self._next_serial = serial + 1
                return serial * PID_STRIDE + self.slot
            if self._next_serial >= self._serial_end:
                if not self._leases:
                    raise SpawnError(
                        f"worker {self.slot} has no pids left (a lease is on its way)",
                        ErrorCode.LIMIT,
                    )
                self._next_serial, self._serial_end = self._leases.popleft()
                self._serial_low = self._serial_end - LEASE_LOW_WATER
            serial = self._next_serial
            self._next_serial += 1
            remaining = self._serial_end - self._next_serial
            if remaining < LEASE_LOW_WATER:
                remaining += sum(e - s for s, e in self._leases)
            ask = remaining < LEASE_LOW_WATER and not self._lease_pending
            if ask:
                self._lease_pending = True
        if ask:
            self.request_lease()
        return make_pid(serial, self.slot)

    def take(self, count: int) -> tuple[int, int]:
        """Up to ``count`` serials ``[start, end)`` for the inline path; may be empty.

        Taken from the current lease only, so they never cross into the
        next one; the lease's low-water request works as for single pids.
        """
        with self._lock:
            start = self._next_serial
            end = min(start + count, self._serial_low)
            if end <= start:
                return 0, 0
            self._next_serial = end
            return start, end
