"""The AOT cache on real files: keys, atomic entries, verification, a private directory."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path

import pytest

from rusmd.wasm.cache import CacheError, CompileCache, default_cache_dir, verify
from rusmd.wasm.settings import engine_fingerprint

MODULE = b"\x00asm\x01\x00\x00\x00"
CWASM = b"\x7fELF compiled code " * 64


def stored(tmp_path: Path) -> tuple[CompileCache, str]:
    cache = CompileCache(tmp_path / "cache")
    key = cache.key(MODULE)
    cache.store(key, CWASM, source="/app/wasm/api.wasm")
    return cache, key


def entry_files(cache: CompileCache) -> list[str]:
    return sorted(p.name for p in cache.directory.iterdir())


def test_key_is_hex_sha256_and_changes_with_the_module_bytes(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path / "cache")

    key = cache.key(MODULE)

    assert len(key) == 64
    assert int(key, 16) >= 0
    assert cache.key(MODULE) == key
    assert cache.key(MODULE + b"\x00") != key


def test_key_of_a_module_compiled_as_it_is_is_what_it_always_was(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path / "cache")

    # Entries written before pre-initialisation existed stay valid.
    expected = hashlib.sha256(engine_fingerprint().encode() + b"\0" + MODULE).hexdigest()
    assert cache.key(MODULE) == expected
    assert cache.key(MODULE, "") == expected


def test_key_changes_with_pre_initialisation_and_with_wizers_version(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path / "cache")

    as_is = cache.key(MODULE)
    snapshot = cache.key(MODULE, "wizer 10.0.0 --init-func _initialize")
    upgraded = cache.key(MODULE, "wizer 10.0.1 --init-func _initialize")

    assert len({as_is, snapshot, upgraded}) == 3
    assert cache.key(MODULE, "wizer 10.0.0 --init-func _initialize") == snapshot


def test_lookup_reports_what_pre_initialisation_came_to(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path / "cache")
    key = cache.key(MODULE, "wizer 10.0.0 --init-func _initialize")
    cache.store(key, CWASM, source="/app/wasm/api.wasm", preinit="pre-initialized")

    entry = cache.lookup(key)

    assert entry is not None
    assert entry.preinit == "pre-initialized"


def test_sidecar_without_preinit_is_still_a_valid_entry(tmp_path: Path) -> None:
    cache, key = stored(tmp_path)
    sidecar = cache.sidecar_path(key)
    meta = json.loads(sidecar.read_bytes())
    del meta["preinit"]
    sidecar.write_text(json.dumps(meta))

    entry = cache.lookup(key)

    assert entry is not None
    assert entry.preinit == ""
    assert cache.last_problem == ""


def test_store_writes_a_private_cwasm_and_its_sidecar_and_no_temporary_files(
    tmp_path: Path,
) -> None:
    cache, key = stored(tmp_path)

    assert entry_files(cache) == [f"{key}.cwasm", f"{key}.json"]
    for name in entry_files(cache):
        assert stat.S_IMODE((cache.directory / name).stat().st_mode) == 0o600
    assert (cache.directory / f"{key}.cwasm").read_bytes() == CWASM
    sidecar = json.loads((cache.directory / f"{key}.json").read_text())
    assert sidecar["size"] == len(CWASM)
    assert sidecar["fingerprint"] == engine_fingerprint()
    assert sidecar["source"] == "/app/wasm/api.wasm"
    assert {"blake2b", "wasmtime", "created"} <= set(sidecar)


def test_lookup_returns_the_verified_entry(tmp_path: Path) -> None:
    cache, key = stored(tmp_path)

    entry = cache.lookup(key)

    assert entry is not None
    assert entry.path == cache.directory / f"{key}.cwasm"
    assert entry.size == len(CWASM)
    assert verify(str(entry.path), entry.digest)
    assert cache.last_problem == ""


def test_lookup_of_an_unknown_key_is_a_clean_miss(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path / "cache")

    assert cache.lookup(cache.key(MODULE)) is None
    assert cache.last_problem == ""


def test_truncated_cwasm_is_detected_removed_and_explained(tmp_path: Path) -> None:
    cache, key = stored(tmp_path)
    with open(cache.directory / f"{key}.cwasm", "r+b") as file:
        file.truncate(100)

    assert cache.lookup(key) is None
    assert cache.last_problem == f"is corrupt (size 100, expected {len(CWASM)})"
    assert entry_files(cache) == []


def test_flipped_byte_is_detected_by_the_digest_and_removed(tmp_path: Path) -> None:
    cache, key = stored(tmp_path)
    path = cache.directory / f"{key}.cwasm"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    assert cache.lookup(key) is None
    assert "blake2b" in cache.last_problem
    assert entry_files(cache) == []


def test_entry_of_another_engine_fingerprint_is_stale_and_removed(tmp_path: Path) -> None:
    cache, key = stored(tmp_path)
    sidecar_path = cache.directory / f"{key}.json"
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["fingerprint"] = "0123456789abcdef"
    sidecar_path.write_text(json.dumps(sidecar))

    assert cache.lookup(key) is None
    assert "another engine (fingerprint 0123456789abcdef" in cache.last_problem
    assert entry_files(cache) == []


def test_cwasm_without_sidecar_is_not_an_entry(tmp_path: Path) -> None:
    cache, key = stored(tmp_path)
    (cache.directory / f"{key}.json").unlink()

    assert cache.lookup(key) is None
    assert "no sidecar" in cache.last_problem
    assert entry_files(cache) == []


def test_sidecar_that_is_not_json_is_not_an_entry(tmp_path: Path) -> None:
    cache, key = stored(tmp_path)
    (cache.directory / f"{key}.json").write_text("{half")

    assert cache.lookup(key) is None
    assert "not valid JSON" in cache.last_problem
    assert entry_files(cache) == []


def test_store_over_a_corrupt_entry_makes_it_valid_again(tmp_path: Path) -> None:
    cache, key = stored(tmp_path)
    (cache.directory / f"{key}.cwasm").write_bytes(b"garbage")

    cache.store(key, CWASM, source="/app/wasm/api.wasm")

    entry = cache.lookup(key)
    assert entry is not None
    assert entry.size == len(CWASM)


def test_verify_fails_for_a_changed_or_missing_file(tmp_path: Path) -> None:
    cache, key = stored(tmp_path)
    entry = cache.lookup(key)
    assert entry is not None

    entry.path.write_bytes(CWASM[:-1] + b"!")
    assert not verify(str(entry.path), entry.digest)
    entry.path.unlink()
    assert not verify(str(entry.path), entry.digest)


def test_directory_and_missing_parents_are_created_mode_0700(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b" / "cache"

    CompileCache(directory)

    for path in (tmp_path / "a", tmp_path / "a" / "b", directory):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


def test_group_or_other_writable_directory_is_refused_naming_it(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    directory.mkdir()
    directory.chmod(0o777)

    with pytest.raises(CacheError) as caught:
        CompileCache(directory)

    assert str(directory) in str(caught.value)
    assert "0777" in str(caught.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a directory to another uid needs root")
def test_directory_owned_by_another_user_is_refused_naming_it(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 65534)

    with pytest.raises(CacheError) as caught:
        CompileCache(directory)

    assert str(directory) in str(caught.value)
    assert "uid 65534" in str(caught.value)


def test_a_file_where_the_directory_should_be_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    path.write_text("not a directory")

    with pytest.raises(CacheError, match="is not a directory"):
        CompileCache(path)


def test_opening_sweeps_stale_temporary_files_and_keeps_fresh_ones(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    CompileCache(directory)
    stale = directory / "abc.cwasm.123.deadbeef.tmp"
    fresh = directory / "abc.cwasm.456.cafef00d.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))

    CompileCache(directory)

    assert not stale.exists()
    assert fresh.exists()


def test_default_cache_dir_prefers_systemds_cache_directory(tmp_path: Path) -> None:
    environ = {"CACHE_DIRECTORY": "/var/cache/rusmd:/var/cache/other"}

    assert default_cache_dir(tmp_path, environ) == Path("/var/cache/rusmd")
    assert default_cache_dir(tmp_path, {}) == tmp_path / ".rusm" / "cache"
