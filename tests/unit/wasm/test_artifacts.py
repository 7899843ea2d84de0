"""Resolving ``[components.<name>]`` to ``wasm/<name>.{qjsbc,js,wasm}`` with clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from rusmd.wasm.artifacts import ArtifactError, ArtifactKind, header_problem, resolve_artifact

CORE_MODULE = b"\x00asm\x01\x00\x00\x00"
COMPONENT = b"\x00asm\x0d\x00\x01\x00"


def put(app_dir: Path, name: str, data: bytes) -> Path:
    path = app_dir / "wasm" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_core_module_resolves_to_its_absolute_path(tmp_path: Path) -> None:
    path = put(tmp_path, "api.wasm", CORE_MODULE + b"\x00" * 4)

    artifact = resolve_artifact(tmp_path, "api")

    assert artifact.name == "api"
    assert artifact.path == path
    assert artifact.path.is_absolute()
    assert artifact.kind is ArtifactKind.WASM
    assert artifact.shown(tmp_path) == "wasm/api.wasm"


def test_no_artifact_names_every_file_looked_for(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as caught:
        resolve_artifact(tmp_path, "api")

    assert str(caught.value) == (
        "component api: no artifact (looked for wasm/api.qjsbc, wasm/api.js, wasm/api.wasm)"
    )


@pytest.mark.parametrize("suffix", ["qjsbc", "js"])
def test_javascript_artifact_is_refused_with_the_js_runtime_message(
    tmp_path: Path, suffix: str
) -> None:
    put(tmp_path, f"api.{suffix}", b"console.log('hi')")

    with pytest.raises(ArtifactError) as caught:
        resolve_artifact(tmp_path, "api")

    assert str(caught.value) == (
        f"component api: wasm/api.{suffix} is a JavaScript component; "
        "JavaScript components arrive with the JS runtime"
    )


def test_javascript_artifact_wins_over_a_wasm_of_the_same_name(tmp_path: Path) -> None:
    put(tmp_path, "api.js", b"export default {}")
    put(tmp_path, "api.wasm", CORE_MODULE)

    with pytest.raises(ArtifactError, match=r"wasm/api\.js is a JavaScript component"):
        resolve_artifact(tmp_path, "api")


def test_qjsbc_is_found_before_js(tmp_path: Path) -> None:
    put(tmp_path, "api.js", b"export default {}")
    put(tmp_path, "api.qjsbc", b"\x02bytecode")

    with pytest.raises(ArtifactError, match=r"wasm/api\.qjsbc is a JavaScript component"):
        resolve_artifact(tmp_path, "api")


def test_component_model_binary_is_refused_as_wasip2(tmp_path: Path) -> None:
    put(tmp_path, "api.wasm", COMPONENT + b"\x00" * 16)

    with pytest.raises(ArtifactError) as caught:
        resolve_artifact(tmp_path, "api")

    assert str(caught.value) == (
        "component api: wasm/api.wasm is a wasip2 component; rusm runs core wasm modules "
        "(wasip1) for now — build for wasm32-wasi (preview 1)"
    )


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00as", b"\x7fELF\x02\x01\x01\x00", b"(module)\n", b"\x00asm\x01\x00"],
    ids=["empty", "short-magic", "elf", "wat-text", "short-version"],
)
def test_non_wasm_file_is_refused_for_bad_magic(tmp_path: Path, data: bytes) -> None:
    put(tmp_path, "api.wasm", data)

    with pytest.raises(ArtifactError) as caught:
        resolve_artifact(tmp_path, "api")

    assert (
        str(caught.value) == "component api: wasm/api.wasm is not a wasm module (bad magic bytes)"
    )


def test_unknown_wasm_version_is_refused_naming_the_version(tmp_path: Path) -> None:
    put(tmp_path, "api.wasm", b"\x00asm\x02\x00\x00\x00")

    with pytest.raises(ArtifactError, match=r"wasm/api\.wasm .*unsupported version 0x2"):
        resolve_artifact(tmp_path, "api")


def test_unreadable_artifact_gives_the_os_reason(tmp_path: Path) -> None:
    (tmp_path / "wasm" / "api.wasm").mkdir(parents=True)

    with pytest.raises(ArtifactError) as caught:
        resolve_artifact(tmp_path, "api")

    assert str(caught.value) == "component api: cannot read wasm/api.wasm: Is a directory"


def test_dangling_symlink_is_reported_not_skipped(tmp_path: Path) -> None:
    (tmp_path / "wasm").mkdir()
    (tmp_path / "wasm" / "api.wasm").symlink_to(tmp_path / "nowhere.wasm")

    with pytest.raises(ArtifactError) as caught:
        resolve_artifact(tmp_path, "api")

    assert str(caught.value) == (
        "component api: cannot read wasm/api.wasm: No such file or directory"
    )


def test_header_problem_accepts_a_core_module_header() -> None:
    assert header_problem(CORE_MODULE + b"\x01\x04") == ""
