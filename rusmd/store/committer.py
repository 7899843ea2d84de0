"""Group commit: a worker's one writer thread, shared by every guest that writes.

Runs in: worker (its ``kv-writer`` thread; ``write`` is called from guest
threads and the control handler, ``submit`` from the loop thread for a
fiber, which parks instead of waiting).

LMDB has one writer at a time and each durable commit costs an fsync
(milliseconds on a real disk). Writes wait here in a queue; the writer
thread takes every write waiting (up to ``MAX_GROUP_WRITES``), applies
them in one transaction, commits once, then tells each caller its own
result. A lone writer pays one commit per write, as before; a hundred
concurrent writers pay about one commit per batch instead of a hundred.
No caller hears OK before the commit holding its write is on disk.

If a commit fails (disk full, I/O error) the batch is tried again one
write per transaction, so one write can't fail the others; a write that
still fails gets UNAVAILABLE and the error is logged naming the file.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

import lmdb

from rusmd.abi import ErrorCode
from rusmd.log import Logger
from rusmd.store.kv import KvStore, Write

# Writes one commit takes at most (the rest wait for the next).
MAX_GROUP_WRITES = 512
# How long close() waits for the writes already queued.
CLOSE_TIMEOUT_S = 10.0


class _Pending:
    __slots__ = ("done", "notify", "result", "write")

    def __init__(self, write: Write, notify: Callable[[ErrorCode], None] | None = None) -> None:
        self.write = write
        self.done = threading.Event()
        self.result = ErrorCode.UNAVAILABLE
        self.notify = notify


class GroupCommitter:
    """The writer thread of one store in this process.

    Args:
        store: The open store.
        log: Where commit failures are reported.
    """

    def __init__(self, store: KvStore, log: Logger) -> None:
        self.store = store
        self.log = log
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="kv-writer", daemon=True)
        self._thread.start()

    def write(self, write: Write) -> ErrorCode:
        """Queue ``write`` and wait until its commit is durable; its result."""
        pending = _Pending(write)
        with self._cond:
            if self._closed:
                return ErrorCode.UNAVAILABLE
            self._queue.append(pending)
            self._cond.notify()
        pending.done.wait()
        return pending.result

    def submit(self, write: Write, notify: Callable[[ErrorCode], None]) -> bool:
        """Queue ``write``; ``notify(result)`` runs on the writer thread once it is durable.

        False (and no call) when the committer is closed: the write is refused.
        """
        pending = _Pending(write, notify)
        with self._cond:
            if self._closed:
                return False
            self._queue.append(pending)
            self._cond.notify()
        return True

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(CLOSE_TIMEOUT_S)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = [
                    self._queue.popleft() for _ in range(min(len(self._queue), MAX_GROUP_WRITES))
                ]
            results = self._commit(batch)
            for pending, result in zip(batch, results, strict=True):
                pending.result = result
                pending.done.set()
                if pending.notify is not None:
                    try:
                        pending.notify(result)
                    except Exception as exc:  # a waiter's bug must not stop the writer
                        self.log.error(f"store {self.store.path}: write notice: {exc!r}")

    def _commit(self, batch: list[_Pending]) -> list[ErrorCode]:
        try:
            return self.store.apply([pending.write for pending in batch])
        except lmdb.Error as exc:
            if len(batch) > 1:
                return [self._commit([pending])[0] for pending in batch]
            self.log.error(
                f"store {self.store.path}: write to bucket "
                f"{batch[0].write.bucket.decode()} failed: {exc}"
            )
            return [ErrorCode.UNAVAILABLE]
        except Exception as exc:  # a bug must fail its writes, not hang their callers
            self.log.error(f"store {self.store.path}: {type(exc).__name__}: {exc}")
            return [ErrorCode.UNAVAILABLE] * len(batch)
