"""Hand the C heap's free pages back to the kernel once a burst of processes has ended.

Runs in: worker, on its loop thread (the heartbeat calls ``HeapTrimmer.check``).

A burst of processes (a thousand WebSockets opened at once, say) grows
the C heap: wasmtime's stores and call futures, the sockets' buffers,
Python's larger objects. When they end their memory is free again, but
glibc's ``malloc`` keeps the pages, so the worker stays at the burst's
high-water mark (about 9 MiB after 1,000 sockets; docs/benchmarks.md,
"Soak"). ``malloc_trim(0)`` returns every free whole page, in about 2 ms
for such a heap, so the worker calls it once most of a burst's processes
have ended. Without glibc (musl) there is no such call, and nothing is
done.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

# Processes that must have ended since the last trim before another one:
# fewer leave too little free to be worth a pass over the heap.
TRIM_AFTER_ENDED = 256
# Trim only once the live processes are at most this share of those that
# ended: the burst is mostly over, so the pages handed back stay unused.
TRIM_LIVE_SHARE = 0.25


def glibc_trim() -> Callable[[], object] | None:
    """``malloc_trim(0)`` of the C library, or None where it has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class HeapTrimmer:
    """Decides when a burst is over and trims the heap then.

    Args:
        trim: Hands free heap pages back (``glibc_trim()``); None: never trims.
    """

    def __init__(self, trim: Callable[[], object] | None) -> None:
        self.trim = trim
        self.trims = 0
        self._ended_at_trim = 0

    def check(self, ended: int, live: int) -> bool:
        """Trim if enough processes ended since the last trim and few are alive.

        Args:
            ended: Processes of this worker that ended so far (a running total).
            live: Processes alive now.

        Returns:
            True when it trimmed.
        """
        since = ended - self._ended_at_trim
        if self.trim is None or since < TRIM_AFTER_ENDED or live > since * TRIM_LIVE_SHARE:
            return False
        self.trim()
        self.trims += 1
        self._ended_at_trim = ended
        return True
