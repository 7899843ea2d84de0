"""Epoch ticks: CPU limits, memory figures and a fiber's yield, once per tick.

Runs in: worker. ``_tick`` on the ``epoch`` thread; ``_on_epoch`` on the
thread running the guest (the loop thread for a fiber, a guest thread
otherwise), called by wasmtime once per tick while a process's wasm runs.

``EpochClock`` is a part of ``WasmHost`` (``host``): one ticker thread
per worker advances the epochs of its engines (the processes' and the
inline pool's) every ``EPOCH_TICK_MS``; each store's epoch callback
counts the ticks of the current call against ``max-cpu-ms`` (on a fiber,
the ticks it was seen running since it last waited; on a thread, the
ticks since its call started), refreshes the memory figure ``rusmctl
list`` shows, makes a fiber yield the loop, and ends the process when it
is killed.
"""

from __future__ import annotations

import threading
from typing import Any

from wasmtime import _bindings

from rusmd.wasm import capi
from rusmd.wasm.capi import pid_of
from rusmd.wasm.inline import InlinePath
from rusmd.wasm.process import Process
from rusmd.wasm.runners import RunnerPool
from rusmd.wasm.settings import EPOCH_TICK_MS
from rusmd.wasm.traps import new_error

EpochCallback = _bindings._wasmtime_store_epoch_deadline_callback.argtypes[1]


class EpochClock:
    """The host's epoch ticker and its stores' epoch callback (a part of ``WasmHost``)."""

    engine: Any  # the processes' wasmtime Engine
    inline: InlinePath
    processes: dict[int, Process]
    runners: RunnerPool
    ticks: int
    _halted: threading.Event

    def _tick(self) -> None:
        interval = EPOCH_TICK_MS / 1000
        engine = self.engine.ptr()
        while not self._halted.wait(interval):
            self.ticks += 1
            capi.engine_increment_epoch(engine)
            # Read each tick: a load may have made the inline pool again.
            capi.engine_increment_epoch(self.inline.engine)
            self.runners.nudge()

    def _on_epoch(self, context: Any, _data: Any, delta: Any, kind: Any) -> int:
        """Runs once per tick while a process's wasm runs (its thread, or the loop's)."""
        try:
            process = self.processes.get(pid_of(context))
            fiber = False
            if process is not None:
                fiber = process.fiber is not None
                if process.memory is not None:
                    process.memory_bytes = process.memory.size()
                if process.stop_reason:
                    return new_error(process.stop_reason)
                process.busy_ticks += 1
                if fiber:
                    # Ticks it was seen running since it last waited.
                    used_ms = process.busy_ticks * EPOCH_TICK_MS
                else:
                    process.cpu_ticks += 1
                    used_ms = (self.ticks - process.call_started_tick) * EPOCH_TICK_MS
                if used_ms > process.component.capability.max_cpu_ms:
                    process.cpu_exceeded = True
                    return new_error("cpu limit")
            delta[0] = 1
            # A fiber gives the loop back every tick (WASMTIME_UPDATE_DEADLINE_YIELD).
            kind[0] = 1 if fiber else 0
            return 0
        except BaseException:
            return new_error("host error in epoch callback")
