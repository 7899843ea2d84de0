"""The platform logger: one aligned stream for the runtime and its guests.

Runs in: any. Workers build ``LogRecord``\\ s and ship them over their msgpack
channel; the main process is the single writer of stderr and keeps the
``LogRing`` that ``rusmctl logs`` reads.

The manifest's ``[log]`` table sets it up:

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
every line is capped at ``MAX_LINE_BYTES``; a cut line ends in
``…[truncated N bytes]``, N the UTF-8 bytes of the original text left out
(counting a cut made earlier, by the host, too: ``LogRecord.cut_bytes``).

Logging never blocks or floods (a stderr nobody reads, a guest in
a tight loop):

- ``LogOutput`` writes the main process's lines without blocking: a
  bounded backlog is flushed from the main loop when the descriptor is
  writable; past it lines are dropped and counted, and once the backlog
  is written one ``log: dropped N lines`` line says so.
- ``LineBudget`` is a token bucket per wasm process for its log lines and
  for the warnings it causes; lines over it are counted, and a
  ``log: suppressed N lines from component#pid`` line reports them.
"""

from __future__ import annotations

import collections
import datetime
import errno
import os
import select
import socket
import stat
import time
from collections.abc import Callable, Mapping
from typing import Protocol, TextIO

import msgspec

from rusmd.config.model import LogLevel

# A guest can log arbitrarily long text; the cap keeps one line from
# flooding the journal (which itself truncates near 48 KiB) or the ring.
MAX_LINE_BYTES = 16 * 1024

# Formatted lines the main process holds for a stderr that is not being read
# (a paused pager, a slow journald, a full pipe). The main loop never waits
# for its reader, so this caps the memory kept meanwhile; past it lines are
# dropped and counted.
MAX_PENDING_OUTPUT_BYTES = 256 << 10
# How long the main process, exiting, still waits for stderr to take its
# last lines: the loop is over, so only the exit is delayed, and boundedly.
EXIT_FLUSH_TIMEOUT_S = 0.5

# Lines a wasm process may log at once (its own, and warnings it causes such
# as a failed spawn), then per second: a guest logging or spawning in a
# tight loop must not flood the journal and the channel to the main
# process. Lines over it are counted and summarised.
GUEST_LOG_BURST_LINES = 1000
GUEST_LOG_LINES_PER_S = 200.0
# How often a process that keeps going over its budget gets a summary line;
# a process that stops logging gets its summary with its next line or exit.
SUPPRESSED_SUMMARY_INTERVAL_S = 5.0

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
        cut_bytes: Bytes of the original text already cut off before the
            record was made (a guest line read up to the cap); ``text`` then
            ends in the ``…[truncated N bytes]`` marker for them. Optional;
            defaults to 0.
    """

    time: float
    source: str
    level: str
    text: str
    cut_bytes: int = 0


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

    def log(
        self, level: LogLevel, text: str, source: str | None = None, *, cut_bytes: int = 0
    ) -> None:
        """Log at a level chosen at run time (a guest's ``log(level, text)``).

        ``cut_bytes``: how many bytes of the original text the caller left
        out of ``text``; the line then says so with the right count.
        """
        if self.enabled(level):
            self._emit(level, text, source, cut_bytes)

    def _emit(self, level: LogLevel, text: str, source: str | None, cut_bytes: int = 0) -> None:
        try:
            if cut_bytes:
                text += _marker(cut_bytes)
            record = LogRecord(self._clock(), source or self._source, level.value, text, cut_bytes)
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


def _fit(prefix: str, text: str, suffix: str, cut_bytes: int = 0) -> str:
    """``prefix + escape(text) + suffix`` within ``MAX_LINE_BYTES``, marking a cut.

    The marker counts the UTF-8 bytes of ``text`` left out plus
    ``cut_bytes`` cut before (so it names what the original lost).
    """
    budget = MAX_LINE_BYTES - len(prefix.encode()) - len(suffix.encode())
    escaped = escape(text)
    marker = _marker(cut_bytes) if cut_bytes else ""
    if len(escaped.encode()) + len(marker.encode()) <= budget:
        return prefix + escaped + marker + suffix
    total = len(text.encode()) + cut_bytes
    # Reserve room for the widest marker this text could need.
    room = budget - len(_marker(total).encode())
    if escaped == text:
        kept, _ = _truncate(text, room)
    else:
        kept = _longest_prefix(text, room, lambda part: len(escape(part).encode()))
    return prefix + escape(kept) + _marker(total - len(kept.encode())) + suffix


def _longest_prefix(text: str, budget_bytes: int, measure: Callable[[str], int]) -> str:
    """The longest prefix of ``text`` whose ``measure`` fits ``budget_bytes``.

    ``measure`` must grow with the prefix (an escape makes a character
    longer, never shorter), so a binary search on the length finds it.
    """
    low, high = 0, min(len(text), max(budget_bytes, 0))
    while low < high:
        middle = (low + high + 1) // 2
        if measure(text[:middle]) <= budget_bytes:
            low = middle
        else:
            high = middle - 1
    return text[:low]


def _marker(dropped_bytes: int) -> str:
    return f"…[truncated {dropped_bytes} bytes]"


def _body(record: LogRecord) -> tuple[str, int]:
    """The record's text without the marker of an earlier cut, and that cut's size."""
    if not record.cut_bytes:
        return record.text, 0
    marker = _marker(record.cut_bytes)
    if record.text.endswith(marker):
        return record.text[: -len(marker)], record.cut_bytes
    return record.text, record.cut_bytes


class TextFormatter:
    """``HH:MM:SS.mmm SOURCE LEVEL TEXT``, aligned, local time.

    Source and text are passed through ``escape``; a line longer than
    ``MAX_LINE_BYTES`` ends in ``…[truncated N bytes]``, N counting the
    UTF-8 bytes of the original text left out (``LogRecord.cut_bytes``
    included).

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
        text, cut_bytes = _body(record)
        if self.colour and _is_crash_exit(text):
            return _fit(prefix + _RED, text, _RESET, cut_bytes)
        return _fit(prefix, text, "", cut_bytes)

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
    marker counts the UTF-8 bytes of the original text left out
    (``LogRecord.cut_bytes`` included).
    """

    def format(self, record: LogRecord) -> str:
        """One JSON line for ``record``."""
        whole_s, millis = _split_ms(record.time)
        stamp = datetime.datetime.fromtimestamp(whole_s, datetime.UTC)
        stamp += datetime.timedelta(milliseconds=millis)
        iso = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        source, level = record.source, record.level
        text, cut_bytes = _body(record)
        marker = _marker(cut_bytes) if cut_bytes else ""
        try:
            encoded = _json_encoder.encode(_JsonLine(iso, source, level, text + marker))
        except UnicodeEncodeError:
            source, level, text = _scrub(source), _scrub(level), _scrub(text)
            encoded = _json_encoder.encode(_JsonLine(iso, source, level, text + marker))
        if len(encoded) <= MAX_LINE_BYTES:
            return encoded.decode()
        text_budget = MAX_LINE_BYTES - (len(encoded) - _json_len(text + marker))
        line = _JsonLine(iso, source, level, _json_cut(text, text_budget, cut_bytes))
        return _json_encoder.encode(line).decode()


def _scrub(text: str) -> str:
    # A lone surrogate has no UTF-8 form; JSON gets its escape spelled out.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _json_len(text: str) -> int:
    return len(_json_encoder.encode(text))


def _json_cut(text: str, budget_bytes: int, cut_bytes: int = 0) -> str:
    """The longest prefix of ``text`` plus a marker whose JSON fits the budget."""
    total = len(text.encode()) + cut_bytes
    kept = _longest_prefix(text, budget_bytes - len(_marker(total).encode()), _json_len)
    return kept + _marker(total - len(kept.encode()))


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


class LineBudget:
    """A token bucket of log lines for one wasm process, and what it held back.

    Each line takes a token; tokens come back at ``per_s`` a second up to
    ``burst``. A line without a token is suppressed and counted;
    ``summary_due`` hands the count over for a
    ``log: suppressed N lines from component#pid`` line at most once per
    ``summary_interval_s``, and ``take_suppressed`` whatever is left when
    the process exits. Not thread-safe: a process's host calls run on one
    thread at a time.

    Args:
        clock: Monotonic seconds; injected by tests.
        burst: Lines allowed at once. Optional; defaults to
            ``GUEST_LOG_BURST_LINES``.
        per_s: Lines allowed a second after the burst. Optional; defaults
            to ``GUEST_LOG_LINES_PER_S``.
        summary_interval_s: Least time between two summaries. Optional;
            defaults to ``SUPPRESSED_SUMMARY_INTERVAL_S``.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        burst: int = GUEST_LOG_BURST_LINES,
        per_s: float = GUEST_LOG_LINES_PER_S,
        summary_interval_s: float = SUPPRESSED_SUMMARY_INTERVAL_S,
    ) -> None:
        self._clock = clock
        self._burst = float(burst)
        self._per_s = per_s
        self._interval_s = summary_interval_s
        self._tokens = float(burst)
        self._refilled = clock()
        self._summary_at = 0.0
        self.suppressed = 0

    def take(self) -> bool:
        """Whether one more line may go out now; a refused one is counted."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._per_s)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        if not self.suppressed:
            self._summary_at = now + self._interval_s
        self.suppressed += 1
        return False

    def summary_due(self) -> int:
        """Lines suppressed, once ``summary_interval_s`` passed since the first; else 0."""
        if self.suppressed and self._clock() >= self._summary_at:
            return self.take_suppressed()
        return 0

    def take_suppressed(self) -> int:
        """Lines suppressed since the last summary (the count starts again)."""
        count, self.suppressed = self.suppressed, 0
        return count


def suppressed_line(count: int, label: str) -> str:
    """The summary of ``count`` lines of ``label`` held back by its ``LineBudget``."""
    return (
        f"log: suppressed {count} lines from {label} (over {GUEST_LOG_LINES_PER_S:g} lines/s, "
        f"burst {GUEST_LOG_BURST_LINES})"
    )


# Bytes handed to one write: a pipe takes up to PIPE_BUF atomically, and
# with the poll fallback a write no larger never waits once poll said ready.
_PIPE_BUF = select.PIPE_BUF
Write = Callable[[bytearray], int]


class LogOutput:
    """The main process's stderr, written without ever blocking the loop.

    ``write_line`` adds a line to a backlog and writes what the descriptor
    takes at once; the rest waits, at most ``capacity_bytes`` of it, for
    the main loop to call ``flush`` when ``fileno`` is writable (watch it
    while ``pending``). A line that does not fit is dropped and counted;
    once the backlog is written, ``on_caught_up`` gets the count, so the
    log says how many lines it lost and nothing ever waits for the reader.

    Args:
        write: Writes a prefix of the bytes without blocking; returns how
            many it took, raises ``BlockingIOError`` when it can take none.
        fileno: What the loop watches for writability; None when writes
            never wait (a regular file), so nothing is ever pending.
        on_caught_up: Told how many lines were dropped, once the backlog is
            written. Optional.
        capacity_bytes: The backlog's cap. Optional; defaults to
            ``MAX_PENDING_OUTPUT_BYTES``.
    """

    def __init__(
        self,
        write: Write,
        fileno: int | None,
        *,
        on_caught_up: Callable[[int], None] | None = None,
        capacity_bytes: int = MAX_PENDING_OUTPUT_BYTES,
    ) -> None:
        self._write = write
        self.fileno = fileno
        self.on_caught_up = on_caught_up
        self._capacity = capacity_bytes
        self._backlog = bytearray()
        self._blocked = False
        self._broken = False
        self._unreported = 0
        # Lines dropped over the process's life (the backlog was full).
        self.dropped = 0

    @classmethod
    def open(cls, fd: int, on_caught_up: Callable[[int], None] | None = None) -> LogOutput:
        """A writer for ``fd`` (the main process's stderr) that never blocks.

        O_NONBLOCK belongs to the open file description, which fd 2 shares
        with every worker (forked) and whoever else holds the pipe or
        terminal: set there, it would make their plain writes fail. So it
        is never set on ``fd`` itself. A pipe or terminal is opened afresh
        through ``/proc/self/fd`` (a description of its own, non-blocking);
        a socket (journald's stream) is written with ``MSG_DONTWAIT``, per
        call; a regular file or another device is written as it is (its
        writes wait for no reader). Where the fresh open fails, a write
        goes out only when ``poll`` says the descriptor is ready, at most
        ``PIPE_BUF`` bytes at a time.
        """
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            return cls(len, None)  # no stderr at all: lines go nowhere
        if stat.S_ISSOCK(mode):
            sock = socket.socket(fileno=os.dup(fd))
            return cls(
                lambda data: sock.send(data, socket.MSG_DONTWAIT),
                sock.fileno(),
                on_caught_up=on_caught_up,
            )
        if stat.S_ISFIFO(mode) or (stat.S_ISCHR(mode) and os.isatty(fd)):
            flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
            try:
                own = os.open(f"/proc/self/fd/{fd}", flags)
            except OSError:
                return cls(_poll_then_write(fd), fd, on_caught_up=on_caught_up)
            return cls(lambda data: os.write(own, data), own, on_caught_up=on_caught_up)
        return cls(lambda data: os.write(fd, data), None, on_caught_up=on_caught_up)

    @classmethod
    def for_stream(
        cls, stream: TextIO | None, on_caught_up: Callable[[int], None] | None = None
    ) -> LogOutput:
        """``open`` on ``stream``'s descriptor; lines go nowhere if it has none."""
        try:
            fd = stream.fileno() if stream is not None else -1
        except (AttributeError, ValueError, OSError):
            fd = -1
        return cls.open(fd, on_caught_up)

    @property
    def pending(self) -> bool:
        """Lines wait for the descriptor to become writable: watch ``fileno``."""
        return self._blocked and bool(self._backlog)

    def write_line(self, line: str) -> None:
        """Queue ``line`` (a newline is added) and write what fits now; drop it if full."""
        if self._broken:
            return
        data = (line + "\n").encode("utf-8", "replace")
        if len(self._backlog) + len(data) > self._capacity:
            self.dropped += 1
            self._unreported += 1
            return
        self._backlog += data
        if not self._blocked:
            self.flush()

    def flush(self) -> None:
        """Write what the descriptor takes now; report drops once all is written."""
        self._blocked = False
        while self._backlog:
            try:
                written = self._write(self._backlog)
            except (BlockingIOError, InterruptedError):
                self._blocked = True
                return
            except OSError:
                # The reader is gone (EPIPE) or stderr is closed: nothing
                # written from now on would ever be read.
                self._broken = True
                self._backlog.clear()
                return
            del self._backlog[:written]
        if self._unreported and self.on_caught_up is not None:
            count, self._unreported = self._unreported, 0
            self.on_caught_up(count)

    def close(self, timeout_s: float = EXIT_FLUSH_TIMEOUT_S) -> None:
        """At exit: give the backlog up to ``timeout_s`` to go out, then drop it."""
        deadline = time.monotonic() + timeout_s
        poller = select.poll()
        if self.fileno is not None:
            poller.register(self.fileno, select.POLLOUT)
        while self.pending and not self._broken:
            remaining_ms = (deadline - time.monotonic()) * 1000
            if remaining_ms <= 0:
                break
            if poller.poll(remaining_ms):
                self.flush()
        self._backlog.clear()


def _poll_then_write(fd: int) -> Write:
    """A write to ``fd`` that sends nothing unless ``poll`` says it is ready now."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)

    def write(data: bytearray) -> int:
        if not poller.poll(0):
            raise BlockingIOError(errno.EAGAIN, "not writable")
        return os.write(fd, data[:_PIPE_BUF])

    return write


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
