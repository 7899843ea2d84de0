"""The scenario run's bookkeeping with a driver of its own: warm-up, histogram, stop, failures."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rusmd.node.runs import Runs
from rusmd.node.scenario_app import SCENARIO_NAMES
from rusmd.node.scenario_drivers import SCENARIOS
from rusmd.node.scenarios import (
    Driver,
    Lane,
    Outcome,
    Recorder,
    Run,
    Scenario,
    ScenarioError,
)


class Sleeper(Driver):
    """One lane that sleeps ``pause_s`` and counts ``units``; fails when ``fail`` is set."""

    def __init__(self, pause_s: float = 0.01, units: int = 2, fail: bool = False) -> None:
        self.pause_s, self.units, self.fail = pause_s, units, fail
        self.finished = False

    async def start(self) -> list[Lane]:
        async def one() -> Outcome:
            await asyncio.sleep(self.pause_s)
            if self.fail:
                raise OSError("connection refused")
            return self.units, None, "part"

        return [one]

    async def finish(self) -> dict[str, Any]:
        self.finished = True
        return {"extra": 1}


SCENARIO = Scenario("sleep", "sleeps", "naps", "nothing", lambda _target: Sleeper())


def test_the_driver_list_and_the_command_line_list_agree() -> None:
    assert tuple(SCENARIOS) == SCENARIO_NAMES
    assert all(s.counts and s.unit and s.needs for s in SCENARIOS.values())


def test_recorder_percentiles_come_from_the_histogram() -> None:
    recorder = Recorder()
    for value_us in range(1, 1001):
        recorder.record(1, value_us * 1000)
    figures = recorder.figures(2.0)
    assert figures["count"] == 1000 and figures["rate_per_s"] == 500.0
    latency = figures["latency_us"]
    assert abs(latency["p50"] - 500) <= 1 and abs(latency["p99"] - 990) <= 1
    assert abs(latency["max"] - 1000) <= 1
    assert Recorder().figures(1.0)["latency_us"] == {}


def test_a_run_discards_its_warm_up_and_reports_frames_and_parts() -> None:
    frames: list[dict[str, Any]] = []
    driver = Sleeper()
    run = Run(SCENARIO, driver, seconds=0.5, on_tick=frames.append, tick_s=0.05)
    result = asyncio.run(run.run())
    assert result["state"] == "done" and driver.finished and result["extra"] == 1
    assert result["warmup_s"] == 0.1
    # ~40 operations of 10 ms in 0.4 s measured (not the ~50 of the whole run)
    assert 0 < result["operations"] <= 42 and result["count"] == 2 * result["operations"]
    assert result["parts"]["part"]["count"] == result["count"]
    assert result["latency_us"]["p50"] >= 10_000
    states = [frame["state"] for frame in frames]
    assert states[0] == "warmup" and "running" in states and states[-1] == "done"
    assert "result" in frames[-1] and all("result" not in frame for frame in frames[:-1])


def test_a_run_that_only_fails_ends_early_with_the_first_error() -> None:
    run = Run(SCENARIO, Sleeper(pause_s=0.0, fail=True), seconds=30)
    result = asyncio.run(run.run())
    assert result["state"] == "failed" and result["count"] == 0
    assert result["first_error"] == "OSError: connection refused"
    assert result["measured_s"] < 30


def test_stop_ends_a_run_early() -> None:
    async def go() -> dict[str, Any]:
        run = Run(SCENARIO, Sleeper(), seconds=60)
        task = asyncio.ensure_future(run.run())
        await asyncio.sleep(0.3)
        run.stop()
        return await task

    result = asyncio.run(go())
    assert result["state"] == "stopped" and result["measured_s"] < 60


def test_runs_refuse_bad_arguments_naming_them() -> None:
    async def refusals() -> list[str]:
        runs = Runs(Path("/nonexistent/rusmd.sock"), 60, lambda _frame: None)
        texts = []
        for name, seconds in ((None, 5), ("ping-pong", "5"), ("ping-pong", 0), ("dance", 5)):
            try:
                await runs.start(name, seconds)
            except ScenarioError as exc:
                texts.append(str(exc))
        assert runs.current is None  # nothing started
        return texts

    texts = asyncio.run(refusals())
    assert texts[0] == "run needs a scenario name"
    assert texts[1] == "seconds must be a number, not '5'"
    assert texts[2] == "seconds must be from 0.1 to 600, not 0"
    assert texts[3].startswith("unknown scenario 'dance' (valid: spawn-storm, ping-pong,")
