"""The platform logger: level gating, the text and JSON lines, the ring.

The gating oracle is the manifest's ``[log]`` rules written out by hand: levels are
cumulative, error < warn < info < debug, and ``off`` shows nothing.
"""

from __future__ import annotations

import datetime
import io
import re

import msgspec
import pytest

from rusmd.config.model import LogLevel
from rusmd.log import (
    LEVEL_WIDTH,
    MAX_LINE_BYTES,
    SOURCE_WIDTH,
    JsonFormatter,
    Logger,
    LogRecord,
    LogRing,
    TextFormatter,
    enabled,
    stream_is_tty,
)

# Which levels each threshold shows.
SHOWN: dict[LogLevel, set[LogLevel]] = {
    LogLevel.OFF: set(),
    LogLevel.ERROR: {LogLevel.ERROR},
    LogLevel.WARN: {LogLevel.ERROR, LogLevel.WARN},
    LogLevel.INFO: {LogLevel.ERROR, LogLevel.WARN, LogLevel.INFO},
    LogLevel.DEBUG: {LogLevel.ERROR, LogLevel.WARN, LogLevel.INFO, LogLevel.DEBUG},
}

ANSI = re.compile(r"\x1b\[[0-9;]*m")
RED = "\x1b[31m"
# 2026-05-09 07:35:25.123 UTC.
WHEN = 1778312125.123


def record(text: str = "ready", source: str = "rusm", level: str = "info") -> LogRecord:
    return LogRecord(WHEN, source, level, text)


def collecting_logger(threshold: LogLevel) -> tuple[Logger, list[LogRecord]]:
    records: list[LogRecord] = []
    return Logger(threshold, records.append, clock=lambda: WHEN), records


def emit_at(logger: Logger, level: LogLevel, text: str) -> None:
    methods = {
        LogLevel.ERROR: logger.error,
        LogLevel.WARN: logger.warn,
        LogLevel.INFO: logger.info,
        LogLevel.DEBUG: logger.debug,
    }
    methods[level](text)


@pytest.mark.parametrize("level", list(LogLevel))
@pytest.mark.parametrize("threshold", list(LogLevel))
def test_enabled_threshold_and_level_is_cumulative_per_seed_table(
    threshold: LogLevel, level: LogLevel
) -> None:
    assert enabled(threshold, level) is (level in SHOWN[threshold])


@pytest.mark.parametrize("level", [lvl for lvl in LogLevel if lvl is not LogLevel.OFF])
@pytest.mark.parametrize("threshold", list(LogLevel))
def test_logger_method_at_threshold_emits_only_shown_levels(
    threshold: LogLevel, level: LogLevel
) -> None:
    logger, records = collecting_logger(threshold)
    emit_at(logger, level, "spawn api#1")
    logger.log(level, "spawn api#2", source="api#2")
    if level in SHOWN[threshold]:
        assert records == [
            LogRecord(WHEN, "rusm", level.value, "spawn api#1"),
            LogRecord(WHEN, "api#2", level.value, "spawn api#2"),
        ]
    else:
        assert records == []
    assert logger.enabled(level) is (level in SHOWN[threshold])


def test_logger_at_off_never_builds_a_record_or_reads_the_clock() -> None:
    calls: list[str] = []

    def sink(rec: LogRecord) -> None:
        calls.append("sink")

    def clock() -> float:
        calls.append("clock")
        return WHEN

    logger = Logger(LogLevel.OFF, sink, clock=clock)
    for level in LogLevel:
        logger.log(level, "x")
    logger.error("exit api#1 crashed")
    logger.warn("w")
    logger.info("i")
    logger.debug("d")
    assert calls == []


def test_logger_threshold_raised_by_reload_shows_debug_from_then_on() -> None:
    logger, records = collecting_logger(LogLevel.ERROR)
    logger.debug("spawn api#1")
    logger.threshold = LogLevel.DEBUG
    logger.debug("spawn api#2")
    assert logger.threshold is LogLevel.DEBUG
    assert [r.text for r in records] == ["spawn api#2"]


@pytest.mark.parametrize("threshold", list(LogLevel))
def test_info_on_flag_follows_the_threshold_through_a_reload(threshold: LogLevel) -> None:
    # The access line checks this flag instead of calling enabled().
    logger, _ = collecting_logger(LogLevel.OFF)
    assert logger.info_on is False
    logger.threshold = threshold
    assert logger.info_on is (LogLevel.INFO in SHOWN[threshold])


def test_logger_sink_raising_is_counted_in_dropped_not_raised() -> None:
    def broken_sink(rec: LogRecord) -> None:
        raise BrokenPipeError("stderr closed")

    logger = Logger(LogLevel.INFO, broken_sink)
    logger.error("exit api#1 crashed")
    logger.info("http GET / → 200")
    logger.debug("below threshold: not counted")
    assert logger.dropped == 2


def test_log_record_round_trips_through_msgpack_as_an_array() -> None:
    rec = record("ready (sink + broker)", source="meta-json#0")
    wire = msgspec.msgpack.encode(rec)
    assert msgspec.msgpack.decode(wire) == [WHEN, "meta-json#0", "info", "ready (sink + broker)", 0]
    assert msgspec.msgpack.decode(wire, type=LogRecord) == rec


def test_text_formatter_sources_of_different_length_align_level_and_text_columns() -> None:
    formatter = TextFormatter(colour=False)
    short = formatter.format(record("spawn api#12", source="rusm", level="debug"))
    long = formatter.format(record("retrying", source="commander#7", level="warn"))
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.123 rusm {13}debug spawn api#12", short)
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.123 commander#7 {6}warn  retrying", long)
    level_column = 13 + SOURCE_WIDTH + 1
    text_column = level_column + LEVEL_WIDTH + 1
    assert short.index("debug") == long.index("warn") == level_column
    assert short.index("spawn") == long.index("retrying") == text_column


def test_text_formatter_uses_local_time_of_the_record() -> None:
    line = TextFormatter(colour=False).format(record())
    local = datetime.datetime.fromtimestamp(WHEN).strftime("%H:%M:%S")
    assert line.startswith(f"{local}.123 ")


def test_text_formatter_without_colour_writes_no_escape_sequences() -> None:
    formatter = TextFormatter(colour=False)
    for level in ("error", "warn", "info", "debug"):
        assert "\x1b" not in formatter.format(record("exit api#7 crashed", level=level))


@pytest.mark.parametrize(
    ("level", "sgr"),
    [("error", "\x1b[31m"), ("warn", "\x1b[33m"), ("info", "\x1b[32m"), ("debug", "\x1b[2m")],
)
def test_text_formatter_with_colour_colours_the_level_word_and_keeps_alignment(
    level: str, sgr: str
) -> None:
    coloured = TextFormatter(colour=True).format(record("exit api#7 normal", level=level))
    plain = TextFormatter(colour=False).format(record("exit api#7 normal", level=level))
    assert f"{sgr}{level}\x1b[0m" in coloured
    assert ANSI.sub("", coloured) == plain


def test_text_formatter_with_colour_makes_a_crashed_exit_red() -> None:
    line = TextFormatter(colour=True).format(
        record("exit api#7 crashed (trap: unreachable)", level="error")
    )
    assert line.endswith(f"{RED}exit api#7 crashed (trap: unreachable)\x1b[0m")


def test_text_formatter_with_colour_leaves_a_normal_exit_uncoloured() -> None:
    line = TextFormatter(colour=True).format(record("exit api#7 normal"))
    assert line.endswith(" exit api#7 normal")
    assert RED not in line


def test_text_formatter_guest_newline_cannot_forge_a_second_line() -> None:
    forged = "ok\n12:00:00.000 rusm             error exit api#1 crashed"
    line = TextFormatter(colour=False).format(record(forged, source="evil#3"))
    assert "\n" not in line
    assert line.endswith(" ok\\n12:00:00.000 rusm             error exit api#1 crashed")


def test_text_formatter_guest_terminal_escapes_are_shown_not_sent() -> None:
    hostile = "\x1b[2J\x1b]0;pwned\x07\r\x00\x7f\x9b tab\there"
    line = TextFormatter(colour=True).format(record(hostile, source="evil#3"))
    text = line.split(" evil#3", 1)[1]
    assert "\x1b[2J" not in text
    assert text.endswith("\\x1b[2J\\x1b]0;pwned\\x07\\r\\x00\\x7f\\x9b tab\there")


def test_text_formatter_long_text_is_capped_with_a_truncation_marker() -> None:
    text = "é" * MAX_LINE_BYTES
    line = TextFormatter(colour=False).format(record(text))
    match = re.search(r"…\[truncated (\d+) bytes\]$", line)
    assert match is not None
    assert len(line.encode()) <= MAX_LINE_BYTES
    shown = line[: match.start()].split(" info  ", 1)[1]
    assert set(shown) == {"é"}
    assert len(shown.encode()) + int(match.group(1)) == len(text.encode())


def test_text_formatter_text_just_under_the_cap_is_not_truncated() -> None:
    prefix_bytes = len(TextFormatter(colour=False).format(record("")).encode())
    text = "a" * (MAX_LINE_BYTES - prefix_bytes)
    line = TextFormatter(colour=False).format(record(text))
    assert line.endswith(text)
    assert len(line.encode()) == MAX_LINE_BYTES


class JsonLine(msgspec.Struct):
    time: datetime.datetime
    source: str
    level: str
    text: str


def test_json_formatter_round_trips_with_utc_milliseconds() -> None:
    rec = record("http GET / → 200\n\x1b", source="api#12")
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    assert line.startswith('{"time":"2026-05-09T07:35:25.123Z","source":"api#12",')
    parsed = msgspec.json.decode(line, type=JsonLine)
    assert parsed.time == datetime.datetime(2026, 5, 9, 7, 35, 25, 123000, tzinfo=datetime.UTC)
    assert (parsed.source, parsed.level, parsed.text) == ("api#12", "info", rec.text)


def test_json_formatter_long_text_is_capped_and_still_valid_json() -> None:
    rec = record("\x01" * MAX_LINE_BYTES)
    line = JsonFormatter().format(rec)
    assert len(line.encode()) <= MAX_LINE_BYTES
    parsed = msgspec.json.decode(line, type=JsonLine)
    match = re.fullmatch(r"(\x01+)…\[truncated (\d+) bytes\]", parsed.text)
    assert match is not None
    assert len(match.group(1)) + int(match.group(2)) == MAX_LINE_BYTES


def test_log_ring_over_capacity_keeps_the_newest_and_tails_oldest_first() -> None:
    ring = LogRing(capacity=3)
    for i in range(5):
        ring.append(record(f"line {i}"))
    assert len(ring) == 3
    assert [r.text for r in ring.tail(10)] == ["line 2", "line 3", "line 4"]
    assert [r.text for r in ring.tail(2)] == ["line 3", "line 4"]
    assert ring.tail(0) == []


def test_log_ring_subscriber_streams_records_appended_after_subscribing() -> None:
    ring = LogRing()
    ring.append(record("before"))
    seen: list[str] = []
    token = ring.subscribe(lambda rec: seen.append(rec.text))
    ring.append(record("after 1"))
    ring.append(record("after 2"))
    ring.unsubscribe(token)
    ring.append(record("after unsubscribe"))
    assert seen == ["after 1", "after 2"]
    ring.unsubscribe(token)


def test_log_ring_failing_subscriber_is_removed_and_others_still_receive() -> None:
    ring = LogRing()
    seen: list[str] = []
    calls: list[str] = []

    def gone_client(rec: LogRecord) -> None:
        calls.append(rec.text)
        raise ConnectionResetError("rusmctl logs -f went away")

    ring.subscribe(gone_client)
    ring.subscribe(lambda rec: seen.append(rec.text))
    ring.append(record("one"))
    ring.append(record("two"))
    assert calls == ["one"]
    assert seen == ["one", "two"]
    assert ring.subscriber_count == 1


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_stream_is_tty_terminal_without_no_color_is_coloured() -> None:
    assert stream_is_tty(FakeTty(), environ={}) is True
    assert stream_is_tty(FakeTty(), environ={"NO_COLOR": ""}) is True


def test_stream_is_tty_no_color_set_or_not_a_terminal_is_plain() -> None:
    assert stream_is_tty(FakeTty(), environ={"NO_COLOR": "1"}) is False
    assert stream_is_tty(io.StringIO(), environ={}) is False
    closed = io.StringIO()
    closed.close()
    assert stream_is_tty(closed, environ={}) is False


def test_formatters_lone_surrogate_in_guest_text_is_shown_not_raised() -> None:
    rec = record("bad \udcff byte", source="api#1")
    line = TextFormatter(colour=False).format(rec)
    assert line.endswith(" bad \\udcff byte")
    line.encode()
    parsed = msgspec.json.decode(JsonFormatter().format(rec), type=JsonLine)
    assert parsed.text == "bad \\udcff byte"
