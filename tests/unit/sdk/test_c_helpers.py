"""The C SDK's JSON builder and message encoding, run in wasmtime.

Runs in: tests.

The helpers import nothing, so a reactor built from them runs without a
daemon: each export builds something into a static buffer and the test
reads it back and parses it with Python's own JSON decoder (or the
message layout rusm.h documents).
"""

from __future__ import annotations

import importlib.util
import json
import struct
import tomllib

import pytest
import wasmtime

from rusmd.abi import ErrorCode
from tests.guests.build import COMPILE_TIMEOUT_S, ROOT, SDK, build_c_guest

needs_zig = pytest.mark.skipif(
    importlib.util.find_spec("ziglang") is None, reason="the ziglang package is missing"
)

GUEST = r"""
#include "rusm.h"

static char out[512];
static unsigned char msg[256];
static char text[64];

RUSM_EXPORT(out_at) void *out_at(void) { return out; }
RUSM_EXPORT(msg_at) void *msg_at(void) { return msg; }
RUSM_EXPORT(text_at) void *text_at(void) { return text; }

RUSM_EXPORT(escape) int32_t escape(void) {
    static const char raw[] = "a\"b\\c\nd\te\x01" "f\x7f" "g\xc3\xa9";
    return rusm_json_escape(out, sizeof out, raw, sizeof raw - 1);
}

RUSM_EXPORT(escape_short) int32_t escape_short(int32_t cap) {
    return rusm_json_escape(out, (size_t)cap, "abc", 3);
}

RUSM_EXPORT(document) int32_t document(int32_t cap) {
    rusm_json j;
    rusm_json_init(&j, out, (size_t)cap);
    rusm_json_object(&j);
    rusm_json_key(&j, "name"); rusm_json_str(&j, "he said \"hi\"");
    rusm_json_key(&j, "n"); rusm_json_int(&j, -9007199254740993LL);
    rusm_json_key(&j, "list");
    rusm_json_array(&j);
    rusm_json_bool(&j, 1); rusm_json_bool(&j, 0); rusm_json_null(&j); rusm_json_raw(&j, "1.5");
    rusm_json_object(&j); rusm_json_object_end(&j);
    rusm_json_array(&j); rusm_json_int(&j, 7); rusm_json_array_end(&j);
    rusm_json_array_end(&j);
    rusm_json_key(&j, "k\n"); rusm_json_string(&j, "x\0y", 3);
    rusm_json_object_end(&j);
    return rusm_json_finish(&j);
}

RUSM_EXPORT(misuse) int32_t misuse(int32_t which) {
    rusm_json j;
    rusm_json_init(&j, out, sizeof out);
    switch (which) {
    case 0: rusm_json_key(&j, "top"); break;                       /* a key outside an object */
    case 1: rusm_json_object(&j); rusm_json_int(&j, 1); break;     /* a value without its key */
    case 2: rusm_json_array(&j); rusm_json_object_end(&j); break;  /* the wrong end */
    case 3: rusm_json_object(&j); break;                           /* still open */
    case 4: rusm_json_array_end(&j); break;                        /* an end without a start */
    case 5: rusm_json_object(&j); rusm_json_key(&j, "a"); rusm_json_key(&j, "b"); break;
    default:
        for (int i = 0; i <= RUSM_JSON_MAX_DEPTH; i++) rusm_json_array(&j);
    }
    return rusm_json_finish(&j);
}

RUSM_EXPORT(encode) int32_t encode(void) {
    rusm_msg m;
    rusm_msg_init(&m, msg, sizeof msg);
    rusm_msg_put_str(&m, 'o', "add");
    rusm_msg_put_i64(&m, 'n', -5);
    rusm_msg_put(&m, 'e', "", 0);
    return rusm_msg_finish(&m);
}

RUSM_EXPORT(encode_short) int32_t encode_short(int32_t cap) {
    rusm_msg m;
    rusm_msg_init(&m, msg, (size_t)cap);
    rusm_msg_put_str(&m, 'o', "add");
    rusm_msg_put_i64(&m, 'n', 1);
    return rusm_msg_finish(&m);
}

RUSM_EXPORT(get_i64) int64_t get_i64(int32_t len, int32_t tag) {
    int64_t value = 0;
    int32_t n = rusm_msg_get_i64(msg, (size_t)len, (uint8_t)tag, &value);
    return n < 0 ? (int64_t)n * 1000000000000LL : value;
}

RUSM_EXPORT(get_str) int32_t get_str(int32_t len, int32_t tag, int32_t cap) {
    return rusm_msg_get_str(msg, (size_t)len, (uint8_t)tag, text, (size_t)cap);
}
"""


@pytest.fixture(scope="module")
def helpers(tmp_path_factory: pytest.TempPathFactory) -> tuple[wasmtime.Store, wasmtime.Instance]:
    work = tmp_path_factory.mktemp("c-helpers")
    source = work / "helpers.c"
    source.write_text(GUEST, encoding="utf-8")
    build_c_guest(source, work / "helpers.wasm", reactor=True)
    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, (work / "helpers.wasm").read_bytes())
    assert not [i for i in module.imports if i.module == "rusm"], "helpers must import nothing"
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    instance = linker.instantiate(store, module)
    instance.exports(store)["_initialize"](store)
    return store, instance


def _call(helpers: tuple[wasmtime.Store, wasmtime.Instance], name: str, *args: int) -> int:
    store, instance = helpers
    result = instance.exports(store)[name](store, *args)
    assert isinstance(result, int)
    return result


def _read(helpers: tuple[wasmtime.Store, wasmtime.Instance], at: str, size: int) -> bytes:
    store, instance = helpers
    exports = instance.exports(store)
    start = exports[at](store)
    return bytes(exports["memory"].read(store, start, start + size))


def test_sdk_header_is_declared_package_data_and_ziglang_a_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = project["tool"]["setuptools"]["package-data"]["rusmd"]
    header = (SDK / "rusm.h").relative_to(ROOT / "rusmd")
    assert any(header.match(pattern) for pattern in patterns), patterns
    runtime = [dependency.split(">")[0] for dependency in project["project"]["dependencies"]]
    assert "ziglang" in runtime and "watchfiles" in runtime


@needs_zig
@pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)
def test_json_escape_writes_a_string_json_decodes(helpers: tuple) -> None:
    n = _call(helpers, "escape")
    written = _read(helpers, "out_at", n + 1)
    assert written[-1:] == b"\0"
    assert json.loads(written[:-1]) == 'a"b\\c\nd\te\x01f\x7fgé'


@needs_zig
@pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)
def test_json_escape_too_small_a_buffer_is_toobig_and_empty(helpers: tuple) -> None:
    assert _call(helpers, "escape_short", 5) == ErrorCode.TOOBIG  # '"abc"' needs 6 with its NUL
    assert _read(helpers, "out_at", 1) == b"\0"
    assert _call(helpers, "escape_short", 6) == 5


@needs_zig
@pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)
def test_json_builder_places_commas_and_escapes_keys_and_values(helpers: tuple) -> None:
    n = _call(helpers, "document", 512)
    assert n > 0
    assert json.loads(_read(helpers, "out_at", n)) == {
        "name": 'he said "hi"',
        "n": -9007199254740993,
        "list": [True, False, None, 1.5, {}, [7]],
        "k\n": "x\0y",
    }
    assert _call(helpers, "document", n) == ErrorCode.TOOBIG  # no room for the NUL
    assert _call(helpers, "document", n + 1) == n


@needs_zig
@pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)
def test_json_builder_misuse_is_invalid(helpers: tuple) -> None:
    assert [_call(helpers, "misuse", which) for which in range(7)] == [ErrorCode.INVALID] * 7


@needs_zig
@pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)
def test_msg_fields_have_the_documented_layout_and_read_back(helpers: tuple) -> None:
    n = _call(helpers, "encode")
    expected = (
        b"o" + struct.pack("<I", 3) + b"add"
        + b"n" + struct.pack("<I", 8) + struct.pack("<q", -5)
        + b"e" + struct.pack("<I", 0)
    )  # fmt: skip
    assert _read(helpers, "msg_at", n) == expected
    assert _call(helpers, "get_i64", n, ord("n")) == -5
    assert _call(helpers, "get_str", n, ord("o"), 64) == 3
    assert _read(helpers, "text_at", 4) == b"add\0"
    assert _call(helpers, "get_str", n, ord("e"), 64) == 0


@needs_zig
@pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)
def test_msg_missing_short_or_truncated_fields_are_refused(helpers: tuple) -> None:
    n = _call(helpers, "encode")
    scale = 1_000_000_000_000
    assert _call(helpers, "get_i64", n, ord("x")) == ErrorCode.NOTFOUND * scale
    assert _call(helpers, "get_i64", n, ord("o")) == ErrorCode.INVALID * scale  # not 8 bytes
    assert _call(helpers, "get_i64", 10, ord("n")) == ErrorCode.INVALID * scale  # truncated
    assert _call(helpers, "get_str", n, ord("o"), 3) == ErrorCode.TOOBIG  # no room for the NUL
    assert _call(helpers, "encode_short", 8) == ErrorCode.TOOBIG
    assert _call(helpers, "encode_short", 21) == 21
