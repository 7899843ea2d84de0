"""Scenario runs started from the attach stream: one at a time, its frames to every client.

Runs in: node endpoint, on its event loop.

``run`` checks that the node has what the scenario drives (its
components and routes, from the node's own manifest) and answers at
once, with the run started or with why it cannot run; the run then goes
on in a task of its own and sends a ``scenario`` frame to every attached
client each tick (``rusmd.node.scenarios.Run.frame``), and a last one
carrying the ``result``. A second ``run`` while one is going is refused;
``stop`` ends the current one early (its last frame says ``stopped``).
A client that leaves does not stop the run: it is the node's, not the
client's, and ends by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rusmd.node.scenario_app import DEFAULT_SECONDS, MAX_SECONDS
from rusmd.node.scenario_drivers import prepare
from rusmd.node.scenarios import Run, ScenarioError

# Scenario frames a second at most, whatever ticks_per_second asks: each
# frame reads the histogram's percentiles, which costs more than a snapshot.
MAX_FRAMES_PER_SECOND = 20


class Runs:
    """The endpoint's scenario runs.

    Args:
        socket_path: The node's control socket.
        ticks: The node's ``ticks_per_second``.
        broadcast: Sends one frame to every attached client.
    """

    def __init__(
        self, socket_path: Path, ticks: int, broadcast: Callable[[dict[str, Any]], None]
    ) -> None:
        self.socket_path = socket_path
        self.tick_s = 1.0 / min(ticks, MAX_FRAMES_PER_SECOND)
        self.broadcast = broadcast
        self.current: Run | None = None
        self.task: asyncio.Future[Any] | None = None
        self.last: dict[str, Any] | None = None

    async def start(self, name: Any, seconds: Any) -> dict[str, Any]:
        """Start scenario ``name`` for ``seconds``; what the ``result`` answer carries.

        Raises:
            ScenarioError: A run is going, the arguments are wrong, or this
                node cannot run the scenario (and why).
        """
        if self.current is not None:
            raise ScenarioError(f"scenario {self.current.scenario.name} is running; stop it first")
        if not isinstance(name, str):
            raise ScenarioError("run needs a scenario name")
        if seconds is None:
            seconds = DEFAULT_SECONDS
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ScenarioError(f"seconds must be a number, not {seconds!r}")
        if not 0.1 <= seconds <= MAX_SECONDS:
            raise ScenarioError(f"seconds must be from 0.1 to {MAX_SECONDS:g}, not {seconds}")
        scenario, driver = await prepare(name, self.socket_path)
        if self.current is not None:  # another client started one meanwhile
            raise ScenarioError(f"scenario {self.current.scenario.name} is running")
        run = Run(scenario, driver, float(seconds), on_tick=self.broadcast, tick_s=self.tick_s)
        self.current = run
        self.task = asyncio.ensure_future(self._run(run))
        return {"scenario": scenario.name, "seconds": run.seconds, "counts": scenario.counts}

    async def _run(self, run: Run) -> None:
        try:
            self.last = await run.run()
        except Exception as exc:  # set-up failed (a spawn refused, a listener gone): say so
            self.broadcast(
                {
                    "type": "scenario",
                    "scenario": run.scenario.name,
                    "state": "failed",
                    "error": f"{type(exc).__name__}: {exc}",
                }
            )
        finally:
            self.current = None

    def stop(self) -> dict[str, Any]:
        """Stop the current run; what the ``result`` answer carries.

        Raises:
            ScenarioError: Nothing is running.
        """
        if self.current is None:
            raise ScenarioError("nothing to stop: no scenario is running")
        self.current.stop()
        return {"scenario": self.current.scenario.name}

    async def close(self) -> None:
        """Stop a run and wait for its clean-up (the endpoint is stopping)."""
        if self.current is not None:
            self.current.stop()
        if self.task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self.task, 15.0)
