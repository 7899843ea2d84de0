"""What one actor operation costs on the in-process worker of ``bench actors``: CPU, instructions.

Runs in: a benchmark process of its own (``python -m bench.actors_cost``).

Wall-clock rates on a shared, loaded machine say little; these two
figures hold up better:

- ``cpu``: the process CPU time (all its threads) of each operation's
  whole run, the least of ``TRIALS`` runs, per operation, for each of
  spawn+run+exit, the send/recv round trip, the call/reply round trip,
  one message one way, and a restart under a supervisor;
- ``run OP N``: run ``N`` operations ``OP`` and nothing else worth
  counting, for an instruction counter around it. Under
  ``valgrind --tool=callgrind``, the total of ``run OP N`` minus that of
  ``run OP 0``, divided by ``N``, is the instructions per operation.

The worker, guest and counts are ``bench.actors``' (``Worker``, the
guest ``bench/guests/actors.c``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.actors_table import CALLS, FLOOD, ROUND_TRIPS, SPAWNS
from bench.actors_worker import Worker, modules

TRIALS = 3
RESTART_WINDOW_S = 2.0
OPERATIONS = ("spawn", "pingpong", "calls", "flood", "restart")


def _cpu_s(run: Callable[[], object]) -> float:
    started = time.process_time()
    run()
    return time.process_time() - started


def _spawns(worker: Worker, count: int) -> None:
    host = worker.host
    for _ in range(count):
        while len(host.processes) >= host.max_processes - 1:
            time.sleep(0.0001)
        host.spawn("empty")
    worker.wait_empty()


def _restarts(worker: Worker, count: int | None, window_s: float = RESTART_WINDOW_S) -> int:
    """Restarts of a crashing child under a guest supervisor: ``count`` of them, or a window's."""
    host = worker.host
    before = host.exits.get("crashed", 0)
    parent = host.spawn("sc_sup")
    started = time.monotonic()
    while (
        host.exits.get("crashed", 0) - before < count
        if count is not None
        else time.monotonic() - started < window_s
    ):
        time.sleep(0.01)
    done = host.exits.get("crashed", 0) - before
    host.kill(parent)
    worker.wait_empty()
    return done


def cpu(worker: Worker) -> dict[str, float]:
    """µs of CPU per operation, each the least of ``TRIALS`` runs."""
    out = {}
    _spawns(worker, SPAWNS)
    out["spawn"] = min(_cpu_s(lambda: _spawns(worker, SPAWNS)) for _ in range(TRIALS)) / SPAWNS
    driver, peer = worker.spawn_ready("bench"), worker.spawn_ready("bench")
    for op, count in (("pingpong", ROUND_TRIPS), ("calls", CALLS), ("flood", FLOOD)):
        worker.measure(driver, op, peer, count)
        runs = [
            _cpu_s(lambda op=op, count=count: worker.measure(driver, op, peer, count))
            for _ in range(TRIALS)
        ]
        out[op] = min(runs) / count
    worker.host.kill(driver)
    worker.host.kill(peer)
    worker.wait_empty()
    per_restart = []
    for _ in range(TRIALS):
        started = time.process_time()
        done = _restarts(worker, None)
        per_restart.append((time.process_time() - started) / max(done, 1))
    out["restart"] = min(per_restart)
    return {op: seconds * 1e6 for op, seconds in out.items()}


def run(worker: Worker, op: str, count: int) -> None:
    """``count`` operations ``op`` (after the worker and, for messages, its two processes)."""
    if op == "spawn":
        _spawns(worker, count)
    elif op == "restart":
        _restarts(worker, count)
    else:
        driver, peer = worker.spawn_ready("bench"), worker.spawn_ready("bench")
        if count:
            worker.measure(driver, op, peer, count)


def main(argv: list[str]) -> int:
    usage = f"usage: python -m bench.actors_cost cpu | run {{{'|'.join(OPERATIONS)}}} N"
    if not (argv == ["cpu"] or (len(argv) == 3 and argv[0] == "run" and argv[1] in OPERATIONS)):
        print(usage, file=sys.stderr)
        return 2
    if argv[0] == "run" and not argv[2].isdigit():
        print(usage, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="rusm-bench-") as directory:
        build = Path(directory)
        built = modules(build)
        (build / "app").mkdir()
        worker = Worker(build / "app", built)
        try:
            if argv[0] == "cpu":
                figures = cpu(worker)
                print(" ".join(f"{op}={us:.1f}µs" for op, us in figures.items()))
            else:
                run(worker, argv[1], int(argv[2]))
        finally:
            worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
