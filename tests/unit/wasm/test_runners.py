"""The guest-thread pool: few threads for short jobs, more for blocked or long ones.

Runs in: the test process (real threads; no wasm needed).
"""

from __future__ import annotations

import threading
import time

from rusmd.wasm.runners import STALL_S, RunnerPool


def wait_until(predicate, timeout_s: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.001)
    return False


def test_a_burst_of_short_jobs_runs_on_the_base_threads_only() -> None:
    pool = RunnerPool(limit=100, base=1)
    done: list[int] = []
    for i in range(500):
        pool.submit(lambda i=i: done.append(i))

    assert wait_until(lambda: len(done) == 500)
    assert pool.threads == 1
    assert sorted(done) == list(range(500))
    pool.close()


def test_blocked_runners_get_company_so_queued_work_still_runs() -> None:
    pool = RunnerPool(limit=10, base=1)
    release = threading.Event()
    ran = threading.Event()

    def blocked() -> None:
        pool.blocking()
        try:
            release.wait(10)
        finally:
            pool.unblocked()

    pool.submit(blocked)
    pool.submit(ran.set)

    assert ran.wait(5), "a job queued behind a blocked runner must run"
    assert pool.threads == 2
    release.set()
    pool.close()


def test_a_long_computation_gets_company_after_the_stall_time() -> None:
    pool = RunnerPool(limit=10, base=1)
    release = threading.Event()
    ran = threading.Event()
    pool.submit(lambda: release.wait(10))  # busy, not marked blocked
    pool.submit(ran.set)

    time.sleep(STALL_S * 3)
    pool.nudge()

    assert ran.wait(5)
    release.set()
    pool.close()


def test_the_thread_limit_holds() -> None:
    pool = RunnerPool(limit=3, base=1)
    release = threading.Event()

    def blocked() -> None:
        pool.blocking()
        try:
            release.wait(10)
        finally:
            pool.unblocked()

    for _ in range(6):
        pool.submit(blocked)
    assert wait_until(lambda: pool.threads == 3)
    time.sleep(STALL_S * 2)
    pool.nudge()

    assert pool.threads == 3
    release.set()
    pool.close()


def test_a_refused_thread_leaves_the_count_true_and_the_work_queued(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pool = RunnerPool(limit=10, base=1)
    release = threading.Event()
    entered = threading.Event()

    def blocked() -> None:
        entered.set()
        pool.blocking()  # asks for company, which the system refuses below
        release.wait(10)
        pool.unblocked()

    real_start = threading.Thread.start
    refusals = [0]

    def refuse_once(self: threading.Thread) -> None:
        if self.name.startswith("guest") and refusals[0] == 0 and pool.threads == 2:
            refusals[0] += 1
            raise RuntimeError("can't start new thread")
        real_start(self)

    pool.submit(blocked)
    assert entered.wait(10)
    ran = threading.Event()
    monkeypatch.setattr(threading.Thread, "start", refuse_once)
    pool.submit(ran.set)  # every runner is blocked: wants a thread, is refused
    assert refusals[0] == 1 and pool.refused == 1
    assert pool.threads == 1, "a refused thread must not be counted"
    monkeypatch.setattr(threading.Thread, "start", real_start)
    release.set()
    assert ran.wait(10), "queued work runs once a runner frees up"
    pool.close()
