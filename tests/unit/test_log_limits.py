"""Logging that never blocks or floods: the line budget, the stderr backlog, cut lines.

Runs in: any (the test process). The budget is tested on a fake clock;
``LogOutput`` on real pipes whose reader the test controls.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator

import pytest

from rusmd.config.model import LogLevel
from rusmd.log import (
    MAX_LINE_BYTES,
    MAX_PENDING_OUTPUT_BYTES,
    JsonFormatter,
    LineBudget,
    Logger,
    LogOutput,
    LogRecord,
    TextFormatter,
)

MARKER = re.compile(r"…\[truncated (\d+) bytes\]")
LINE = "x" * 99  # 100 bytes with its newline


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ── LineBudget ──────────────────────────────────────────────────────────


def test_line_budget_burst_then_refused_lines_are_counted() -> None:
    budget = LineBudget(FakeClock(), burst=100, per_s=100.0, summary_interval_s=5.0)

    taken = [budget.take() for _ in range(250)]

    assert taken.count(True) == 100
    assert taken[:100] == [True] * 100
    assert budget.suppressed == 150


def test_line_budget_refills_at_its_rate_up_to_the_burst() -> None:
    clock = FakeClock()
    budget = LineBudget(clock, burst=100, per_s=100.0)
    for _ in range(100):
        budget.take()

    clock.now += 0.5
    half_second = sum(budget.take() for _ in range(1000))
    clock.now += 3600
    after_an_hour = sum(budget.take() for _ in range(1000))

    assert half_second == 50
    assert after_an_hour == 100


def test_line_budget_summary_is_due_once_per_interval_then_counts_afresh() -> None:
    clock = FakeClock()
    budget = LineBudget(clock, burst=1, per_s=1.0, summary_interval_s=5.0)
    budget.take()
    for _ in range(10):
        budget.take()

    assert budget.summary_due() == 0
    clock.now += 5.0
    assert budget.summary_due() == 10
    assert budget.summary_due() == 0
    assert budget.take_suppressed() == 0


def test_line_budget_take_suppressed_hands_over_what_is_left_at_exit() -> None:
    budget = LineBudget(FakeClock(), burst=2, per_s=0.0)
    for _ in range(7):
        budget.take()

    assert budget.take_suppressed() == 5
    assert budget.suppressed == 0


# ── LogOutput ───────────────────────────────────────────────────────────


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        os.close(fd)


def drain(read_fd: int) -> bytes:
    data = b""
    while True:
        try:
            chunk = os.read(read_fd, 1 << 20)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def test_log_output_on_a_pipe_leaves_the_shared_descriptor_blocking(
    pipe: tuple[int, int],
) -> None:
    _read_fd, write_fd = pipe

    output = LogOutput.open(write_fd)

    assert not fcntl.fcntl(write_fd, fcntl.F_GETFL) & os.O_NONBLOCK
    assert output.fileno is not None and output.fileno != write_fd


def test_log_output_on_a_full_pipe_never_blocks_and_drops_past_its_backlog(
    pipe: tuple[int, int],
) -> None:
    _read_fd, write_fd = pipe
    output = LogOutput.open(write_fd)
    lines = 2 * (MAX_PENDING_OUTPUT_BYTES + (1 << 20)) // 100

    for _ in range(lines):
        output.write_line(LINE)

    assert output.pending
    assert 0 < output.dropped < lines


def test_log_output_reader_catching_up_gets_every_kept_line_then_the_drop_count(
    pipe: tuple[int, int],
) -> None:
    read_fd, write_fd = pipe
    reports: list[int] = []
    output = LogOutput.open(write_fd, on_caught_up=reports.append)
    output.on_caught_up = lambda count: (reports.append(count), output.write_line("dropped"))
    lines = 2 * (MAX_PENDING_OUTPUT_BYTES + (1 << 20)) // 100
    for i in range(lines):
        output.write_line(f"{i:098d}")

    received = b""
    while output.pending:
        received += drain(read_fd)
        output.flush()
    received += drain(read_fd)

    shown = received.decode().splitlines()
    assert reports == [output.dropped]
    assert shown[-1] == "dropped"
    numbers = [int(line) for line in shown[:-1]]
    assert numbers == list(range(len(numbers)))  # the oldest kept, in order, none torn
    assert len(numbers) + output.dropped == lines


def test_log_output_on_a_regular_file_writes_everything_at_once(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        output = LogOutput.open(fd)
        for _ in range(10_000):
            output.write_line(LINE)
    finally:
        os.close(fd)

    assert output.fileno is None
    assert not output.pending
    assert os.path.getsize(path) == 10_000 * 100


def test_log_output_without_a_reader_drops_silently() -> None:
    read_fd, write_fd = os.pipe()
    try:
        output = LogOutput.open(write_fd)
        os.close(read_fd)
        for _ in range(10):
            output.write_line(LINE)
    finally:
        os.close(write_fd)

    assert not output.pending


# ── lines cut before the formatter ──────────────────────────────────────


def cut_record(original: str, kept_bytes: int) -> LogRecord:
    records: list[LogRecord] = []
    kept = original.encode()[:kept_bytes].decode()
    Logger(LogLevel.INFO, records.append).log(
        LogLevel.INFO, kept, source="biglog#7", cut_bytes=len(original.encode()) - kept_bytes
    )
    return records[0]


@pytest.mark.parametrize("text", ["a", "é", "\x01"], ids=["ascii", "two-byte", "escaped"])
def test_formatters_line_cut_by_the_host_then_again_names_every_byte_left_out(text: str) -> None:
    original = text * (1 << 20)
    record = cut_record(original, MAX_LINE_BYTES)

    text_line = TextFormatter(colour=False).format(record)
    json_line = JsonFormatter().format(record)

    for line, shown in (
        (text_line, text_line.split("biglog#7", 1)[1].split("info  ", 1)[1]),
        (json_line, json_line.split('"text":"', 1)[1]),
    ):
        assert len(line.encode()) <= MAX_LINE_BYTES
        match = MARKER.search(shown)
        assert match is not None, line[-80:]
        kept_chars = len(shown[: match.start()].replace("\\x01", "\x01").replace("\\u0001", "\x01"))
        assert kept_chars * len(text.encode()) + int(match.group(1)) == len(original.encode())


def test_logger_cut_line_short_enough_keeps_the_host_marker_and_count() -> None:
    record = cut_record("a" * 5000, 100)

    line = TextFormatter(colour=False).format(record)

    assert record.text.endswith("…[truncated 4900 bytes]")
    assert line.endswith("a" * 100 + "…[truncated 4900 bytes]")
