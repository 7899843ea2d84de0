"""Each component's budget of exit lines in a worker: burst, rate, summaries (a fake clock)."""

from __future__ import annotations

from rusmd.wasm.process import ExitLines


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_component_has_its_own_burst_and_the_rest_are_held_back() -> None:
    lines = ExitLines(FakeClock(), burst=3, per_s=0.0)
    assert [lines.take("crasher") for _ in range(5)] == [True, True, True, False, False]
    # another component's exits are not starved by a crash loop
    assert lines.take("api") is True
    assert lines.summaries(everything=True) == [("crasher", 2)]
    assert lines.summaries(everything=True) == []


def test_lines_come_back_at_the_rate_after_the_burst() -> None:
    clock = FakeClock()
    lines = ExitLines(clock, burst=2, per_s=20.0)
    assert [lines.take("crasher") for _ in range(3)] == [True, True, False]
    clock.now += 0.06  # a little over one line's worth at 20 a second
    assert [lines.take("crasher") for _ in range(2)] == [True, False]


def test_a_summary_is_due_once_its_interval_passed_and_counts_afresh() -> None:
    clock = FakeClock()
    lines = ExitLines(clock, burst=1, per_s=0.0)
    for _ in range(4):
        lines.take("crasher")
    assert lines.summaries() == []  # the first held line was just now
    clock.now += 5.0
    assert lines.summaries() == [("crasher", 3)]
    assert lines.summaries() == []
    lines.take("crasher")
    clock.now += 5.0
    assert lines.summaries() == [("crasher", 1)]


def test_the_summary_line_names_the_component_the_count_and_the_limit() -> None:
    lines = ExitLines(FakeClock(), burst=100, per_s=20.0)
    assert lines.summary_line("crasher", 4512) == (
        "log: suppressed 4512 exit lines of crasher (over 20 a second, burst 100); "
        "rusmctl status and /metrics count every exit"
    )
