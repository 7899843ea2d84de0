"""The request block: a C handler reads its params and headers in one host call.

Runs in: the test process, which plays a worker's I/O thread: a real
``WasmHost`` serves requests inline to a C reactor built with the SDK the
way ``make guests`` builds one.

What a handler author must notice: nothing but fewer host calls. Every
SDK helper (``rusm_param``, ``rusm_request_header``, ``rusm_request_str``)
answers exactly what it answered when each field was a host call of its
own — a missing param is NOTFOUND, a header matches in any case, a
repeated header's values are joined — whether the block fits the SDK's
buffer or not (``RUSM_REQUEST_BLOCK_BYTES``).
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
import wasmtime

from rusmd.abi import BLOCK_ENTRY_BYTES, BLOCK_ENTRY_FORMAT, RequestField
from rusmd.channel import ComponentImage
from rusmd.config import Overrides, load_environment, load_manifest
from rusmd.config.model import LogLevel, Protocol
from rusmd.log import Logger
from rusmd.wasm.cache import CompileCache
from rusmd.wasm.engine import compile_engine
from rusmd.wasm.exchange import Exchange, Request
from rusmd.wasm.host import WasmHost
from tests.guests.build import build_c_guest

# Reads each field the helpers offer and answers them as "name=value" lines
# (the value, or the error code in brackets).
HANDLER = r"""
#include <stdio.h>
#include <string.h>
#include "rusm.h"

static char out[4096];
static size_t used;

static void line(const char *name, int32_t n, const char *value) {
    if (n < 0) {
        used += (size_t)snprintf(out + used, sizeof out - used, "%s=[%d]\n", name, (int)n);
    } else {
        used += (size_t)snprintf(out + used, sizeof out - used, "%s=%s\n", name, value);
    }
}

RUSM_EXPORT(show) int show(void) {
    char value[256];
    used = 0;
    line("method", rusm_request_str(RUSM_REQ_METHOD, NULL, value, sizeof value), value);
    line("path", rusm_request_str(RUSM_REQ_PATH, NULL, value, sizeof value), value);
    line("query", rusm_request_str(RUSM_REQ_QUERY, NULL, value, sizeof value), value);
    line("id", rusm_param("id", value, sizeof value), value);
    line("rest", rusm_param("*", value, sizeof value), value);
    line("nope", rusm_param("nope", value, sizeof value), value);
    line("accept", rusm_request_header("Accept", value, sizeof value), value);
    line("x-many", rusm_request_header("x-many", value, sizeof value), value);
    line("absent", rusm_request_header("absent", value, sizeof value), value);
    line("small", rusm_request_header("accept", value, 4), value);
    line("q", rusm_query_param("q", value, sizeof value), value);
    rusm_respond(200, NULL, 0, out, used);
    return 0;
}
"""

REQUEST = Request(
    "GET",
    "/users/42/a%20b",
    "q=caf%C3%A9&z=1",
    [
        (b"host", b"example.test"),
        (b"accept", b"application/json"),
        (b"x-many", b"one"),
        (b"x-many", b"two"),
    ],
    params={"id": "42", "*": "a b"},
)

EXPECTED = (
    "method=GET\n"
    "path=/users/42/a%20b\n"
    "query=q=caf%C3%A9&z=1\n"
    "id=42\n"
    "rest=a b\n"
    "nope=[-4]\n"
    "accept=application/json\n"
    "x-many=one, two\n"
    "absent=[-4]\n"
    "small=[-8]\n"
    "q=café\n"
)


class Wire:
    """The connection an exchange writes to."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closing = False

    def send(self, data: bytes) -> None:
        self.sent.append(data)


def serve(app: Path, defines: tuple[str, ...]) -> str:
    """Build the handler with ``defines``, serve ``REQUEST`` inline, return the body."""
    source = app / "show.c"
    source.write_text(HANDLER)
    wasm = build_c_guest(source, app / "show.wasm", defines=defines, reactor=True).read_bytes()
    (app / "rusm.toml").write_text('[components.api]\ncapability = "sandboxed"\n')
    manifest = load_manifest(str(app / "rusm.toml"), Overrides(), load_environment(app))
    host = WasmHost(
        manifest,
        3,
        Logger(LogLevel.OFF, lambda _record: None),
        load_environment(app),
        request_lease=lambda: None,
    )
    host.add_lease(1, 1000)
    cache = CompileCache(app / "cache")
    entry = cache.store(cache.key(wasm), wasmtime.Module(compile_engine(), wasm).serialize(), "api")
    host.load([ComponentImage(name="api", cwasm=str(entry.path), digest=entry.digest)])
    assert host.components["api"].inline
    wire = Wire()
    exchange = Exchange(REQUEST, wire, Protocol.HTTP, inline=True, call_soon=lambda *a: None)
    exchange.budget_ms = 30_000
    report = host.inline.serve(host.components["api"], "show", exchange)
    assert report.reason == "normal", report
    assert exchange.complete()
    host.shutdown(1.0)
    deadline = time.monotonic() + 5
    while host.processes and time.monotonic() < deadline:
        time.sleep(0.01)
    return b"".join(wire.sent).partition(b"\r\n\r\n")[2].decode()


@pytest.mark.parametrize(
    ("defines", "why"),
    [
        ((), "the block fits the SDK's buffer: one host call for every field"),
        (("RUSM_REQUEST_BLOCK_BYTES=32",), "the block does not fit: one call per field"),
        (("RUSM_REQUEST_BLOCK_BYTES=0",), "the block turned off"),
    ],
)
def test_sdk_request_helpers_answer_the_same_with_or_without_the_block(
    tmp_path: Path, defines: tuple[str, ...], why: str
) -> None:
    assert serve(tmp_path, defines) == EXPECTED, why


def test_request_block_holds_method_path_query_params_then_headers_in_order() -> None:
    block = REQUEST.field(RequestField.BLOCK, b"")
    assert isinstance(block, bytes)
    entries = []
    at = 0
    while at < len(block):
        field, key_len, value_len = struct.unpack_from(BLOCK_ENTRY_FORMAT, block, at)
        at += BLOCK_ENTRY_BYTES
        key, value = block[at : at + key_len], block[at + key_len : at + key_len + value_len]
        at += key_len + value_len
        entries.append((RequestField(field), key, value))
    assert entries == [
        (RequestField.METHOD, b"", b"GET"),
        (RequestField.PATH, b"", b"/users/42/a%20b"),
        (RequestField.QUERY, b"", b"q=caf%C3%A9&z=1"),
        (RequestField.PARAM, b"id", b"42"),
        (RequestField.PARAM, b"*", b"a b"),
        (RequestField.HEADER, b"host", b"example.test"),
        (RequestField.HEADER, b"accept", b"application/json"),
        (RequestField.HEADER, b"x-many", b"one"),
        (RequestField.HEADER, b"x-many", b"two"),
    ]
