"""When the worker hands its free heap pages back: after a burst of processes, once.

Runs in: any (the decision logic with a fake trim; one test calls glibc's).
"""

from __future__ import annotations

import platform

import pytest

from rusmd.worker.heap import TRIM_AFTER_ENDED, HeapTrimmer, glibc_trim


class FakeTrim:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return 1


def test_trimmer_once_a_burst_has_ended_trims_once() -> None:
    trim = FakeTrim()
    trimmer = HeapTrimmer(trim)
    assert trimmer.check(ended=1000, live=0)
    assert not trimmer.check(ended=1000, live=0)
    assert not trimmer.check(ended=1000 + TRIM_AFTER_ENDED - 1, live=0)
    assert trim.calls == 1


def test_trimmer_after_the_next_burst_trims_again() -> None:
    trim = FakeTrim()
    trimmer = HeapTrimmer(trim)
    trimmer.check(ended=1000, live=0)
    assert trimmer.check(ended=2000, live=3)
    assert trim.calls == 2


def test_trimmer_while_most_of_a_burst_is_alive_does_not_trim() -> None:
    trim = FakeTrim()
    trimmer = HeapTrimmer(trim)
    assert not trimmer.check(ended=300, live=900)
    assert trimmer.check(ended=1200, live=0)
    assert trim.calls == 1


def test_trimmer_with_few_processes_ended_does_not_trim() -> None:
    trim = FakeTrim()
    assert not HeapTrimmer(trim).check(ended=TRIM_AFTER_ENDED - 1, live=0)
    assert trim.calls == 0


def test_trimmer_without_a_trim_call_never_trims() -> None:
    trimmer = HeapTrimmer(None)
    assert not trimmer.check(ended=10_000, live=0)
    assert trimmer.trims == 0


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_trim_on_glibc_is_callable() -> None:
    trim = glibc_trim()
    assert trim is not None
    assert trim() in (0, 1)
