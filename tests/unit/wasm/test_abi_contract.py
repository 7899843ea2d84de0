"""The guest ABI contract: docs/abi.md, rusmd/sdk/c/rusm.h and the example agree with abi.py.

Runs in: any (the C guests are compiled with the pinned ``ziglang`` dev
dependency into tmp_path; wasmtime only reads the resulting modules).

``rusmd/abi.py`` and ``rusmd/wasm/abi.py`` are the oracle. The docs are checked by their
structure: one ``### `rusm.<name>` `` section per function carrying its
WAT import and grant, and the error-code, log-level and capability
tables. The header is checked by compiling it and reading the imports
of the module wasmtime sees, so a wrong C prototype fails even when its
text looks right.
"""

from __future__ import annotations

import collections
import importlib.util
import re
import struct
from pathlib import Path

import pytest
import wasmtime

from rusmd.abi import (
    BLOCK_ENTRY_BYTES,
    HEADER_BYTES,
    KV_BATCH_OP_HEADER,
    KV_BATCH_OP_HEADER_BYTES,
    MAILBOX_LIMIT,
    MAX_EVENT_BYTES,
    MAX_KV_BATCH_BYTES,
    MAX_LIST_KEYS,
    MAX_MESSAGE_BYTES,
    MAX_NAME_BYTES,
    MAX_RESPONSE_HEADER_BYTES,
    MAX_STATUS,
    MIN_STATUS,
    RESPONSE_HOLD_BYTES,
    ErrorCode,
    ExitReason,
    Kind,
    RequestField,
    WsKind,
)
from rusmd.config import load_manifest
from rusmd.config.loader import CAPABILITY_KEYS
from rusmd.config.model import BUILTIN_CAPABILITIES, BuiltinCapability, Capability, Protocol
from rusmd.config.model import LogLevel as ConfigLogLevel
from rusmd.store.kv import (
    MAX_BUCKET_BYTES,
    MAX_BUCKETS,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Op,
)
from rusmd.wasm.abi import (
    ABI_MODULE,
    ABI_VERSION,
    FUNCTIONS,
    INLINE_FUNCTIONS,
    WASI_BLOCKING,
    WASI_MODULE,
    Grant,
    LogLevel,
)
from rusmd.wasm.kv_calls import parse_batch
from tests.guests.build import COMPILE_TIMEOUT_S, SDK, build_c_guest

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "abi.md"
HEADER = SDK / "rusm.h"
HELLO_APP = ROOT / "examples" / "hello"
HELLO = HELLO_APP / "components" / "hello.c"
WEB = HELLO_APP / "components" / "web.c"
ECHO = HELLO_APP / "components" / "echo.c"

needs_zig = pytest.mark.skipif(
    importlib.util.find_spec("ziglang") is None, reason="the ziglang dev dependency is missing"
)

Signature = tuple[tuple[str, ...], tuple[str, ...]]

# The C name of each import where it is not rusm_<name> (rusm_info is the
# helper that logs at info). The prefix keeps `register`, a C keyword, usable.
C_NAMES = {"info": "rusm_process_info"}

# The header rusm.recv writes, in order: (field, wasm type). abi.py states
# the layout in a comment; the docs' table and rusm_header follow this.
HEADER_FIELDS = (
    ("kind", "i32"),
    ("reason", "i32"),
    ("from", "i64"),
    ("ref", "i64"),
    ("size", "i32"),
    ("reserved", "i32"),
)


def abi_signatures() -> dict[str, Signature]:
    return {name: (tuple(kind for _, kind in f.params), f.results) for name, f in FUNCTIONS.items()}


def wat_import(name: str) -> str:
    """The WAT import line the docs show for ``name``."""
    params, results = abi_signatures()[name]
    clauses = ""
    if params:
        clauses += f" (param {' '.join(params)})"
    if results:
        clauses += f" (result {' '.join(results)})"
    return f'(import "{ABI_MODULE}" "{name}" (func{clauses}))'


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def doc_sections() -> dict[str, str]:
    """Heading text → the body up to the next heading of any level."""
    parts = re.split(r"^#{1,6} (.+)$", doc_text(), flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def doc_blocks(language: str, text: str | None = None) -> list[str]:
    """The fenced ``language`` blocks of ``text`` (a section's body; the whole page by default)."""
    text = doc_text() if text is None else text
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def table_rows(text: str) -> list[list[str]]:
    """The cells of every markdown table row in ``text``, backticks stripped."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def header_text() -> str:
    return HEADER.read_text(encoding="utf-8")


def c_name(name: str) -> str:
    """The C function ``rusm.h`` declares for the import ``rusm.<name>``."""
    return C_NAMES.get(name, f"rusm_{name}")


def header_offsets() -> dict[str, int]:
    """Each header field's byte offset (little-endian, no padding: it is 8-aligned)."""
    offsets, at = {}, 0
    for field, kind in HEADER_FIELDS:
        offsets[field] = at
        at += {"i32": 4, "i64": 8}[kind]
    return offsets


def compile_guest(source: Path, out: Path, *, reactor: bool = False) -> wasmtime.Module:
    """Build ``source`` like ``make guests`` does, warnings as errors."""
    build_c_guest(source, out, reactor=reactor)
    return wasmtime.Module(wasmtime.Engine(), out.read_bytes())


def func_exports(module: wasmtime.Module) -> dict[str, Signature]:
    """Each exported function's (params, results)."""
    return {
        str(item.name): (
            tuple(str(kind) for kind in item.type.params),
            tuple(str(kind) for kind in item.type.results),
        )
        for item in module.exports
        if isinstance(item.type, wasmtime.FuncType)
    }


def wasi_imports(module: wasmtime.Module) -> set[str]:
    return {str(item.name) for item in module.imports if item.module == WASI_MODULE}


def grants_of(profile: Capability) -> set[Grant]:
    """The grants a resolved profile gives: each ``allow-*`` grant it sets, and ``always``."""
    return {Grant.ALWAYS} | {
        grant
        for grant in Grant
        if grant is not Grant.ALWAYS and getattr(profile, grant.value.replace("-", "_"))
    }


def assert_importable(module: wasmtime.Module, profile: Capability) -> None:
    """Every ``rusm`` import has the ABI signature and a grant ``profile`` gives."""
    imports = rusm_imports(module)
    assert imports, "the guest should call the rusm API"
    for name, signature in imports.items():
        assert signature == abi_signatures()[name], name
        assert FUNCTIONS[name].grant in grants_of(profile), f"rusm.{name} is not granted"


def rusm_imports(module: wasmtime.Module) -> dict[str, Signature]:
    imports = {}
    for item in module.imports:
        if item.module == ABI_MODULE:
            assert isinstance(item.type, wasmtime.FuncType), item.name
            params = tuple(str(kind) for kind in item.type.params)
            results = tuple(str(kind) for kind in item.type.results)
            imports[str(item.name)] = (params, results)
    return imports


def call_every_function() -> str:
    """A guest that includes rusm.h, calls every import and every helper.

    The static asserts make the compiler compare each macro with abi.py.
    """
    asserts = [f'_Static_assert(RUSM_ABI_VERSION == {ABI_VERSION}, "abi version");']
    asserts += [
        f"_Static_assert(RUSM_{'OK' if code is ErrorCode.OK else 'ERR_' + code.name} "
        f'== {code.value}, "{code.name}");'
        for code in ErrorCode
    ]
    asserts += [
        f'_Static_assert(RUSM_LOG_{level.name} == {level.value}, "{level.name}");'
        for level in LogLevel
    ]
    asserts += [f'_Static_assert(RUSM_KIND_{k.name} == {k.value}, "{k.name}");' for k in Kind]
    asserts += [
        f'_Static_assert(RUSM_REASON_{r.name} == {r.code}, "{r.name}");' for r in ExitReason
    ]
    asserts += [
        f'_Static_assert(RUSM_REQ_{f.name} == {f.value}, "{f.name}");' for f in RequestField
    ]
    asserts += [f'_Static_assert(RUSM_WS_{k.name} == {k.value}, "{k.name}");' for k in WsKind]
    asserts += [
        f'_Static_assert(RUSM_{name} == {value}, "{name}");'
        for name, value in limit_macros().items()
    ]
    asserts += [f'_Static_assert(sizeof(rusm_header) == {HEADER_BYTES}, "header size");']
    asserts += [
        f'_Static_assert(offsetof(rusm_header, {field}) == {offset}, "{field}");'
        for field, offset in header_offsets().items()
    ]
    asserts += [
        f'_Static_assert(sizeof(((rusm_header *)0)->{field}) == {kind[1:]} / 8, "{field}");'
        for field, kind in HEADER_FIELDS
    ]
    calls = [
        f"(void){c_name(name)}({', '.join('0' for _ in f.params)});"
        for name, f in FUNCTIONS.items()
        if f.results
    ]
    # A function with no result (exit) does not return: call it last.
    calls += [f"{c_name(name)}(0);" for name, f in FUNCTIONS.items() if not f.results]
    helpers = [
        'rusm_log_str(RUSM_LOG_INFO, "text");',
        'rusm_error("e"); rusm_warn("w"); rusm_info("i"); rusm_debug("d");',
        'rusm_logf(RUSM_LOG_INFO, "%s %lld", rusm_strerror(RUSM_ERR_NOPROC), 1LL);',
        'rusm_spawn_str("name"); rusm_spawn_link_str("name"); rusm_supervise_str("{}");',
        'rusm_send_str(1, "t"); rusm_reply_str(1, 2, "t"); rusm_send_name("n", "t", 1);',
        'rusm_register_str("n"); rusm_unregister_str("n"); (void)rusm_whereis_str("n");',
        'rusm_set_label_str("l"); rusm_info(rusm_reason_name(RUSM_REASON_KILLED));',
        "rusm_header header; char buf[8];",
        "(void)rusm_recv(&header, buf, sizeof buf, RUSM_FOREVER);",
        'rusm_request_str(RUSM_REQ_PATH, NULL, buf, sizeof buf); rusm_param("id", buf, 8);',
        'rusm_request_header("accept", buf, 8); rusm_query_param("q", buf, 8);',
        'rusm_respond_text(200, "ok"); rusm_respond_str(404, NULL, "no"); rusm_write_str("t");',
        'rusm_sse_event_str("tick", "1"); rusm_sse_event_str(NULL, "d");',
        'rusm_ws_send_text("t"); rusm_ws_close_str(1000, NULL); rusm_ws_close_str(4000, "bye");',
        'rusm_kv_get_str("b", "k", buf, sizeof buf); rusm_kv_set_str("b", "k", "v");',
        'rusm_kv_exists_str("b", "k"); rusm_kv_delete_str("b", "k");',
        'int32_t used = rusm_kv_batch_add(buf, sizeof buf, 0, RUSM_KV_DELETE, "k", 1, NULL, 0);',
        "size_t offset = 0; const char *key = NULL; size_t key_len = 0;",
        "while (rusm_kv_list_next(buf, &used, &offset, &key, &key_len)) {}",
    ]
    body = "\n    ".join(helpers + calls)
    return (
        '#include "rusm.h"\n'
        + "\n".join(asserts)
        + f"\nRUSM_EXPORT(run) void run(void) {{\n    {body}\n}}\n"
    )


def limit_macros() -> dict[str, int]:
    """The size and limit macros of ``rusm.h`` with abi.py's values."""
    return {
        "HEADER_BYTES": HEADER_BYTES,
        "REQUEST_BLOCK_ENTRY_BYTES": BLOCK_ENTRY_BYTES,
        "MAX_MESSAGE_BYTES": MAX_MESSAGE_BYTES,
        "MAILBOX_LIMIT": MAILBOX_LIMIT,
        "MAX_NAME_BYTES": MAX_NAME_BYTES,
        "MIN_STATUS": MIN_STATUS,
        "MAX_STATUS": MAX_STATUS,
        "MAX_RESPONSE_HEADER_BYTES": MAX_RESPONSE_HEADER_BYTES,
        "RESPONSE_HOLD_BYTES": RESPONSE_HOLD_BYTES,
        "MAX_EVENT_BYTES": MAX_EVENT_BYTES,
        "KV_MAX_BUCKET_BYTES": MAX_BUCKET_BYTES,
        "KV_MAX_BUCKETS": MAX_BUCKETS,
        "KV_MAX_KEY_BYTES": MAX_KEY_BYTES,
        "KV_MAX_VALUE_BYTES": MAX_VALUE_BYTES,
        "KV_MAX_BATCH_BYTES": MAX_KV_BATCH_BYTES,
        "KV_MAX_LIST_KEYS": MAX_LIST_KEYS,
        "KV_OP_HEADER_BYTES": KV_BATCH_OP_HEADER_BYTES,
        "KV_SET": Op.SET,
        "KV_DELETE": Op.DELETE,
    }


@pytest.fixture(scope="module")
def sdk_module(tmp_path_factory: pytest.TempPathFactory) -> wasmtime.Module:
    work = tmp_path_factory.mktemp("sdk")
    source = work / "every.c"
    source.write_text(call_every_function(), encoding="utf-8")
    return compile_guest(source, work / "every.wasm")


# ── docs/abi.md ─────────────────────────────────────────────────────────────


def test_docs_every_function_has_a_section_with_its_import_and_grant() -> None:
    sections = doc_sections()
    for name, function in FUNCTIONS.items():
        body = sections.get(f"`{ABI_MODULE}.{name}`")
        assert body is not None, f"docs/abi.md: no ### `rusm.{name}` section"
        assert wat_import(name) in body, f"rusm.{name}: expected {wat_import(name)}"
        assert ["grant", function.grant.value] in table_rows(body), f"rusm.{name}: grant"
        if function.checked_per_call:
            # Importable anywhere: the section must say what a caller without it gets.
            prose = " ".join(body.split())
            assert f"`DENIED` without `{function.grant.value}`" in prose, f"rusm.{name}"


def test_docs_function_sections_name_only_abi_functions() -> None:
    documented = {
        heading.strip("`").removeprefix(f"{ABI_MODULE}.")
        for heading in doc_sections()
        if heading.startswith(f"`{ABI_MODULE}.")
    }
    assert documented == set(FUNCTIONS)


def test_docs_state_the_abi_version() -> None:
    assert f"**ABI version {ABI_VERSION}**" in doc_text()


def test_docs_error_code_table_matches_abi() -> None:
    rows = table_rows(doc_sections()["Error codes"])[1:]
    documented = {(int(value), name, macro) for value, name, macro, _ in rows}
    expected = {
        (code.value, code.name, "RUSM_OK" if code is ErrorCode.OK else f"RUSM_ERR_{code.name}")
        for code in ErrorCode
    }
    assert documented == expected


def test_docs_header_table_matches_abi() -> None:
    rows = table_rows(doc_sections()["The message header"])
    documented = [(int(row[0]), row[1], row[2]) for row in rows if row[0].isdigit()]
    offsets = header_offsets()
    assert documented == [(offsets[name], name, kind) for name, kind in HEADER_FIELDS]
    assert f"{HEADER_BYTES} bytes" in doc_sections()["The message header"]


def test_docs_kind_table_matches_abi() -> None:
    rows = table_rows(doc_sections()["Message kinds"])
    documented = {(int(row[0]), row[1], row[2]) for row in rows if row[0].isdigit()}
    assert documented == {(k.value, k.name, f"RUSM_KIND_{k.name}") for k in Kind}


def test_docs_reason_table_matches_abi() -> None:
    rows = table_rows(doc_sections()["Exit reason codes"])
    documented = {(int(row[0]), row[1], row[2]) for row in rows if row[0].isdigit()}
    assert documented == {(r.code, r.value, f"RUSM_REASON_{r.name}") for r in ExitReason}


def test_docs_planned_list_names_no_implemented_function() -> None:
    planned = doc_sections()["Planned"]
    for name in FUNCTIONS:
        assert f"`rusm.{name}`" not in planned, name


def test_docs_request_field_table_matches_abi() -> None:
    body = doc_sections()[f"`{ABI_MODULE}.request`"]
    rows = [row for row in table_rows(body) if row[0].isdigit()]
    documented = {(int(row[0]), row[1]) for row in rows}
    assert documented == {(f.value, f"RUSM_REQ_{f.name}") for f in RequestField}


def test_docs_log_level_table_matches_abi() -> None:
    body = doc_sections()[f"`{ABI_MODULE}.log`"]
    rows = [row for row in table_rows(body) if row[0].isdigit()]
    documented = {(int(value), macro, level) for value, macro, level in rows}
    expected = {(lv.value, f"RUSM_LOG_{lv.name}", lv.name.lower()) for lv in LogLevel}
    assert documented == expected


def test_docs_grant_table_lists_each_grants_functions() -> None:
    rows = table_rows(doc_sections()["Capabilities"])
    by_grant = {row[0]: row[1] for row in rows if len(row) == 2 and row[0] in set(Grant)}
    assert set(by_grant) == set(Grant)
    for grant in Grant:
        listed = set(re.findall(r"[a-z_]+", by_grant[grant].split("(")[0])) - {"none", "yet"}
        assert listed == {name for name, f in FUNCTIONS.items() if f.grant is grant}, grant
        # The table is "what a module may import under the grant": functions
        # any module may import must say the grant is checked per call.
        per_call = any(f.checked_per_call for f in FUNCTIONS.values() if f.grant is grant)
        assert per_call == ("checked per call" in by_grant[grant]), grant


def test_docs_kv_batch_record_table_matches_abi() -> None:
    rows = table_rows(doc_sections()["Batches"])[1:]
    header = struct.Struct(KV_BATCH_OP_HEADER)
    sizes = [int(row[0]) for row in rows if row[0].isdigit()]
    assert sizes == [struct.calcsize(f"<{code}") for code in KV_BATCH_OP_HEADER[1:]]
    assert sum(sizes) == header.size == KV_BATCH_OP_HEADER_BYTES
    (op,) = [row[2] for row in rows if row[1] == "op"]
    assert f"{Op.SET} set (`RUSM_KV_SET`)" in op
    assert f"{Op.DELETE} delete (`RUSM_KV_DELETE`)" in op
    assert f'`"{KV_BATCH_OP_HEADER}"`' in doc_sections()["Batches"]


def test_docs_capability_table_covers_every_profile_key_with_builtin_values() -> None:
    rows = table_rows(doc_sections()["Capabilities"])
    header, *body = [row for row in rows if len(row) == 5]
    assert {row[0] for row in body} == set(CAPABILITY_KEYS) - {"inherits"}
    builtins = [BUILTIN_CAPABILITIES[BuiltinCapability(name)] for name in header[2:]]
    for key, _, *shown in body:
        values = [getattr(profile, key.replace("-", "_")) for profile in builtins]
        assert shown == [cell_value(value) for value in values], key


def cell_value(value: object) -> str:
    """How the capability table writes a profile value."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "none" if not value else str(len(value))
    return str(value)


# ── rusmd/sdk/c/rusm.h ────────────────────────────────────────────────────────────


def test_header_declares_each_abi_import_exactly_once() -> None:
    text = header_text()
    names = collections.Counter(re.findall(r'import_name\("([^"]+)"\)', text))
    assert names == collections.Counter(set(FUNCTIONS))
    assert len(re.findall(r'import_module\("([^"]+)"\)', text)) == len(FUNCTIONS)
    assert set(re.findall(r'import_module\("([^"]+)"\)', text)) == {ABI_MODULE}


def test_header_error_and_level_macros_match_abi() -> None:
    text = header_text()
    errors = {
        name: int(value)
        for name, value in re.findall(r"^#define RUSM_(OK|ERR_\w+)\s+\(?(-?\d+)\)?", text, re.M)
    }
    assert errors == {
        ("OK" if code is ErrorCode.OK else f"ERR_{code.name}"): code.value for code in ErrorCode
    }
    levels = dict(re.findall(r"^#define RUSM_LOG_(\w+)\s+(\d+)", text, re.M))
    assert {name: int(value) for name, value in levels.items()} == {
        level.name: level.value for level in LogLevel
    }
    assert f"#define RUSM_ABI_VERSION {ABI_VERSION}\n" in text


def test_header_kind_reason_and_limit_macros_match_abi() -> None:
    text = header_text()
    kinds = dict(re.findall(r"^#define RUSM_KIND_(\w+)\s+(\d+)", text, re.M))
    assert {name: int(value) for name, value in kinds.items()} == {k.name: k.value for k in Kind}
    reasons = dict(re.findall(r"^#define RUSM_REASON_(\w+)\s+(\d+)", text, re.M))
    assert {name: int(value) for name, value in reasons.items()} == {
        r.name: r.code for r in ExitReason
    }
    for name, value in limit_macros().items():
        assert re.search(rf"^#define RUSM_{name} {value}\b", text, re.M), name


def test_header_request_field_and_ws_kind_macros_match_abi() -> None:
    text = header_text()
    fields = dict(re.findall(r"^#define RUSM_REQ_(\w+)\s+(\d+)", text, re.M))
    assert {name: int(value) for name, value in fields.items()} == {
        f.name: f.value for f in RequestField
    }
    kinds = dict(re.findall(r"^#define RUSM_WS_(\w+)\s+(\d+)", text, re.M))
    assert {name: int(value) for name, value in kinds.items()} == {k.name: k.value for k in WsKind}


def test_header_struct_lists_the_header_fields_in_order() -> None:
    body = re.search(r"typedef struct rusm_header \{(.*?)\} rusm_header;", header_text(), re.S)
    assert body, "rusm.h: no typedef struct rusm_header"
    fields = re.findall(r"^\s*(\w+) (\w+);", body.group(1), re.M)
    c_types = {"i32": {"int32_t"}, "i64": {"int64_t", "rusm_pid_t", "rusm_ref_t"}}
    assert [name for _, name in fields] == [name for name, _ in HEADER_FIELDS]
    for (c_type, name), (_, kind) in zip(fields, HEADER_FIELDS, strict=True):
        assert c_type in c_types[kind], name


@needs_zig
@pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)
def test_header_compiled_imports_have_the_abi_signatures(sdk_module: wasmtime.Module) -> None:
    assert rusm_imports(sdk_module) == abi_signatures()


@needs_zig
@pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)
def test_header_log_helpers_import_only_log(tmp_path: Path) -> None:
    # A sandboxed guest may use every logging helper: they must not drag
    # in an import its profile would refuse.
    source = tmp_path / "logs.c"
    source.write_text(
        '#include "rusm.h"\n'
        "RUSM_EXPORT(run) void run(void) {\n"
        '    rusm_info("hi");\n'
        '    rusm_logf(RUSM_LOG_WARN, "%s", rusm_strerror(RUSM_ERR_LIMIT));\n'
        "}\n",
        encoding="utf-8",
    )
    module = compile_guest(source, tmp_path / "logs.wasm")
    assert set(rusm_imports(module)) == {"log"}


@needs_zig
@pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)
def test_header_kv_helpers_import_only_the_kv_functions_they_call(tmp_path: Path) -> None:
    # The batch builder and the list reader import nothing; the *_str
    # helpers import only their own function.
    source = tmp_path / "kv.c"
    source.write_text(
        '#include "rusm.h"\n'
        "static char buf[1024];\n"
        "RUSM_EXPORT(run) void run(void) {\n"
        '    int32_t used = rusm_kv_batch_add(buf, sizeof buf, 0, RUSM_KV_SET, "k", 1, "v", 1);\n'
        '    (void)rusm_kv_batch("b", 1, buf, (size_t)used);\n'
        '    (void)rusm_kv_set_str("b", "k", "v");\n'
        "    char value[16];\n"
        '    (void)rusm_kv_get_str("b", "k", value, sizeof value);\n'
        '    int32_t count = rusm_kv_list("b", 1, "", 0, "", 0, 10, buf, sizeof buf);\n'
        "    size_t offset = 0; const char *key = NULL; size_t key_len = 0;\n"
        "    while (rusm_kv_list_next(buf, &count, &offset, &key, &key_len)) {}\n"
        "}\n",
        encoding="utf-8",
    )
    module = compile_guest(source, tmp_path / "kv.wasm")
    assert set(rusm_imports(module)) == {"kv_batch", "kv_set", "kv_get", "kv_list"}
    assert_importable(module, BUILTIN_CAPABILITIES[BuiltinCapability.TRUSTED])


# A reactor exercising the kv helpers that import nothing: the test writes a
# kv_list result into `listing`, reads back what the C side made of it.
KV_HELPERS_GUEST = """\
#include "rusm.h"

static unsigned char batch[256];
static unsigned char spare[64];
static unsigned char listing[1024];
static char seen[1024];

RUSM_EXPORT(batch_at) void *batch_at(void) { return batch; }
RUSM_EXPORT(spare_at) void *spare_at(void) { return spare; }
RUSM_EXPORT(listing_at) void *listing_at(void) { return listing; }
RUSM_EXPORT(seen_at) void *seen_at(void) { return seen; }

RUSM_EXPORT(build) int32_t build(void) {
    static char big[300];
    memset(big, 'x', sizeof big);
    int32_t n = rusm_kv_batch_add(batch, sizeof batch, 0, RUSM_KV_SET, "k1", 2, "v1", 2);
    n = rusm_kv_batch_add(batch, sizeof batch, (size_t)n, RUSM_KV_DELETE, "gone", 4, NULL, 0);
    n = rusm_kv_batch_add(batch, sizeof batch, (size_t)n, RUSM_KV_SET, "\\x00\\xff", 2, "", 0);
    n = rusm_kv_batch_add(batch, sizeof batch, (size_t)n, RUSM_KV_SET, big, 200, "v", 1);
    return n;
}

RUSM_EXPORT(refuse) int32_t refuse(int32_t which) {
    switch (which) {
    case 0: return rusm_kv_batch_add(spare, sizeof spare, 0, 3, "k", 1, "", 0);
    case 1: return rusm_kv_batch_add(spare, sizeof spare, 0, RUSM_KV_SET, "", 0, "v", 1);
    case 2: return rusm_kv_batch_add(spare, sizeof spare, 0, RUSM_KV_SET, spare,
                                     RUSM_KV_MAX_KEY_BYTES + 1, "", 0);
    case 3: return rusm_kv_batch_add(spare, sizeof spare, 0, RUSM_KV_DELETE, "k", 1, "v", 1);
    case 4: return rusm_kv_batch_add(spare, sizeof spare, 0, RUSM_KV_SET, "k", 1, spare,
                                     RUSM_KV_MAX_VALUE_BYTES + 1);
    case 5: return rusm_kv_batch_add(spare, sizeof spare, 0, RUSM_KV_SET, "k", 1, listing, 57);
    case 6: return rusm_kv_batch_add(spare, sizeof spare, 65, RUSM_KV_SET, "k", 1, "", 0);
    case 7: return rusm_kv_batch_add(spare, SIZE_MAX, RUSM_KV_MAX_BATCH_BYTES - 8,
                                     RUSM_KV_SET, "k", 1, "v", 1);
    default: return rusm_kv_batch_add(spare, sizeof spare, 0, RUSM_KV_SET, "k", 1, listing, 56);
    }
}

RUSM_EXPORT(read_list) int32_t read_list(int32_t count) {
    size_t offset = 0, at = 0, key_len = 0;
    const char *key = NULL;
    while (rusm_kv_list_next(listing, &count, &offset, &key, &key_len)) {
        memcpy(seen + at, key, key_len);
        at += key_len;
        seen[at++] = ',';
    }
    if (key != NULL) { /* the last key stays: the next page's after */
        seen[at++] = '|';
        memcpy(seen + at, key, key_len);
        at += key_len;
    }
    return (int32_t)at;
}
"""


@pytest.fixture(scope="module")
def kv_helpers(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[wasmtime.Store, wasmtime.Instance]:
    work = tmp_path_factory.mktemp("kv-helpers")
    source = work / "helpers.c"
    source.write_text(KV_HELPERS_GUEST, encoding="utf-8")
    build_c_guest(source, work / "helpers.wasm", reactor=True)
    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, (work / "helpers.wasm").read_bytes())
    assert rusm_imports(module) == {}, "the batch and list helpers must import nothing"
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    instance = linker.instantiate(store, module)
    instance.exports(store)["_initialize"](store)
    return store, instance


def _guest_bytes(kv_helpers: tuple[wasmtime.Store, wasmtime.Instance], at: str, size: int) -> bytes:
    store, instance = kv_helpers
    exports = instance.exports(store)
    start = exports[at](store)
    return bytes(exports["memory"].read(store, start, start + size))


@needs_zig
@pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)
def test_header_kv_batch_add_writes_records_the_host_parses(
    kv_helpers: tuple[wasmtime.Store, wasmtime.Instance],
) -> None:
    store, instance = kv_helpers
    used = instance.exports(store)["build"](store)
    ops = parse_batch(_guest_bytes(kv_helpers, "batch_at", used))
    assert ops == (
        (Op.SET, b"k1", b"v1"),
        (Op.DELETE, b"gone", b""),
        (Op.SET, b"\x00\xff", b""),
        (Op.SET, b"x" * 200, b"v"),
    )


@needs_zig
@pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)
def test_header_kv_batch_add_refuses_what_the_host_would_and_writes_nothing(
    kv_helpers: tuple[wasmtime.Store, wasmtime.Instance],
) -> None:
    store, instance = kv_helpers
    refuse = instance.exports(store)["refuse"]
    results = [refuse(store, which) for which in range(8)]
    assert results == [
        ErrorCode.INVALID,  # an unknown op
        ErrorCode.INVALID,  # an empty key
        ErrorCode.INVALID,  # a key over 511 bytes
        ErrorCode.INVALID,  # a delete with a value
        ErrorCode.TOOBIG,  # a value over 1 MiB
        ErrorCode.TOOBIG,  # one byte more than the buffer holds
        ErrorCode.TOOBIG,  # used past the buffer
        ErrorCode.TOOBIG,  # past the 8 MiB batch, whatever the buffer
    ]
    assert _guest_bytes(kv_helpers, "spare_at", 64) == bytes(64), "a refusal writes nothing"
    assert refuse(store, 8) == 64, "a record that just fits"


@needs_zig
@pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)
def test_header_kv_list_next_reads_the_records_kv_list_writes(
    kv_helpers: tuple[wasmtime.Store, wasmtime.Instance],
) -> None:
    store, instance = kv_helpers
    exports = instance.exports(store)
    keys = [b"a", b"b\x00c", b"k" * MAX_KEY_BYTES]
    # The layout rusm.kv_list writes: a u16 little-endian length, then the key.
    records = b"".join(struct.pack("<H", len(key)) + key for key in keys)
    exports["memory"].write(store, records, exports["listing_at"](store))
    size = exports["read_list"](store, len(keys))
    seen = _guest_bytes(kv_helpers, "seen_at", size)
    assert seen == b",".join(keys) + b",|" + keys[-1]
    assert exports["read_list"](store, 0) == 0
    assert exports["read_list"](store, ErrorCode.NOSTORE) == 0, "an error lists nothing"


# ── examples ────────────────────────────────────────────────────────────────


@needs_zig
@pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)
def test_example_hello_builds_and_exports_run_and_memory(tmp_path: Path) -> None:
    module = compile_guest(HELLO, tmp_path / "hello.wasm")
    exports = {item.name: item.type for item in module.exports}
    run = exports.get("run")
    assert isinstance(run, wasmtime.FuncType)
    assert (list(run.params), list(run.results)) == ([], [])
    assert isinstance(exports.get("memory"), wasmtime.MemoryType)
    hello = load_manifest(HELLO_APP / "rusm.toml").components["hello"]
    assert_importable(module, hello.profile)


def test_example_hello_is_resident_and_its_log_lines_show() -> None:
    manifest = load_manifest(HELLO_APP / "rusm.toml")
    assert manifest.components["hello"].resident
    assert manifest.log.level in {ConfigLogLevel.INFO, ConfigLogLevel.DEBUG}


def test_docs_wat_example_imports_match_abi() -> None:
    (source,) = doc_blocks("wat")
    module = wasmtime.Module(wasmtime.Engine(), bytes(wasmtime.wat2wasm(source)))
    assert {item.name for item in module.exports} >= {"run", "memory"}
    for name, signature in rusm_imports(module).items():
        assert signature == abi_signatures()[name]


@needs_zig
@pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)
def test_docs_c_example_builds_under_its_documented_profile(tmp_path: Path) -> None:
    (source,) = doc_blocks("c", doc_sections()["C"])
    (manifest,) = doc_blocks("toml", doc_sections()["C"])
    (tmp_path / "rusm.toml").write_text(manifest, encoding="utf-8")
    boss = load_manifest(tmp_path / "rusm.toml").components["boss"]
    path = tmp_path / "boss.c"
    path.write_text(source, encoding="utf-8")
    assert_importable(compile_guest(path, tmp_path / "boss.wasm"), boss.profile)


@needs_zig
@pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)
def test_docs_routed_handler_example_builds_and_imports_only_inline_functions(
    tmp_path: Path,
) -> None:
    # The docs say this handler runs on the I/O thread: it must not import
    # anything that could block there.
    sections = doc_sections()
    (manifest,) = doc_blocks("toml", sections["Serving examples"])
    (source,) = doc_blocks("c", sections["A routed handler"])
    (tmp_path / "rusm.toml").write_text(manifest, encoding="utf-8")
    api = load_manifest(tmp_path / "rusm.toml").components["api"]
    path = tmp_path / "api.c"
    path.write_text(source, encoding="utf-8")
    module = compile_guest(path, tmp_path / "api.wasm", reactor=True)
    assert_importable(module, api.profile)
    assert func_exports(module)["show"] == ((), ("i32",))
    assert set(rusm_imports(module)) <= INLINE_FUNCTIONS
    assert not wasi_imports(module) & WASI_BLOCKING


@needs_zig
@pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)
def test_docs_storage_example_builds_and_runs_its_actions_on_guest_threads(
    tmp_path: Path,
) -> None:
    # The docs say these actions run as processes: kv is never inline.
    section = doc_sections()["Storage example"]
    (manifest,) = doc_blocks("toml", section)
    (source,) = doc_blocks("c", section)
    (tmp_path / "rusm.toml").write_text(manifest, encoding="utf-8")
    loaded = load_manifest(tmp_path / "rusm.toml")
    assert loaded.node.store is not None
    notes = loaded.components["notes"]
    path = tmp_path / "notes.c"
    path.write_text(source, encoding="utf-8")
    module = compile_guest(path, tmp_path / "notes.wasm", reactor=True)
    assert_importable(module, notes.profile)
    assert {"kv_get", "kv_set", "kv_list"} <= set(rusm_imports(module))
    assert not set(rusm_imports(module)) <= INLINE_FUNCTIONS
    routes = [route for serve in loaded.serve for route in serve.routes]
    exports = func_exports(module)
    for route in routes:
        assert route.component == "notes"
        assert exports.get(route.action) == ((), ("i32",)), route.action


@needs_zig
@pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)
def test_docs_websocket_example_builds_under_its_documented_profile(tmp_path: Path) -> None:
    sections = doc_sections()
    (manifest,) = doc_blocks("toml", sections["Serving examples"])
    (source,) = doc_blocks("c", sections["A WebSocket echo"])
    (tmp_path / "rusm.toml").write_text(manifest, encoding="utf-8")
    echo = load_manifest(tmp_path / "rusm.toml").components["echo"]
    path = tmp_path / "echo.c"
    path.write_text(source, encoding="utf-8")
    module = compile_guest(path, tmp_path / "echo.wasm")
    assert_importable(module, echo.profile)
    assert func_exports(module)["run"] == ((), ())


def test_makefile_builds_only_example_guests_without_an_entry_as_reactors() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    found = re.search(r"^ENTRY_RE\s*:=\s*(.+)$", makefile, re.MULTILINE)
    assert found, "Makefile: no ENTRY_RE := ... line"
    entry = re.compile(found.group(1), re.MULTILINE)
    has_entry = {
        source.stem: bool(entry.search(source.read_text())) for source in (HELLO, WEB, ECHO)
    }
    assert has_entry == {"hello": True, "web": False, "echo": True}


@needs_zig
@pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)
def test_example_routes_name_actions_the_web_reactor_exports(tmp_path: Path) -> None:
    manifest = load_manifest(HELLO_APP / "rusm.toml")
    routes = [route for serve in manifest.serve for route in serve.routes]
    assert {route.component for route in routes} == {"web"}
    module = compile_guest(WEB, tmp_path / "web.wasm", reactor=True)
    exports = func_exports(module)
    assert exports["_initialize"] == ((), ())
    assert "_start" not in exports
    for route in routes:
        assert exports.get(route.action) in {((), ()), ((), ("i32",))}, route.action
    assert_importable(module, manifest.components["web"].profile)


@needs_zig
@pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)
def test_example_websocket_listener_runs_the_echo_loop(tmp_path: Path) -> None:
    manifest = load_manifest(HELLO_APP / "rusm.toml")
    (ws,) = [serve for serve in manifest.serve if serve.protocol is Protocol.WS]
    assert ws.name == "echo"
    module = compile_guest(ECHO, tmp_path / "echo.wasm")
    assert func_exports(module)["run"] == ((), ())
    assert {"recv", "ws_send"} <= set(rusm_imports(module))
    assert_importable(module, manifest.components["echo"].profile)
