"""Helpers for the HTTP serving tests: the handler guests, their app, a wire client.

Runs in: any (the test process).

The guests are WAT, generated here and compiled with ``wasmtime.wat2wasm``
when an app is written:

- ``api`` imports only ``request``, ``respond`` and ``write``, so its
  actions run inline on the worker's I/O thread. Its actions echo route
  parameters, report the request (``inspect``), count in a global
  (``counter``), trap, spin, set headers, stream a large body in pieces,
  and set headers the host refuses.
- ``spinner`` is the same module under a profile with a small
  ``max-cpu-ms``.
- ``slow`` imports ``rusm.sleep``, so each request runs as a process on a
  guest thread: ``nap`` sleeps 100 ms, ``oversleep`` 5 s.

``Wire`` is a deliberately small HTTP/1.1 client over a raw socket: it
sends exactly the bytes a test gives it and parses responses one at a
time (``Content-Length``, chunked, or up to the close), so pipelining,
truncation and resets are visible to the test instead of hidden by a
library.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import wasmtime

from tests.integration.conftest import DAEMONS_KEY, App, Daemon, free_port

# A generous bound on any one socket wait: a loaded two-core machine still
# answers within it, and a hung daemon fails the test instead of the run.
SOCKET_TIMEOUT_S = 15.0

# Where the guests build their responses (the strings sit below it).
OUT = 8192
OUT_CAP = 2 * 65536 - OUT

# rusm.request fields (docs/abi.md, "rusm.request").
METHOD, PATH, QUERY, PARAM, HEADER, HEADERS, BODY, QUERY_PARAM = range(8)

# The body ``api#big`` streams: 40 writes of 1000 bytes, more than the
# 16 KiB the host holds, so it goes out chunked.
BIG_PIECES = 40
BIG_PIECE_BYTES = 1000
BIG_BODY = b"".join(bytes([ord("a") + i % 26]) * BIG_PIECE_BYTES for i in range(BIG_PIECES))

# How long ``slow#nap`` and ``slow#oversleep`` sleep.
NAP_MS = 100
OVERSLEEP_MS = 5000

# Headers ``api#custom`` sets, and two blocks the host must refuse.
CUSTOM_HEADERS = b"X-Custom: yes\nContent-Type: application/json"
BAD_CR_HEADERS = b"X-Ok: 1\nX-Evil: a\rInjected: 1"
BAD_LENGTH_HEADERS = b"Content-Length: 5"

# The route table of the tests: the manifest reference's table plus one route per case.
# The /files routes are declared least specific first on purpose.
ROUTES = {
    "GET /": "api#home",
    "GET /users/:id": "api#show",
    "DELETE /users/:id": "api#show",
    "POST /users": "api#home",
    "GET /assets/*": "api#rest",
    "GET /files/*": "api#rest",
    "GET /files/:id": "api#show",
    "GET /files/readme": "api#literal",
    "GET /counter": "api#counter",
    "GET /inspect": "api#inspect",
    "POST /inspect": "api#inspect",
    "GET /custom": "api#custom",
    "GET /big": "api#big",
    "GET /bad-cr": "api#bad_cr",
    "GET /bad-length": "api#bad_length",
    "GET /trap": "api#trap",
    "GET /spin": "spinner#spin",
    "GET /nap": "slow#nap",
    "GET /oversleep": "slow#oversleep",
}

# The CPU budget of ``spinner`` (the smallest the ABI docs' table allows
# is 10; this leaves the guest time to start on a loaded machine).
SPINNER_CPU_MS = 200


class Strings:
    """Constant byte strings laid out in a guest's memory below ``OUT``."""

    def __init__(self) -> None:
        self.offset = 16
        self.segments: list[str] = []

    def add(self, text: bytes) -> str:
        """Place ``text``; return its ``(i32.const ptr) (i32.const len)`` operands."""
        ptr = self.offset
        escaped = "".join(f"\\{byte:02x}" for byte in text)
        self.segments.append(f'  (data (i32.const {ptr}) "{escaped}")')
        self.offset += len(text) + 8 - len(text) % 8
        assert self.offset < OUT, "guest strings overflow into the output buffer"
        return f"(i32.const {ptr}) (i32.const {len(text)})"


def api_wat() -> str:
    """The inline handler module (imports only request, respond, write)."""
    s = Strings()
    home, literal = s.add(b"home"), s.add(b"literal")
    key_id, key_star, key_q = s.add(b"id"), s.add(b"*"), s.add(b"q")
    key_header = s.add(b"X-TEST")  # clients send it as x-Test
    labels = {
        name: s.add(name.encode() + b"=")
        for name in ("method", "path", "query", "q", "header", "body")
    }
    missing, newline = s.add(b"<none>"), s.add(b"\n")
    custom, braces = s.add(CUSTOM_HEADERS), s.add(b"{}")
    bad_cr, bad_length, hello = s.add(BAD_CR_HEADERS), s.add(BAD_LENGTH_HEADERS), s.add(b"hello")
    none = "(i32.const 0) (i32.const 0)"
    data = "\n".join(s.segments)
    return f"""(module
  (import "rusm" "request" (func $request (param i32 i32 i32 i32 i32) (result i32)))
  (import "rusm" "respond" (func $respond (param i32 i32 i32 i32 i32) (result i32)))
  (import "rusm" "write" (func $write (param i32 i32) (result i32)))
  (memory (export "memory") 2)
{data}
  (global $count (mut i32) (i32.const 0))
  (global $pos (mut i32) (i32.const 0))

  (func $text (param $status i32) (param $ptr i32) (param $len i32)
    (drop (call $respond (local.get $status) {none} (local.get $ptr) (local.get $len))))

  (func $echo (param $which i32) (param $key i32) (param $key_len i32)
    (local $n i32)
    (local.set $n (call $request (local.get $which) (local.get $key) (local.get $key_len)
                                 (i32.const {OUT}) (i32.const {OUT_CAP})))
    (if (i32.lt_s (local.get $n) (i32.const 0))
      (then (call $text (i32.const 404) {missing}))
      (else (call $text (i32.const 200) (i32.const {OUT}) (local.get $n)))))

  (func $put (param $ptr i32) (param $len i32)
    (memory.copy (i32.add (i32.const {OUT}) (global.get $pos)) (local.get $ptr) (local.get $len))
    (global.set $pos (i32.add (global.get $pos) (local.get $len))))

  (func $field (param $label i32) (param $label_len i32)
               (param $which i32) (param $key i32) (param $key_len i32)
    (local $n i32)
    (call $put (local.get $label) (local.get $label_len))
    (local.set $n (call $request (local.get $which) (local.get $key) (local.get $key_len)
                                 (i32.add (i32.const {OUT}) (global.get $pos))
                                 (i32.sub (i32.const {OUT_CAP}) (global.get $pos))))
    (if (i32.lt_s (local.get $n) (i32.const 0))
      (then (call $put {missing}))
      (else (global.set $pos (i32.add (global.get $pos) (local.get $n)))))
    (call $put {newline}))

  (func $itoa (param $n i32) (param $at i32) (result i32)
    (local $len i32) (local $rest i32) (local $i i32)
    (local.set $rest (local.get $n))
    (local.set $len (i32.const 1))
    (block $counted
      (loop $count
        (br_if $counted (i32.lt_u (local.get $rest) (i32.const 10)))
        (local.set $rest (i32.div_u (local.get $rest) (i32.const 10)))
        (local.set $len (i32.add (local.get $len) (i32.const 1)))
        (br $count)))
    (local.set $i (local.get $len))
    (loop $digit
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (local.get $at) (local.get $i))
                  (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digit (i32.gt_u (local.get $i) (i32.const 0))))
    (local.get $len))

  (func (export "home") (call $text (i32.const 200) {home}))
  (func (export "literal") (call $text (i32.const 200) {literal}))
  (func (export "show") (call $echo (i32.const {PARAM}) {key_id}))
  (func (export "rest") (call $echo (i32.const {PARAM}) {key_star}))

  (func (export "counter")
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (call $text (i32.const 200) (i32.const {OUT})
                (call $itoa (global.get $count) (i32.const {OUT}))))

  (func (export "inspect")
    (call $field {labels["method"]} (i32.const {METHOD}) {none})
    (call $field {labels["path"]} (i32.const {PATH}) {none})
    (call $field {labels["query"]} (i32.const {QUERY}) {none})
    (call $field {labels["q"]} (i32.const {QUERY_PARAM}) {key_q})
    (call $field {labels["header"]} (i32.const {HEADER}) {key_header})
    (call $field {labels["body"]} (i32.const {BODY}) {none})
    (call $text (i32.const 200) (i32.const {OUT}) (global.get $pos)))

  (func (export "custom")
    (drop (call $respond (i32.const 201) {custom} {braces})))

  (func (export "big")
    (local $i i32)
    (loop $piece
      (memory.fill (i32.const {OUT})
                   (i32.add (i32.const 97) (i32.rem_u (local.get $i) (i32.const 26)))
                   (i32.const {BIG_PIECE_BYTES}))
      (drop (call $write (i32.const {OUT}) (i32.const {BIG_PIECE_BYTES})))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $piece (i32.lt_u (local.get $i) (i32.const {BIG_PIECES})))))

  (func (export "bad_cr")
    (drop (call $respond (i32.const 200) {bad_cr} {hello})))

  (func (export "bad_length")
    (drop (call $respond (i32.const 200) {bad_length} {hello})))

  (func (export "trap") unreachable)

  (func (export "spin") (loop $forever (br $forever))))
"""


def slow_wat() -> str:
    """The thread-mode handler module: it imports ``rusm.sleep``."""
    s = Strings()
    napped, late = s.add(b"napped"), s.add(b"late")
    data = "\n".join(s.segments)
    return f"""(module
  (import "rusm" "sleep" (func $sleep (param i32) (result i32)))
  (import "rusm" "respond" (func $respond (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
{data}
  (func (export "nap")
    (drop (call $sleep (i32.const {NAP_MS})))
    (drop (call $respond (i32.const 200) (i32.const 0) (i32.const 0) {napped})))
  (func (export "oversleep")
    (drop (call $sleep (i32.const {OVERSLEEP_MS})))
    (drop (call $respond (i32.const 200) (i32.const 0) (i32.const 0) {late}))))
"""


def toml_value(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def write_http_app(
    app: App,
    *,
    limits: dict[str, object] | None = None,
    routes: dict[str, str] | None = None,
    log_level: str = "info",
    node: str = "",
) -> None:
    """The test app: one http listener with ``limits``, the three handler components."""
    wasm = app.directory / "wasm"
    wasm.mkdir(exist_ok=True)
    api = wasmtime.wat2wasm(api_wat())
    (wasm / "api.wasm").write_bytes(api)
    (wasm / "spinner.wasm").write_bytes(api)
    (wasm / "slow.wasm").write_bytes(wasmtime.wat2wasm(slow_wat()))
    limit_lines = "".join(f"{key} = {toml_value(value)}\n" for key, value in (limits or {}).items())
    route_lines = "".join(f'"{key}" = "{target}"\n' for key, target in (routes or ROUTES).items())
    app.manifest.write_text(
        f'[node]\nlisten = "127.0.0.1:{app.node_port}"\n{node}'
        f'[log]\nlevel = "{log_level}"\n'
        f'[[serve]]\nprotocol = "http"\nlisten = "127.0.0.1:{app.serve_port}"\n{limit_lines}'
        f"[serve.routes]\n{route_lines}"
        f"[capabilities.tight]\nmax-cpu-ms = {SPINNER_CPU_MS}\n"
        '[components.api]\n[components.spinner]\ncapability = "tight"\n[components.slow]\n'
    )


@dataclass
class Served:
    """A daemon shared by a module's tests, and its listener port."""

    daemon: Daemon
    port: int


def shared_daemon(tmp_path_factory: pytest.TempPathFactory, **app_options: Any) -> Iterator[Served]:
    """Run one daemon for a module (``write_http_app`` with ``app_options``); kill it after.

    Use it from a module-scoped fixture; ``attach`` it to each test that
    uses it, so a failing test's report carries the daemon's log.
    """
    app = App(tmp_path_factory.mktemp("app"), free_port(), free_port())
    write_http_app(app, **app_options)
    daemon = Daemon(app, tmp_path_factory.mktemp("log") / "rusmd.log")
    daemon.start()
    try:
        daemon.wait_ready()
        yield Served(daemon, app.serve_port)
    finally:
        daemon.kill_group()


def attach(request: pytest.FixtureRequest, served: Served) -> Served:
    """Add the shared daemon's log to this test's report should it fail."""
    request.node.stash.setdefault(DAEMONS_KEY, []).append(served.daemon)
    return served


# ── the wire client ─────────────────────────────────────────────────────


class Truncated(Exception):
    """The connection ended inside a response; ``got`` is what arrived of it.

    ``reset`` tells a reset (ECONNRESET) from a clean close (FIN).
    """

    def __init__(self, got: bytes, why: str, *, reset: bool) -> None:
        ending = "reset" if reset else "closed"
        super().__init__(f"{ending} while reading {why} after {len(got)} bytes: {got[:200]!r}")
        self.got = got
        self.reset = reset


@dataclass
class Response:
    """One parsed response."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    chunked: bool
    raw: bytes = field(repr=False)

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name.lower()]
        return ", ".join(values) if values else None

    @property
    def closes(self) -> bool:
        return (self.header("connection") or "").lower() == "close"


class Wire:
    """One client connection to a listener."""

    def __init__(self, port: int, *, timeout_s: float = SOCKET_TIMEOUT_S) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.buffer = b""
        self.consumed = 0  # bytes of responses read so far

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, got: bytes, why: str) -> None:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            raise Truncated(got + self.buffer, why, reset=True) from None
        if not data:
            raise Truncated(got + self.buffer, why, reset=False)
        self.buffer += data

    def _take(self, size: int) -> bytes:
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _line(self, got: bytes, why: str) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill(got, why)
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def read_response(self, *, head_only: bool = False) -> Response:
        """The next response, whole (``head_only``: a reply to HEAD, no body).

        Raises:
            Truncated: The connection ended (closed or reset) inside it,
                including before its first byte (``got`` is then empty).
        """
        while b"\r\n\r\n" not in self.buffer:
            self._fill(b"", "the head")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        raw = head + b"\r\n\r\n"
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        values = dict(headers)
        chunked = values.get("transfer-encoding", "").lower() == "chunked"
        body = b""
        if head_only:
            pass
        elif chunked:
            while True:
                size_line = self._line(raw + body, "a chunk size")
                size = int(size_line.split(b";")[0], 16)
                while len(self.buffer) < size + 2:
                    self._fill(raw + body, "a chunk")
                chunk = self._take(size + 2)
                body += chunk[:size]
                if size == 0:
                    break
        elif "content-length" in values:
            length = int(values["content-length"])
            while len(self.buffer) < length:
                self._fill(raw, "the body")
            body = self._take(length)
        else:
            while True:
                try:
                    self._fill(raw, "the body")
                except Truncated:
                    break
            body, self.buffer = self.buffer, b""
        self.consumed += 1
        return Response(status, headers, body, chunked, raw + body)

    def request(
        self, method: str, path: str, headers: Iterable[str] = (), body: bytes = b""
    ) -> Response:
        """Send one well-formed request and read its response."""
        self.send(request_bytes(method, path, headers, body))
        return self.read_response(head_only=method == "HEAD")

    def closed_by_peer(self, timeout_s: float = SOCKET_TIMEOUT_S) -> bool:
        """Wait for the peer to close, reading and dropping what arrives first."""
        self.sock.settimeout(timeout_s)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return True

    def rest(self, timeout_s: float = SOCKET_TIMEOUT_S) -> bytes:
        """Everything the peer sends until it closes (or resets) the connection."""
        self.sock.settimeout(timeout_s)
        data, self.buffer = self.buffer, b""
        try:
            while chunk := self.sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        return data


def request_bytes(method: str, path: str, headers: Iterable[str] = (), body: bytes = b"") -> bytes:
    """A request with a Host header and, for a body, its Content-Length."""
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *headers]
    if body and not any(
        h.lower().startswith(("content-length", "transfer-encoding")) for h in headers
    ):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def fetch(
    port: int, method: str, path: str, headers: Iterable[str] = (), body: bytes = b""
) -> Response:
    """One request on a fresh connection."""
    with Wire(port) as wire:
        return wire.request(method, path, headers, body)
