"""``rusmd bench SCENARIO``: run one benchmark scenario headless on a daemon of its own.

Runs in: the ``rusmd bench`` command's own process (not the daemon: it
starts the daemon as a child, ``python -m rusmd`` in a session of its
own, on a temporary app, and drives it from one asyncio loop here).

The app is ``rusmd.node.scenario_app`` (every scenario's components, on
free loopback ports; its C guest compiled by the caller, the command
line, with ``rusmd.guest.module_cache``); the run is
``rusmd.node.scenarios.Run``. The HTTP scenarios http-throughput and
kv-storm are driven by wrk when it is on PATH, as ``python -m bench
http`` drives its workloads (``rusmd.node.scenario_wrk``); without it,
by the Python client, and the result's ``note`` says so. Without
``--json`` a line a second shows the live rate on stderr and the result
is printed as text; with ``--json`` stdout carries one JSON document
(the result) and nothing else. The daemon is stopped with SIGTERM
afterwards (SIGKILL to its group if it does not stop), and the app
directory removed.

Exit codes: 0 the scenario ran, 69 (EX_UNAVAILABLE) the daemon did not
start or the scenario could not run (the message says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import uvloop

from rusmd.errors import EX_OK, EX_UNAVAILABLE
from rusmd.node.control import ControlClient, ControlRefused, ControlUnavailable
from rusmd.node.scenario_app import write_app
from rusmd.node.scenario_drivers import prepare
from rusmd.node.scenario_wrk import WRK_CONNECTIONS, WRK_ROUTES, wrk_available
from rusmd.node.scenarios import Run, ScenarioError

# The daemon compiles the app's eleven small guests before it is ready; on
# a loaded machine that can take a while, but a broken start must end.
READY_TIMEOUT_S = 120.0
READY_POLL_S = 0.1
# SIGTERM drains the workers; past this the group is killed.
STOP_TIMEOUT_S = 30.0
NO_WRK_NOTE = (
    "wrk is not on PATH: driven by the Python client (8 keep-alive connections on one "
    "asyncio loop), whose own cost bounds the rate; not comparable with python -m bench "
    f"http (wrk -t1 -c{WRK_CONNECTIONS}). Install wrk (apt-get install -y wrk) for that."
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bench(
    scenario: str,
    seconds: float,
    profile: str | None,
    as_json: bool,
    cpus: int | None,
    *,
    c_modules: Mapping[str, Path],
) -> int:
    """Run ``scenario`` on a fresh daemon; print its result; the exit code.

    Args:
        scenario: Its name.
        seconds: How long, warm-up included.
        profile: The daemon's ``--profile``, or None for the manifest's.
        as_json: Print the result as one JSON document.
        cpus: The daemon's ``--cpus`` (size the profile as if N cores were
            usable), or None for the machine's.
        c_modules: The scenario app's compiled C guests
            (``rusmd.node.scenario_app.write_app``'s).
    """
    with tempfile.TemporaryDirectory(prefix="rusm-bench-") as directory:
        app = Path(directory)
        write_app(app, (_free_port(), _free_port(), _free_port(), _free_port()), c_modules)
        command = [sys.executable, "-m", "rusmd", "--config", "rusm.toml"]
        if profile:
            command += ["--profile", profile]
        if cpus:
            command += ["--cpus", str(cpus)]
        with (app / "rusmd.log").open("wb") as log:
            daemon = subprocess.Popen(
                command, cwd=app, stdout=log, stderr=log, start_new_session=True
            )
        try:
            # On uvloop, as python -m bench's own clients: the client's loop
            # is part of every figure the Python client gives.
            drive = _drive(app / ".rusm" / "rusmd.sock", scenario, seconds, as_json)
            result = uvloop.run(drive)
        except ScenarioError as exc:
            tail = (app / "rusmd.log").read_text(errors="replace").splitlines()[-10:]
            print(f"rusmd bench {scenario}: {exc}", file=sys.stderr)
            for line in tail:
                print(f"  daemon: {line}", file=sys.stderr)
            return EX_UNAVAILABLE
        finally:
            _stop(daemon)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
    return EX_OK if result["state"] == "done" else EX_UNAVAILABLE


async def _drive(socket_path: Path, name: str, seconds: float, as_json: bool) -> dict[str, Any]:
    await _wait_ready(ControlClient(socket_path, timeout_s=5.0))
    wrk = wrk_available()
    scenario, driver = await prepare(name, socket_path, wrk=wrk)

    def tick(frame: dict[str, Any]) -> None:
        if not as_json and "result" not in frame:
            print(
                f"  {frame['elapsed_s']:6.1f} s  {frame['state']:7}  "
                f"{frame['rate']:>12,.0f} {frame['unit']}/s",
                file=sys.stderr,
                flush=True,
            )

    result = await Run(scenario, driver, seconds=seconds, on_tick=tick, tick_s=1.0).run()
    if name in WRK_ROUTES and not wrk:
        result["note"] = NO_WRK_NOTE
    return result


async def _wait_ready(control: ControlClient) -> None:
    """Until every worker is ready, every component compiled and every resident running."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    why = "no answer on the control socket"
    while time.monotonic() < deadline:
        try:
            status = await control.request("status")
        except (ControlUnavailable, ControlRefused) as exc:
            why = str(exc)
        else:
            workers = status.get("workers", [])
            pending = [c["name"] for c in status.get("components", []) if c["state"] != "ready"]
            down = [r["name"] for r in status.get("residents", []) if r["state"] != "running"]
            if workers and all(w["state"] == "ready" for w in workers) and not pending + down:
                return
            why = f"waiting for workers, components {pending} and residents {down}"
        await asyncio.sleep(READY_POLL_S)
    raise ScenarioError(f"the daemon was not ready within {READY_TIMEOUT_S:g} s ({why})")


def _stop(daemon: subprocess.Popen[bytes]) -> None:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait(timeout=STOP_TIMEOUT_S)


def render(result: dict[str, Any]) -> str:
    """The result as a few lines of text."""
    lines = [
        f"{result['scenario']}: {result['state']}, {result['count']:,} {result['unit']} in "
        f"{result['measured_s']:g} s after a {result['warmup_s']:g} s warm-up",
        f"  counts   {result['counts']}",
        f"  rate     {result['rate_per_s']:,.1f} {result['unit']}/s",
        "  latency  " + _latency(result["latency_us"]),
    ]
    for name, part in result.get("parts", {}).items():
        lines.append(
            f"  {name:15} {part['count']:,} {result['unit']}, {part['rate_per_s']:,.1f}/s, "
            + _latency(part["latency_us"])
        )
    if result["errors"]:
        lines.append(f"  errors   {result['errors']} (first: {result['first_error']})")
    if "client" in result:
        lines.append(f"  client   {result['client']}")
    if "note" in result:
        lines.append(f"  note     {result['note']}")
    return "\n".join(lines)


def _latency(latency: dict[str, float]) -> str:
    if not latency:
        return "none measured"
    return "  ".join(f"{key} {value:,.1f} µs" for key, value in latency.items())
