"""The scenario run's bookkeeping with a driver of its own: warm-up, histogram, stop, failures."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from rusmd.node.runs import Runs
from rusmd.node.scenario_app import SCENARIO_NAMES
from rusmd.node.scenario_drivers import SCENARIOS
from rusmd.node.scenario_wrk import figures_of, parse_done
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
    assert latency["mean"] == 500.5  # kept by the recorder, exactly
    assert Recorder().figures(1.0)["latency_us"] == {}


def test_recorder_takes_each_latency_an_operation_timed() -> None:
    recorder = Recorder()
    recorder.record(3, [10_000, 20_000, 30_000])  # ping-pong: each trip the guest timed
    recorder.record(0, [])  # a counted window in which nothing exited
    figures = recorder.figures(1.0)
    assert figures["count"] == 3 and figures["operations"] == 3
    assert figures["latency_us"]["p50"] == 20.0 and figures["latency_us"]["max"] == 30.0


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


def test_the_live_rate_is_over_the_last_second_not_the_last_tick() -> None:
    run = Run(SCENARIO, Sleeper(), seconds=10, tick_s=0.05)
    run._started, run._measured_from = 0.0, 2.0  # as run() sets them
    run._samples.append((2.0, 0))
    rates = []
    for step in range(1, 61):  # 3 s of 50 ms ticks; 1,000 units land every other tick
        if step % 2 == 0:
            run.recorder.record(1000, 1)
        rates.append(run.frame(2.0 + step * 0.05)["rate"])
    # a rate per tick would go 0, 20,000, 0, ...; over the last second it stays near 10,000
    assert all(9_000 <= rate <= 11_000 for rate in rates[20:]), rates


def test_a_run_that_only_fails_ends_early_with_the_first_error() -> None:
    run = Run(SCENARIO, Sleeper(pause_s=0.0, fail=True), seconds=30)
    result = asyncio.run(run.run())
    assert result["state"] == "failed" and result["count"] == 0
    assert result["first_error"] == "OSError: connection refused"
    assert result["measured_s"] < 30


class Staller(Driver):
    """Two lanes: ``steady`` naps 10 ms; ``stalled``'s first operation never ends."""

    async def start(self) -> list[Lane]:
        stalled_once = False

        async def steady() -> Outcome:
            await asyncio.sleep(0.01)
            return 1, None, "steady"

        async def stalled() -> Outcome:
            nonlocal stalled_once
            if not stalled_once:
                stalled_once = True
                await asyncio.Event().wait()  # a peer that never answers
            await asyncio.sleep(0.01)
            return 1, None, "stalled"

        return [steady, stalled]


def test_an_operation_past_its_timeout_fails_and_its_lane_goes_on() -> None:
    run = Run(SCENARIO, Staller(), seconds=1.0, operation_timeout_s=0.1, watchdog_s=0.02)
    result = asyncio.run(run.run())
    assert result["state"] == "done"
    # At least the stalled operation (a loaded machine may stall a nap too).
    assert result["errors"] >= 1
    assert result["first_error"] == "TimeoutError: an operation ran over 0.1 s"
    # The stalled lane was freed and counted operations after it.
    assert result["parts"]["stalled"]["count"] > 0 and result["parts"]["steady"]["count"] > 0


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


class Outside(Driver):
    """An outside client: ``measure`` returns fixed figures, or fails, or waits to be stopped."""

    outside = True

    def __init__(self, outcome: str = "figures") -> None:
        self.outcome = outcome
        self.finished = False

    async def start(self) -> list[Lane]:
        return []

    async def measure(self, warmup_s: float, measured_s: float) -> dict[str, Any]:
        if self.outcome == "fail":
            raise ScenarioError("wrk exited 1: unable to connect")
        if self.outcome == "hang":
            await asyncio.sleep(3600)
        return {
            "measured_s": measured_s,
            "count": 300,
            "operations": 300,
            "rate_per_s": 300 / measured_s,
            "latency_us": {"p50": 10.0, "max": 90.0},
            "errors": 2,
        }

    async def finish(self) -> dict[str, Any]:
        self.finished = True
        return {"client": "outside"}


def test_an_outside_clients_figures_are_the_runs_result() -> None:
    driver = Outside()
    frames: list[dict[str, Any]] = []
    result = asyncio.run(Run(SCENARIO, driver, 0.5, on_tick=frames.append).run())
    assert result["state"] == "done" and driver.finished and result["client"] == "outside"
    assert result["count"] == 300 and result["measured_s"] == 0.4  # 0.5 less the warm-up
    assert result["rate_per_s"] == 750 and result["errors"] == 2
    assert frames[-1]["result"] == result and frames[-1]["rate"] == 750


def test_an_outside_client_that_fails_or_is_stopped_says_so() -> None:
    failed = asyncio.run(Run(SCENARIO, Outside("fail"), 0.5).run())
    assert failed["state"] == "failed" and "unable to connect" in failed["first_error"]

    async def stopped_early() -> dict[str, Any]:
        driver = Outside("hang")
        run = Run(SCENARIO, driver, 60)
        task = asyncio.ensure_future(run.run())
        await asyncio.sleep(0.05)
        run.stop()
        result = await task
        assert driver.finished
        return result

    stopped = asyncio.run(stopped_early())
    assert stopped["state"] == "stopped" and stopped["count"] == 0


def test_wrks_done_line_becomes_the_result_fields() -> None:
    output = (
        "Running 2s test @ http://127.0.0.1:8080/sc/hello\n  1 threads and 64 connections\n"
        '{"requests":28000,"duration_us":2000000,"socket_errors":1,"non_2xx":2,'
        '"p50":3962,"p90":8957,"p95":10887,"p99":18084,"p99.9":34939,"max":39535,'
        '"mean":4771.4}\n'
    )
    figures = figures_of(parse_done(output))
    assert figures["count"] == 28000 and figures["rate_per_s"] == 14000.0
    assert figures["measured_s"] == 2.0 and figures["errors"] == 3
    assert figures["latency_us"]["p99"] == 18084.0 and figures["latency_us"]["mean"] == 4771.4
    with pytest.raises(ScenarioError, match="wrk printed no figures"):
        parse_done("unable to connect to 127.0.0.1:8080 Connection refused\n")
