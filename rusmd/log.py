"""The platform logger: one aligned stream for the runtime and its guests.

Runs in: any. Workers build ``LogRecord``\\ s and ship them over their msgpack
channel; the main process is the single writer of stderr and keeps the
``LogRing`` that ``rusmctl logs`` reads.

Seed 000 ``[log]`` is the spec:

- One level, ``off`` (the default) | ``error`` | ``warn`` | ``info`` |
  ``debug``, gates the runtime's lifecycle lines, the guests' logs and the
  access log alike. Levels are cumulative; ``off`` shows nothing and costs
  one comparison per call (no record is built).
- Every line carries the time, the source (``rusm`` for the runtime's own
  lines, ``component#pid`` for a guest) and the severity, aligned in
  columns; on a TTY (and only when asked) the severity is coloured and a
  crash exit (``exit api#7 crashed ...``) is red.
- ``--log-format json`` writes one JSON object per line instead.

Guest text is untrusted: the text formatter escapes control characters so
a guest can forge neither a log line (newline) nor a terminal escape, and
every line is capped at ``MAX_LINE_BYTES``.
"""

from __future__ import annotations

import collections
import datetime
import os
import time
from collections.abc import Callable, Mapping
from typing import Protocol, TextIO

import msgspec

from rusmd.config.model import LogLevel

# A guest can log arbitrarily long text; the cap keeps one line from
# flooding the journal (which itself truncates near 48 KiB) or the ring.
MAX_LINE_BYTES = 16 * 1024

# rusmctl logs shows recent history; bounded so a chatty guest cannot grow
# the main process's memory without limit.
DEFAULT_RING_CAPACITY = 1000

# Width of the source column: "component#pid" for typical names lines up.
SOURCE_WIDTH = 16
# Width of the level column: the longest level word ("error", "debug").
LEVEL_WIDTH = 5

RUNTIME_SOURCE = "rusm"

_RANK: dict[LogLevel, int] = {
    LogLevel.OFF: 0,
    LogLevel.ERROR: 1,
    LogLevel.WARN: 2,
    LogLevel.INFO: 3,
    LogLevel.DEBUG: 4,
}

_RESET = "\x1b[0m"
_RED = "\x1b[31m"
_LEVEL_COLOUR: dict[str, str] = {
    LogLevel.ERROR.value: _RED,
    LogLevel.WARN.value: "\x1b[33m",
    LogLevel.INFO.value: "\x1b[32m",
    LogLevel.DEBUG.value: "\x1b[2m",
}

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r"}


def _escape_table() -> dict[int, str]:
    # C0 (except tab), DEL and C1: every code point a terminal or a line
    # reader treats as control rather than text.
    codes = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]
    table = {
        code: _NAMED_ESCAPES.get(chr(code), f"\\x{code:02x}") for code in codes if code != 0x09
    }
    # Lone surrogates (text decoded with surrogateescape) cannot be written
    # as UTF-8 at all; show them instead of failing the write.
    table.update({code: f"\\u{code:04x}" for code in range(0xD800, 0xE000)})
    return table


_ESCAPES = _escape_table()


class LogRecord(msgspec.Struct, frozen=True, array_like=True):
    """One log event, as shipped from a worker to the main process.

    Attributes:
        time: When it happened, unix epoch seconds.
        source: ``rusm`` for the runtime's own lines, ``component#pid`` for
            a guest.
        level: A ``LogLevel`` value other than ``off``.
        text: The message, starting with a stable event phrase for runtime
            lines (``spawn``, ``exit``, ``supervisor report:``).
    """

    time: float
    source: str
    level: str
    text: str


def enabled(threshold: LogLevel, level: LogLevel) -> bool:
    """Whether a line at ``level`` shows under ``threshold``.

    Levels are cumulative, error < warn < info < debug; ``off`` as a
    threshold shows nothing and ``off`` as a level is never shown.
    """
    return level is not LogLevel.OFF and _RANK[level] <= _RANK[threshold]


class Logger:
    """Builds records at or above the threshold and hands them to a sink.

    Args:
        threshold: The ``[log].level``; settable, since a reload can change it.
        sink: Receives each record: in a worker it queues the record for the
            main process, in the main process it formats, writes and rings it.
        source: The default source of records; ``rusm`` for the runtime.
        clock: Wall clock in unix epoch seconds; injected by tests.

    Attributes:
        dropped: How many records the sink failed to take. Logging never
            kills a process, so a raising sink is counted, not propagated.
    """

    def __init__(
        self,
        threshold: LogLevel,
        sink: Callable[[LogRecord], None],
        source: str = RUNTIME_SOURCE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._rank = _RANK[threshold]
        self._threshold = threshold
        # Whether info lines show: read on every request (the access line).
        self.info_on = self._rank >= _RANK[LogLevel.INFO]
        self._sink = sink
        self._source = source
        self._clock = clock
        self.dropped = 0

    @property
    def threshold(self) -> LogLevel:
        """The current level; lines below it are not built."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: LogLevel) -> None:
        self._threshold = value
        self._rank = _RANK[value]
        self.info_on = self._rank >= _RANK[LogLevel.INFO]

    def enabled(self, level: LogLevel) -> bool:
        """Whether a line at ``level`` would be emitted now.

        Guard an expensive text with it: ``if log.enabled(LogLevel.DEBUG):``.
        """
        return level is not LogLevel.OFF and _RANK[level] <= self._rank

    def error(self, text: str, source: str | None = None) -> None:
        """Log a crash (a trap, an OOM) or a guest's error."""
        if self._rank >= 1:
            self._emit(LogLevel.ERROR, text, source)

    def warn(self, text: str, source: str | None = None) -> None:
        """Log a kill, a link cascade or a guest's warning."""
        if self._rank >= 2:
            self._emit(LogLevel.WARN, text, source)

    def info(self, text: str, source: str | None = None) -> None:
        """Log a clean exit, a served request or a guest's info line."""
        if self._rank >= 3:
            self._emit(LogLevel.INFO, text, source)

    def debug(self, text: str, source: str | None = None) -> None:
        """Log a spawn or a guest's debug line."""
        if self._rank >= 4:
            self._emit(LogLevel.DEBUG, text, source)

    def log(self, level: LogLevel, text: str, source: str | None = None) -> None:
        """Log at a level chosen at run time (a guest's ``log(level, text)``)."""
        if self.enabled(level):
            self._emit(level, text, source)

    def _emit(self, level: LogLevel, text: str, source: str | None) -> None:
        try:
            record = LogRecord(self._clock(), source or self._source, level.value, text)
            self._sink(record)
        except Exception:
            # Catching broadly is deliberate: a full channel or a closed
            # stderr must not take the process (and its guests) down.
            self.dropped += 1


class Formatter(Protocol):
    """Turns a record into one line, without the trailing newline."""

    def format(self, record: LogRecord) -> str:
        """The line for ``record``."""
        ...


def escape(text: str) -> str:
    """``text`` with every control character but tab written as an escape.

    ``"\\x1b[2J"`` becomes ``"\\\\x1b[2J"`` and a newline ``"\\\\n"``, so
    untrusted text stays on one line and cannot drive the terminal.
    """
    return text.translate(_ESCAPES)


def _truncate(text: str, limit_bytes: int) -> tuple[str, int]:
    """``text`` cut to at most ``limit_bytes`` of UTF-8 and the bytes dropped."""
    encoded = text.encode()
    if len(encoded) <= limit_bytes:
        return text, 0
    # "ignore" drops a code point split by the cut instead of mangling it.
    kept = encoded[: max(limit_bytes, 0)].decode("utf-8", "ignore")
    return kept, len(encoded) - len(kept.encode())


def _fit(prefix: str, text: str, suffix: str) -> str:
    """``prefix + text + suffix`` within ``MAX_LINE_BYTES``, marking a cut."""
    fixed_bytes = len(prefix.encode()) + len(suffix.encode())
    budget = MAX_LINE_BYTES - fixed_bytes
    kept, dropped = _truncate(text, budget)
    if not dropped:
        return prefix + text + suffix
    # Reserve room for the widest marker this text could need.
    widest = _marker(len(text.encode()))
    kept, dropped = _truncate(text, budget - len(widest.encode()))
    return prefix + kept + _marker(dropped) + suffix


def _marker(dropped_bytes: int) -> str:
    return f"…[truncated {dropped_bytes} bytes]"


class TextFormatter:
    """``HH:MM:SS.mmm SOURCE LEVEL TEXT``, aligned, local time.

    Source and text are passed through ``escape``; a line longer than
    ``MAX_LINE_BYTES`` ends in ``…[truncated N bytes]``, N counting the
    bytes of the escaped text left out.

    Args:
        colour: Colour the level word and crash exits with ANSI escapes;
            pass ``stream_is_tty(stream)``.
    """

    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def format(self, record: LogRecord) -> str:
        """One line for ``record``; control characters escaped, length capped."""
        whole_s, millis = _split_ms(record.time)
        clock = time.strftime("%H:%M:%S", time.localtime(whole_s))
        source = escape(record.source).ljust(SOURCE_WIDTH)
        prefix = f"{clock}.{millis:03d} {source} {self._level_word(record.level)} "
        if self.colour and _is_crash_exit(record.text):
            return _fit(prefix + _RED, escape(record.text), _RESET)
        return _fit(prefix, escape(record.text), "")

    def _level_word(self, level: str) -> str:
        word = escape(level)
        # Padding outside the colour codes keeps the text column aligned.
        padding = " " * max(LEVEL_WIDTH - len(word), 0)
        colour = _LEVEL_COLOUR.get(level) if self.colour else None
        return f"{colour}{word}{_RESET}{padding}" if colour else word + padding


def _split_ms(epoch_s: float) -> tuple[int, int]:
    # Rounding once to whole milliseconds: 0.123 is 0.12299999... as a float.
    whole_s, millis = divmod(round(epoch_s * 1000), 1000)
    return whole_s, millis


def _is_crash_exit(text: str) -> bool:
    # The runtime's exit line: "exit api#7 crashed (trap: ...)". A restart
    # reads as this red line followed by a fresh spawn.
    return text.startswith("exit ") and " crashed" in text


class _JsonLine(msgspec.Struct):
    time: str
    source: str
    level: str
    text: str


_json_encoder = msgspec.json.Encoder()


class JsonFormatter:
    """One JSON object per line: ``{"time", "source", "level", "text"}``.

    ``time`` is ISO 8601 in UTC with milliseconds
    (``2026-05-09T07:35:25.123Z``). JSON escapes control characters itself;
    the text is cut so the line stays within ``MAX_LINE_BYTES``, and the
    marker counts the UTF-8 bytes of the original text left out.
    """

    def format(self, record: LogRecord) -> str:
        """One JSON line for ``record``."""
        whole_s, millis = _split_ms(record.time)
        stamp = datetime.datetime.fromtimestamp(whole_s, datetime.UTC)
        stamp += datetime.timedelta(milliseconds=millis)
        iso = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = _JsonLine(iso, record.source, record.level, record.text)
        try:
            encoded = _json_encoder.encode(line)
        except UnicodeEncodeError:
            line = _JsonLine(iso, _scrub(record.source), _scrub(record.level), _scrub(record.text))
            encoded = _json_encoder.encode(line)
        if len(encoded) <= MAX_LINE_BYTES:
            return encoded.decode()
        text_budget = MAX_LINE_BYTES - (len(encoded) - _json_len(line.text))
        line = _JsonLine(iso, line.source, line.level, _json_cut(line.text, text_budget))
        return _json_encoder.encode(line).decode()


def _scrub(text: str) -> str:
    # A lone surrogate has no UTF-8 form; JSON gets its escape spelled out.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _json_len(text: str) -> int:
    return len(_json_encoder.encode(text))


def _json_cut(text: str, budget_bytes: int) -> str:
    """The longest prefix of ``text`` plus a marker whose JSON fits the budget."""
    text_bytes = len(text.encode())
    budget = budget_bytes - len(_marker(text_bytes).encode())
    # A JSON escape makes a character longer, never shorter, so the prefix's
    # encoded length grows with its character count: binary search.
    low, high = 0, min(len(text), max(budget, 0))
    while low < high:
        middle = (low + high + 1) // 2
        if _json_len(text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    kept = text[:low]
    return kept + _marker(text_bytes - len(kept.encode()))


class LogRing:
    """The last records, for ``rusmctl logs``, and live subscribers for ``-f``.

    Args:
        capacity: How many records to keep; the oldest fall off.
    """

    def __init__(self, capacity: int = DEFAULT_RING_CAPACITY) -> None:
        self._records: collections.deque[LogRecord] = collections.deque(maxlen=capacity)
        self._subscribers: dict[int, Callable[[LogRecord], None]] = {}
        self._next_token = 0

    def __len__(self) -> int:
        return len(self._records)

    def append(self, record: LogRecord) -> None:
        """Keep ``record`` and pass it to every subscriber.

        A subscriber that raises (a ``rusmctl logs -f`` client gone away) is
        unsubscribed; the error never reaches the caller.
        """
        self._records.append(record)
        for token, callback in list(self._subscribers.items()):
            try:
                callback(record)
            except Exception:
                self._subscribers.pop(token, None)

    def tail(self, n: int) -> list[LogRecord]:
        """The last ``n`` records, oldest first."""
        if n <= 0:
            return []
        start = max(len(self._records) - n, 0)
        return list(self._records)[start:]

    def subscribe(self, callback: Callable[[LogRecord], None]) -> int:
        """Call ``callback`` with every record appended from now on.

        Returns:
            A token for ``unsubscribe``.
        """
        self._next_token += 1
        self._subscribers[self._next_token] = callback
        return self._next_token

    def unsubscribe(self, token: int) -> None:
        """Stop calling the subscriber of ``token``; an unknown token is ignored."""
        self._subscribers.pop(token, None)

    @property
    def subscriber_count(self) -> int:
        """How many subscribers are live."""
        return len(self._subscribers)


def stream_is_tty(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to colour ``stream``: it is a terminal and ``NO_COLOR`` is unset.

    ``NO_COLOR`` counts when present and non-empty (no-color.org). A closed
    or detached stream is not a terminal.
    """
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False
