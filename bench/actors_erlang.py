"""Erlang/OTP beside rusm: the programs of ``bench/erlang`` run on the same machine.

Runs in: a benchmark process of its own (``python -m bench actors``).

``erlc`` compiles ``bench/erlang/*.erl`` into a temporary directory once;
each figure is then one ``erl`` run of ``bench_actors`` (its module doc
says what every section measures), with one scheduler (``+S 1``) for the
figures on one worker and two (``+S 2``, the driver and its peer bound
to different schedulers) for the figures across workers. The VM prints
one JSON line; this module picks the median of its trials.

When ``erl`` is not installed, or a run fails, the figure is a short
reason instead (``not installed (make bench-deps)``) and the benchmark
goes on without it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.actors_table import TRIALS, Trips, median_by

SOURCES = sorted((Path(__file__).resolve().parent / "erlang").glob("*.erl"))
MISSING = "not installed (make bench-deps)"
# Counts of each Erlang figure: larger than rusm's, so a trial lasts long
# enough (tens of ms or more) to time at Erlang's speed.
SPAWNS = 100_000
ROUND_TRIPS = 20_000
CALLS = 20_000
FLOOD = 1_000_000
# A run that hangs must not hang the benchmark; bench_actors has its own
# watchdog (120 s) and this bound sits above it.
RUN_TIMEOUT_S = 150.0
COMPILE_TIMEOUT_S = 120.0
# Room for the idle census beyond the default limit (262,144 processes).
MIN_PROCESS_LIMIT = 262_144


class Erlang:
    """The compiled Erlang programs, or why there are none."""

    def __init__(self, build: Path) -> None:
        self.ebin = build / "erlang"
        self.problem = ""
        self.release = ""
        # One run per section, count and VM: the rows on one worker and
        # those of the daemon's same worker share Erlang's +S 1 figures.
        self._runs: dict[tuple[str, int, int, int], Any] = {}
        if shutil.which("erl") is None or shutil.which("erlc") is None:
            self.problem = MISSING
            return
        self.ebin.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(
                ["erlc", "-o", str(self.ebin), *map(str, SOURCES)],
                capture_output=True,
                text=True,
                timeout=COMPILE_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self.problem = f"erlc took over {COMPILE_TIMEOUT_S:.0f} s"
            return
        if done.returncode != 0:
            self.problem = f"erlc failed: {(done.stderr or done.stdout).strip()[-300:]}"

    def run(self, section: str, count: int, schedulers: int, trials: int = TRIALS) -> Any:
        """The JSON object ``bench_actors`` printed for ``section``, or a reason (a str)."""
        if self.problem:
            return self.problem
        key = (section, count, schedulers, trials)
        if key not in self._runs:
            self._runs[key] = self._run(section, count, schedulers, trials)
        return self._runs[key]

    def _run(self, section: str, count: int, schedulers: int, trials: int) -> Any:
        command = [
            "erl",
            "+S",
            str(schedulers),
            "+P",
            str(max(MIN_PROCESS_LIMIT, 2 * count)),
            "-noshell",
            "-noinput",
            "-pa",
            str(self.ebin),
            "-run",
            "bench_actors",
            "main",
            section,
            str(count),
            str(trials),
        ]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            return f"{section} took over {RUN_TIMEOUT_S:.0f} s"
        lines = done.stdout.strip().splitlines()
        if not lines:
            return f"{section} printed nothing (exit {done.returncode}): {done.stderr[-300:]}"
        try:
            result: dict[str, Any] = json.loads(lines[-1])
        except ValueError:
            return f"{section} printed {lines[-1][:200]!r}"
        if "error" in result:
            return f"{section} failed: {str(result['error'])[:300]}"
        self.release = str(result.get("otp", ""))
        return result

    def rate(self, section: str, count: int, schedulers: int) -> float | str:
        """The median per-second figure of ``section``'s trials, or a reason."""
        result = self.run(section, count, schedulers)
        if isinstance(result, str):
            return result
        trial = median_by(result["trials"], lambda t: float(t["per_s"]))
        return float(trial["per_s"])

    def trips(self, section: str, count: int, schedulers: int) -> Trips | str:
        """The trial of ``section`` with the median p50, or a reason."""
        result = self.run(section, count, schedulers)
        if isinstance(result, str):
            return result
        return median_by(
            (Trips.from_fields(t) for t in result["trials"]), lambda t: float(t.p50_ns)
        )

    def idle(self, count: int) -> dict[str, Any] | str:
        """``count`` processes parked in ``receive`` on one scheduler: the census, or a reason."""
        result = self.run("idle", count, 1, trials=1)
        if isinstance(result, str):
            return result
        census: dict[str, Any] = result["trials"][0]
        return census

    def label(self, schedulers: int) -> str:
        """How a row names this VM: ``erl +S 1`` and, once known, its OTP release."""
        if self.problem:
            return "no Erlang"
        release = f", OTP {self.release}" if self.release else ""
        return f"erl +S {schedulers}{release}"
