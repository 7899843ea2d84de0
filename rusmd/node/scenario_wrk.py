"""wrk as the HTTP scenarios' client: http-throughput and kv-storm driven as ``bench http``.

Runs in: the ``rusmd bench`` command's own process, on its loop (wrk is
a child process the loop awaits; nothing waits on the loop's thread).

``rusmd bench http-throughput`` and ``rusmd bench kv-storm`` use wrk
when it is on PATH, the way ``python -m bench http`` drives its
workloads: ``wrk -t1 -c64``, one thread whatever the connection count
(wrk shares the cores with the node, and a second thread would take a
worker's), a warm-up run whose figures are discarded, then the measured
run. A Lua ``done`` hook prints wrk's own latency percentiles (its HDR
histogram, microseconds) as one JSON line, so the result carries the
same fields as a run of the Python client. wrk takes whole seconds: the
warm-up and the measured run are each rounded, at least 1 s.

A run from the attach stream keeps the Python client
(``rusmd.node.scenario_drivers``): the dashboard needs a rate every
tick, which wrk only gives at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from typing import Any

from rusmd.node.scenario_app import KV_PATH, KV_VALUE
from rusmd.node.scenario_target import HttpClient, Target
from rusmd.node.scenarios import Driver, Lane, ScenarioError

# As python -m bench http's headline row: 64 connections on one wrk thread.
WRK_CONNECTIONS = 64
WRK_THREADS = 1
# wrk's own bound on a run that hangs: its duration plus this.
WRK_GRACE_S = 30.0
# wrk's output is a few lines; anything past this is not wrk's.
MAX_WRK_OUTPUT_BYTES = 1 << 20

DONE_SCRIPT = """done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"socket_errors":%d,"non_2xx":%d,' ..
    '"p50":%d,"p90":%d,"p95":%d,"p99":%d,"p99.9":%d,"max":%d,"mean":%.1f}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))
end
"""
"""Prints the run's figures as one JSON line after wrk's own report."""

WRK_ROUTES = {"http-throughput": ("sc_http", "hello"), "kv-storm": ("sc_kv", "get")}
"""Scenario name → (component, action) of the route wrk drives."""
KV_PATHS = {KV_PATH}
"""Paths that read the value ``Target.write_kv_value`` stores."""


def wrk_available() -> bool:
    """Whether ``wrk`` is on PATH."""
    return shutil.which("wrk") is not None


def whole_seconds(seconds: float) -> int:
    """A duration as wrk takes it: whole seconds, at least 1."""
    return max(1, round(seconds))


def parse_done(output: str) -> dict[str, Any]:
    """The figures of a run from the ``DONE_SCRIPT`` line of wrk's output.

    Raises:
        ScenarioError: No such line (wrk failed, or is not the wrk expected).
    """
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            try:
                figures: dict[str, Any] = json.loads(line)
            except ValueError:
                break
            return figures
    raise ScenarioError(f"wrk printed no figures:\n{output[-2000:]}")


def figures_of(done: dict[str, Any]) -> dict[str, Any]:
    """The fields of a run's result (as ``Recorder.figures`` gives them) from wrk's figures."""
    measured_s = done["duration_us"] / 1e6
    requests = int(done["requests"])
    latency = {
        key: round(float(done[key]), 1) for key in ("p50", "p90", "p95", "p99", "p99.9", "max")
    }
    latency["mean"] = round(float(done["mean"]), 1)
    return {
        "measured_s": round(measured_s, 3),
        "count": requests,
        "operations": requests,
        "rate_per_s": round(requests / measured_s, 1) if measured_s > 0 else 0.0,
        "latency_us": latency if requests else {},
        "errors": int(done["socket_errors"]) + int(done["non_2xx"]),
    }


async def run_wrk(url: str, seconds: float, connections: int = WRK_CONNECTIONS) -> str:
    """``wrk -t1 -cN -dS --latency -s DONE_SCRIPT URL``; its output.

    Raises:
        ScenarioError: wrk exited with an error or overran its bound.
    """
    whole_s = whole_seconds(seconds)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="rusm-wrk-") as script:
        script.write(DONE_SCRIPT)
        script.flush()
        argv = [f"-t{WRK_THREADS}", f"-c{connections}", f"-d{whole_s}s", "--latency"]
        child = await asyncio.create_subprocess_exec(
            "wrk",
            *argv,
            "-s",
            script.name,
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(child.communicate(), whole_s + WRK_GRACE_S)
        except BaseException:  # a stop, or the bound: wrk must not outlive the run
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
            raise
    text = out[:MAX_WRK_OUTPUT_BYTES].decode(errors="replace")
    if child.returncode != 0:
        raise ScenarioError(f"wrk exited {child.returncode}: {text[-2000:]}")
    return text


class WrkHttp(Driver):
    """``GET`` one scenario route with wrk: a warm-up run, then the measured one."""

    outside = True

    def __init__(self, target: Target, component: str, action: str) -> None:
        target.need(component)
        self.target = target
        self.host, self.port, self.path = target.route("http", component, action)

    async def start(self) -> list[Lane]:
        if self.path in KV_PATHS:
            await self.target.write_kv_value()  # what kv-storm's route reads
        client = HttpClient(self.host, self.port)
        try:
            status, body = await client.get(self.path)  # fails early, with why
        finally:
            client.close()
        if status != 200:
            text = body[:200].decode(errors="replace")
            raise ScenarioError(f"GET {self.path} answered {status}: {text}")
        # wrk counts statuses, not bodies: a wrong answer must stop the run here.
        if self.path in KV_PATHS and body != KV_VALUE:
            raise ScenarioError(f"GET {self.path} answered {body[:40]!r}, not the value stored")
        return []

    async def measure(self, warmup_s: float, measured_s: float) -> dict[str, Any]:
        """The warm-up (discarded), then the measured run's figures."""
        url = f"http://{self.host}:{self.port}{self.path}"
        await run_wrk(url, warmup_s)
        figures = figures_of(parse_done(await run_wrk(url, measured_s)))
        return {**figures, "warmup_s": float(whole_seconds(warmup_s))}

    async def finish(self) -> dict[str, Any]:
        return {"client": f"wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}", "lanes": WRK_CONNECTIONS}


def wrk_driver(name: str, target: Target) -> Driver | None:
    """The wrk driver of scenario ``name``, or None when it has none."""
    route = WRK_ROUTES.get(name)
    return WrkHttp(target, *route) if route else None
