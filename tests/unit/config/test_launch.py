"""Launch specs (``rusmctl spawn --module``): parsing and resolving, without a daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from rusmd.config.launch import (
    DEFAULT_ENTRYPOINT,
    LaunchError,
    ModuleMissing,
    ParamType,
    WasmType,
    capability,
    parse_spec,
    resolve,
    split_escaped,
    unescape,
)
from rusmd.config.model import BUILTIN_CAPABILITIES, BuiltinCapability, Capability


def test_spec_with_params_gives_typed_arguments_in_order() -> None:
    spec = parse_spec(
        "path=myproj/waf.wasm;entrypoint=init;capabilities=allow-network;"
        "params=utf8,u16;args=localhost,7000"
    )

    assert spec.path == "myproj/waf.wasm"
    assert spec.name == "waf.wasm"
    assert spec.entrypoint == "init"
    assert spec.capabilities == ("allow-network",)
    host, port = spec.arguments
    assert (host.kind, host.value, host.data, host.wasm_type) == (
        ParamType.UTF8,
        9,
        b"localhost",
        WasmType.I32,
    )
    assert (port.kind, port.value, port.data, port.wasm_type) == (
        ParamType.U16,
        7000,
        None,
        WasmType.I32,
    )


def test_spec_without_params_takes_typed_args() -> None:
    spec = parse_spec("path=x.wasm;args=u16:7000,buffer:6869,f64:2.5,i64:-3")

    assert [(a.kind, a.value) for a in spec.arguments] == [
        (ParamType.U16, 7000),
        (ParamType.BUFFER, 2),
        (ParamType.F64, 2.5),
        (ParamType.I64, -3),
    ]
    assert spec.arguments[1].data == b"hi"


def test_spec_defaults_entrypoint_start_no_capabilities_no_args() -> None:
    spec = parse_spec("path=x.wasm")

    assert (spec.entrypoint, spec.capabilities, spec.arguments) == (DEFAULT_ENTRYPOINT, (), ())
    assert DEFAULT_ENTRYPOINT == "start"


def test_unsigned_values_above_the_signed_range_arrive_as_twos_complement() -> None:
    spec = parse_spec("path=x.wasm;args=u32:4294967295,u64:18446744073709551615,u8:255")

    assert [(a.value, a.wasm_type) for a in spec.arguments] == [
        (-1, WasmType.I32),
        (-1, WasmType.I64),
        (255, WasmType.I32),
    ]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("i8:-128", True),
        ("i8:128", False),
        ("u8:-1", False),
        ("i16:32767", True),
        ("u16:65536", False),
        ("i32:-2147483649", False),
        ("u32:4294967296", False),
        ("i64:9223372036854775808", False),
        ("u64:-1", False),
        ("f32:3.5e38", False),
        ("f32:3.4e38", True),
        ("u16:0x1F90", True),
    ],
)
def test_values_are_checked_against_their_types_range(value: str, ok: bool) -> None:
    if ok:
        parse_spec(f"path=x.wasm;args={value}")
    else:
        with pytest.raises(LaunchError, match="out of range"):
            parse_spec(f"path=x.wasm;args={value}")


def test_escaped_separators_stay_in_values() -> None:
    spec = parse_spec(r"path=a\;b.wasm;args=utf8:x\,y\\z")

    assert spec.path == "a;b.wasm"
    assert spec.arguments[0].data == b"x,y\\z"
    assert split_escaped(r"a\,b,c", ",") == [r"a\,b", "c"]
    assert unescape("trailing\\") == "trailing\\"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("entrypoint=start", "path is missing"),
        ("path=", "path is missing"),
        ("path=x.wasm;log_uri=sel://x", "unknown key 'log_uri' (valid: path, entrypoint"),
        ("path=x.wasm;path=y.wasm", "key 'path' is given twice"),
        ("path=x.wasm;oops", "'oops' is not key=value"),
        ("path=x.wasm;params=utf8,u17;args=a,1", "unknown type 'u17' for argument 2"),
        ("path=x.wasm;args=resource:14", "unknown type 'resource'"),
        ("path=x.wasm;params=utf8,u16;args=a", "params declares 2 type(s) but args gives 1"),
        ("path=x.wasm;params=utf8;args=a,b", "params declares 1 type(s) but args gives 2"),
        ("path=x.wasm;args=7000", "args value 1 ('7000') has no type"),
        ("path=x.wasm;args=u16:port", "u16 value 'port' is not an integer"),
        ("path=x.wasm;args=f64:fast", "f64 value 'fast' is not a number"),
        ("path=x.wasm;args=buffer:6g", "buffer value '6g' is not hex"),
        ("path=x.wasm;args=" + ",".join(["u8:1"] * 65), "65 args (at most 64)"),
    ],
)
def test_bad_spec_text_is_refused_naming_the_key_or_value(text: str, message: str) -> None:
    with pytest.raises(LaunchError) as caught:
        parse_spec(text)

    assert message in str(caught.value)
    assert str(caught.value).startswith("--module: ")


def test_path_is_resolved_inside_the_app_dir(tmp_path: Path) -> None:
    (tmp_path / "mods").mkdir()
    module = tmp_path / "mods" / "x.wasm"
    module.write_bytes(b"\0asm")

    relative = resolve(parse_spec("path=mods/x.wasm"), tmp_path, {})
    absolute = resolve(parse_spec(f"path={module}"), tmp_path, {})

    assert relative.module == module.resolve()
    assert absolute.module == module.resolve()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../x.wasm", "has a '..' segment"),
        ("mods/../mods/x.wasm", "has a '..' segment"),
        ("/etc/hostname", "is outside the app dir"),
        ("escape.wasm", "is outside the app dir"),
    ],
)
def test_paths_leaving_the_app_dir_are_refused(tmp_path: Path, path: str, message: str) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (tmp_path / "outside.wasm").write_bytes(b"\0asm")
    (app / "escape.wasm").symlink_to(tmp_path / "outside.wasm")

    with pytest.raises(LaunchError, match=message):
        resolve(parse_spec(f"path={path}"), app, {})


def test_missing_module_is_its_own_error(tmp_path: Path) -> None:
    with pytest.raises(ModuleMissing, match=r"no module at 'nosuch\.wasm'"):
        resolve(parse_spec("path=nosuch.wasm"), tmp_path, {})


def test_no_capabilities_is_sandboxed() -> None:
    assert (
        capability(parse_spec("path=x.wasm"), {})
        == BUILTIN_CAPABILITIES[BuiltinCapability.SANDBOXED]
    )


def test_grant_names_add_to_the_base_profile() -> None:
    granted = capability(parse_spec("path=x.wasm;capabilities=allow-spawn,allow-storage"), {})

    assert granted.allow_spawn and granted.allow_storage
    assert not (granted.allow_network or granted.allow_stdio or granted.allow_process_control)
    assert granted.max_memory_mb == 64
    assert granted.name == "sandboxed+allow-spawn+allow-storage"


def test_a_profile_name_is_the_base_and_the_manifests_own_are_known() -> None:
    custom = Capability(name="big", max_memory_mb=512)

    trusted = capability(parse_spec("path=x.wasm;capabilities=trusted"), {})
    big = capability(parse_spec("path=x.wasm;capabilities=big,allow-network"), {"big": custom})

    assert trusted == BUILTIN_CAPABILITIES[BuiltinCapability.TRUSTED]
    assert (big.max_memory_mb, big.allow_network, big.name) == (512, True, "big+allow-network")


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ("allow-everything", "unknown capability 'allow-everything' (valid: allow-network"),
        ("NetHttpsAccept", "unknown capability 'NetHttpsAccept'"),
        ("trusted,sandboxed", "names two profiles, 'trusted' and 'sandboxed'"),
    ],
)
def test_bad_capabilities_are_refused(names: str, message: str) -> None:
    with pytest.raises(LaunchError, match=message.replace("(", r"\(")):
        capability(parse_spec(f"path=x.wasm;capabilities={names}"), {})
