"""Benchmark scenarios: one timed run against a live node, its histogram, its live frames.

Runs in: node endpoint, on its event loop (a run from the attach
stream), or the ``rusmd bench`` command's process, on its own loop.

A scenario (``rusmd.node.scenario_drivers``) gives a few *lanes*: async
operations that run back to back, each lane on its own, as many at once
as the scenario has lanes. ``Run`` times every operation on the
monotonic clock, discards those that end inside the warm-up, and
records the rest in an HDR histogram (``hdrhistogram``: 3 significant
digits from 1 ns to a minute; no sorted list of samples). An operation
says how many *units* it did (a request, an event, a round trip), which
make the rate; its latency is the operation's own time unless the
scenario gives others (ping-pong: each round trip of its batch, as the
guest timed it; spawn-storm: the mean time a spawn took in the window
the operation counted).

The run stops by itself after its seconds, or on ``stop``; an operation
in flight when it ends is awaited up to ``DRAIN_TIMEOUT_S`` and then
cancelled. A lane whose operation fails pauses ``ERROR_PAUSE_S`` before
trying again, so a broken target costs a few requests a second, and a
run that only fails ends with the first error.

An operation that runs past ``OPERATION_TIMEOUT_S`` fails with
``TimeoutError``: one watchdog, woken every ``WATCHDOG_S``, cancels the
lane's task and the lane goes on. Not a timeout around each operation:
``asyncio.timeout`` schedules and cancels a timer each time, 6.6 µs on
uvloop, which a WebSocket round trip's client (about 30 µs) would carry
on every trip and ``python -m bench``'s client does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from rusmd.node.scenario_app import DEFAULT_SECONDS, MAX_SECONDS

# One operation (a request, a round trip, a stream): past this it counts
# as failed and the lane goes on, so a stalled peer cannot hold a lane
# for the rest of the run.
OPERATION_TIMEOUT_S = 10.0
# How often the watchdog looks for an operation past OPERATION_TIMEOUT_S:
# a stalled one is failed within this much more.
WATCHDOG_S = 1.0
# The warm-up: this share of the run, at most MAX_WARMUP_S.
WARMUP_SHARE = 0.2
MAX_WARMUP_S = 2.0
# An operation still running when the run ends gets this long to finish
# (its own timeouts are shorter) before it is cancelled.
DRAIN_TIMEOUT_S = 10.0
# A lane whose operation failed waits this long before the next one, so a
# broken target is not hammered in a tight loop.
ERROR_PAUSE_S = 0.05
# Failures with no success at all after which the run gives up early.
MAX_ERRORS_WITHOUT_SUCCESS = 20
# The histogram's range (ns) and precision: a minute at 3 significant digits.
HISTOGRAM_MAX_NS = 60_000_000_000
HISTOGRAM_DIGITS = 3
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
# A frame's live rate is over the last second of frames, not the last
# tick: an operation that counts many units at once (an SSE stream of
# 20,000 events, a 0.1 s read of the workers' counters) would make a
# rate per 50 ms tick jump between 0 and a multiple of the real one.
LIVE_RATE_WINDOW_S = 1.0


class RunState(enum.StrEnum):
    """Where a run is, as a ``scenario`` frame spells it."""

    WARMUP = "warmup"
    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"


# (units done, latency in ns, or the latencies of its units, or None for
# the operation's own time; part or "")
Outcome = tuple[int, int | list[int] | None, str]
Lane = Callable[[], Awaitable[Outcome]]


class ScenarioError(Exception):
    """A scenario cannot run against this node (what is missing, or what failed)."""


class Recorder:
    """Units and an HDR latency histogram (ns) for the measured part of a run.

    ``figures`` runs on the loop the lanes run on, every tick: it reads
    the percentiles in one pass over the histogram's counts (about 1 ms)
    and keeps the mean itself. ``HdrHistogram.get_mean_value`` walks every
    recorded value in Python, and one ``get_value_at_percentile`` a
    percentile scans the counts again: 83 ms a frame together, long enough
    to stall every lane of the run behind each tick.
    """

    def __init__(self) -> None:
        self.histogram = HdrHistogram(1, HISTOGRAM_MAX_NS, HISTOGRAM_DIGITS)
        self.units = 0
        self.operations = 0
        self.total_ns = 0

    def record(self, units: int, latency_ns: int | list[int]) -> None:
        """One operation: its latency, or one latency for each thing it timed."""
        self.units += units
        for timed in latency_ns if isinstance(latency_ns, list) else (latency_ns,):
            value = min(max(1, timed), HISTOGRAM_MAX_NS)
            self.operations += 1
            self.total_ns += value
            self.histogram.record_value(value)

    def figures(self, seconds: float) -> dict[str, Any]:
        """Count, rate a second over ``seconds``, latency percentiles in µs."""
        histogram = self.histogram
        latency: dict[str, float] = {}
        if self.operations:
            values = histogram.get_percentile_to_value_dict(list(PERCENTILES))
            for pct in PERCENTILES:
                latency[f"p{pct:g}"] = _us(values[pct])
            latency["max"] = _us(histogram.get_max_value())
            latency["mean"] = _us(self.total_ns / self.operations)
        return {
            "count": self.units,
            "operations": self.operations,
            "rate_per_s": round(self.units / seconds, 1) if seconds > 0 else 0.0,
            "latency_us": latency,
        }


def _us(ns: float) -> float:
    return round(ns / 1000.0, 1)


@dataclass
class Scenario:
    """A scenario's name, what it counts, and how to build its driver.

    Attributes:
        name: As ``rusmd bench`` and the ``run`` command take it.
        counts: One sentence: what a unit is and what the latency times.
        unit: The unit's name in the plural ("requests").
        needs: What the node must have, in words, for the "not available" answer.
        driver: ``Target`` → a ``Driver``.
    """

    name: str
    counts: str
    unit: str
    needs: str
    driver: Callable[[Any], Driver]


class Driver:
    """A scenario's lanes, with set-up and clean-up around them.

    A driver whose load comes from an outside client (wrk:
    ``rusmd.node.scenario_wrk``) sets ``outside``; ``Run`` then calls its
    ``measure`` instead of running lanes, and takes its figures.
    """

    outside = False

    async def start(self) -> list[Lane]:
        """Prepare the node (spawn, connect); the lanes to run."""
        raise NotImplementedError

    async def measure(self, warmup_s: float, measured_s: float) -> dict[str, Any]:
        """An outside client's run: warm up, measure; the result's figure fields.

        The fields are those of ``Recorder.figures`` plus ``measured_s`` and
        ``errors``. Only for a driver that sets ``outside``.
        """
        raise NotImplementedError

    async def finish(self) -> dict[str, Any]:
        """Undo ``start`` (close, kill); extra fields for the result."""
        return {}


@dataclass
class Run:
    """One run of ``scenario`` for ``seconds`` (warm-up included).

    Args:
        scenario: What to run.
        driver: Its driver, built for the target node.
        seconds: How long, warm-up included (at most ``MAX_SECONDS``).
        on_tick: Called with a ``scenario`` frame every ``tick_s`` and at the end.
        tick_s: Frame interval.
        operation_timeout_s: An operation running longer fails (``OPERATION_TIMEOUT_S``).
        watchdog_s: How often that is looked for (``WATCHDOG_S``).
    """

    scenario: Scenario
    driver: Driver
    seconds: float = DEFAULT_SECONDS
    on_tick: Callable[[dict[str, Any]], None] | None = None
    tick_s: float = 0.5
    operation_timeout_s: float = OPERATION_TIMEOUT_S
    watchdog_s: float = WATCHDOG_S
    state: RunState = RunState.WARMUP
    recorder: Recorder = field(default_factory=Recorder)
    parts: dict[str, Recorder] = field(default_factory=dict)
    errors: int = 0
    first_error: str = ""
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _started: float = 0.0
    _measured_from: float = 0.0
    _samples: deque[tuple[float, int]] = field(default_factory=deque)  # (at, units)
    _last_rate: float = 0.0
    # Each lane's task, the monotonic ns its operation began (0: between
    # operations), and the lanes the watchdog cancelled for running over.
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _began: list[int] = field(default_factory=list)
    _overdue: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.seconds = min(max(self.seconds, 0.1), MAX_SECONDS)
        self.warmup_s = min(self.seconds * WARMUP_SHARE, MAX_WARMUP_S)

    def stop(self) -> None:
        """End the run early (its result says ``stopped``)."""
        if self.state in (RunState.WARMUP, RunState.RUNNING):
            self.state = RunState.STOPPED
        self._stop.set()

    async def run(self) -> dict[str, Any]:
        """Run to the end; the result document (also the last frame's ``result``)."""
        lanes = await self.driver.start()
        self._started = time.monotonic()
        self._measured_from = self._started + self.warmup_s
        self._samples.append((self._measured_from, 0))
        if self.driver.outside:
            return await self._run_outside()
        self._began = [0] * len(lanes)
        tasks = self._tasks = [
            asyncio.ensure_future(self._lane(index, lane)) for index, lane in enumerate(lanes)
        ]
        ticker = asyncio.ensure_future(self._ticker())
        watchdog = asyncio.ensure_future(self._watchdog())
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.seconds)
        finally:
            ended = time.monotonic()
            self._stop.set()
            ticker.cancel()
            watchdog.cancel()
            _done, pending = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)
            for task in pending:
                task.cancel()
            extra = await self.driver.finish()
        if self.state in (RunState.WARMUP, RunState.RUNNING):
            self.state = RunState.DONE
        if not self.recorder.operations and self.first_error:
            self.state = RunState.FAILED
        result = self.result(ended, extra)
        self._emit({**self.frame(ended), "result": result})
        return result

    async def _run_outside(self) -> dict[str, Any]:
        """The run of an outside client: its figures, or why it failed or stopped."""
        measuring = asyncio.ensure_future(
            self.driver.measure(self.warmup_s, self.seconds - self.warmup_s)
        )
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({measuring, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not measuring.done():
                measuring.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await measuring
            extra = await self.driver.finish()
        figures: dict[str, Any] = {}
        if not measuring.cancelled():
            error = measuring.exception()
            if error is not None:
                self._failed(error)
            else:
                figures = measuring.result()
        if figures and self.state in (RunState.WARMUP, RunState.RUNNING):
            self.state = RunState.DONE
        elif not figures and self.state is not RunState.STOPPED:
            self.state = RunState.FAILED
        ended = time.monotonic()
        result = self.result(ended, extra)
        if figures:
            self.errors = figures.pop("errors", 0)
            result = {**result, **figures, "errors": self.errors}
        frame = self.frame(ended)
        frame.update(rate=result["rate_per_s"], count=result["count"], errors=self.errors)
        self._emit({**frame, "result": result})
        return result

    async def _lane(self, index: int, lane: Lane) -> None:
        stop = self._stop
        while not stop.is_set():
            try:
                await self._operations(index, lane)
            except asyncio.CancelledError:
                if index not in self._overdue:
                    raise  # the run is over
                # The watchdog's cancellation: this operation failed, the lane goes on.
                self._overdue.discard(index)
                self._began[index] = 0
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                self._failed(TimeoutError(f"an operation ran over {self.operation_timeout_s:g} s"))

    async def _operations(self, index: int, lane: Lane) -> None:
        """Run ``lane``'s operations back to back until the run stops."""
        stop, began_at = self._stop, self._began
        while not stop.is_set():
            began = began_at[index] = time.monotonic_ns()
            try:
                units, latency_ns, part = await lane()
            except Exception as exc:  # any failure of one operation is counted; the run goes on
                began_at[index] = 0
                self._failed(exc)
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            ended = time.monotonic_ns()
            began_at[index] = 0
            if ended / 1e9 < self._measured_from or stop.is_set():
                continue  # warm-up, or past the end: not counted
            latency = latency_ns if latency_ns is not None else ended - began
            self.recorder.record(units, latency)
            if part:
                self.parts.setdefault(part, Recorder()).record(units, latency)

    async def _watchdog(self) -> None:
        """Every ``watchdog_s``: cancel the lanes whose operation ran past its time."""
        limit_ns = int(self.operation_timeout_s * 1e9)
        while True:
            await asyncio.sleep(self.watchdog_s)
            now = time.monotonic_ns()
            for index, began in enumerate(self._began):
                if began and now - began > limit_ns and index not in self._overdue:
                    self._overdue.add(index)
                    self._tasks[index].cancel()

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = f"{type(exc).__name__}: {exc}"
        if self.errors >= MAX_ERRORS_WITHOUT_SUCCESS and not self.recorder.operations:
            self._stop.set()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            if self.state is RunState.WARMUP and now >= self._measured_from:
                self.state = RunState.RUNNING
            self._emit(self.frame(now))

    def _emit(self, frame: dict[str, Any]) -> None:
        if self.on_tick is not None:
            self.on_tick(frame)

    def frame(self, now: float) -> dict[str, Any]:
        """The live ``scenario`` frame: rate over the last second, percentiles so far."""
        rate = self._last_rate
        samples = self._samples
        if samples and now > samples[-1][0]:
            samples.append((now, self.recorder.units))
            while len(samples) > 2 and now - samples[1][0] >= LIVE_RATE_WINDOW_S:
                samples.popleft()
            since, units = samples[0]
            # An interval shorter than half a tick (the first one after the
            # warm-up can be a few ms) would make a wild rate: keep the last.
            if now - since >= self.tick_s / 2:
                rate = (self.recorder.units - units) / (now - since)
                self._last_rate = rate
        figures = self.recorder.figures(max(0.0, now - self._measured_from))
        latency = figures["latency_us"]
        return {
            "type": "scenario",
            "scenario": self.scenario.name,
            "state": str(self.state),
            "unit": self.scenario.unit,
            "elapsed_s": round(now - self._started, 3),
            "seconds": self.seconds,
            "warmup_s": self.warmup_s,
            "rate": round(rate, 1),
            "count": figures["count"],
            "p50_us": latency.get("p50"),
            "p95_us": latency.get("p95"),
            "p99_us": latency.get("p99"),
            "errors": self.errors,
        }

    def result(self, ended: float, extra: dict[str, Any]) -> dict[str, Any]:
        """The run's document: what it counts, its figures, its parts, its errors."""
        measured = max(0.0, min(ended, self._started + self.seconds) - self._measured_from)
        return {
            "scenario": self.scenario.name,
            "counts": self.scenario.counts,
            "unit": self.scenario.unit,
            "state": str(self.state),
            "seconds": self.seconds,
            "warmup_s": round(self.warmup_s, 3),
            "measured_s": round(measured, 3),
            **self.recorder.figures(measured),
            "parts": {
                name: recorder.figures(measured) for name, recorder in sorted(self.parts.items())
            },
            "errors": self.errors,
            "first_error": self.first_error,
            **extra,
        }
