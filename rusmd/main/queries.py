"""Control queries to workers, and their answers, without blocking the main loop.

Runs in: main.

``rusmctl spawn``, ``list``, ``info`` and ``kill`` act on wasm processes,
which live in workers. The main loop sends a ``Query`` to one or more
workers and moves on; each worker answers on its channel. When every
asked worker has answered, or one has died, or ``QUERY_TIMEOUT_S`` has
passed, the waiting callback gets what arrived (a missing answer is
None), and the control command replies then.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rusmd.channel import Answer, Query

# A worker that does not answer within this is wedged or gone; its
# heartbeat deadline handles the worker, the caller gets a partial answer.
QUERY_TIMEOUT_S = 5.0

Done = Callable[[dict[int, Answer | None]], None]


@dataclass
class _Pending:
    waiting: set[int]
    answers: dict[int, Answer | None]
    done: Done
    deadline: float
    finished: bool = field(default=False)


class Queries:
    """Outstanding worker queries.

    Args:
        send: Sends a message to a worker slot; False when it cannot.
        clock: Monotonic clock.
    """

    def __init__(
        self,
        send: Callable[[int, Query], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.send = send
        self.clock = clock
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}

    def ask(
        self,
        slots: list[int],
        op: str,
        args: dict[str, Any],
        done: Done,
        timeout_s: float = QUERY_TIMEOUT_S,
    ) -> None:
        """Send ``op`` to each of ``slots``; call ``done`` with their answers."""
        query_id = next(self._ids)
        pending = _Pending(set(), {}, done, self.clock() + timeout_s)
        for slot in slots:
            if self.send(slot, Query(id=query_id, op=op, args=args)):
                pending.waiting.add(slot)
            else:
                pending.answers[slot] = None
        self._pending[query_id] = pending
        self._maybe_finish(query_id, pending)

    def on_answer(self, slot: int, answer: Answer) -> None:
        """A worker answered."""
        pending = self._pending.get(answer.id)
        if pending is None or slot not in pending.waiting:
            return  # late (timed out) or unexpected: nobody waits for it
        pending.waiting.discard(slot)
        pending.answers[slot] = answer
        self._maybe_finish(answer.id, pending)

    def worker_gone(self, slot: int) -> None:
        """Worker ``slot`` exited: it will not answer."""
        for query_id, pending in list(self._pending.items()):
            if slot in pending.waiting:
                pending.waiting.discard(slot)
                pending.answers[slot] = None
                self._maybe_finish(query_id, pending)

    def tick(self) -> None:
        """Give up on answers past their deadline."""
        now = self.clock()
        for query_id, pending in list(self._pending.items()):
            if now >= pending.deadline:
                for slot in pending.waiting:
                    pending.answers[slot] = None
                pending.waiting.clear()
                self._maybe_finish(query_id, pending)

    def _maybe_finish(self, query_id: int, pending: _Pending) -> None:
        if pending.waiting or pending.finished:
            return
        pending.finished = True
        self._pending.pop(query_id, None)
        pending.done(pending.answers)
