"""The AOT compile cache: ``.cwasm`` files rusmd wrote, checked before every load.

Runs in: any (the compile child writes entries, workers verify them; no
wasmtime here, so the main process may create and check the directory).

``Module.deserialize_file`` trusts its input completely: crafted bytes
are arbitrary code. So rusmd deserializes only files it wrote itself,
into a directory only it can write:

- The directory is created mode 0700 (its missing parents too) and is
  refused when another user owns it or it is group- or other-writable.
- An entry is ``<key>.cwasm`` plus a sidecar ``<key>.json``
  ``{"size", "blake2b", "wasmtime", "fingerprint", "source", "created",
  "preinit"}`` (``preinit``: what pre-initialisation came to, reported
  again on a hit; older sidecars without it stay valid).
  Both are written to a private temporary file (``O_EXCL``, mode 0600),
  fsynced and renamed into place, the sidecar last: a crash leaves either
  no entry or a whole one, never a half-written file under a final name.
- ``lookup`` re-checks the sidecar against the file (size, blake2b,
  engine fingerprint); a bad entry is removed and ``last_problem`` says
  why, so the caller logs it and rebuilds. Workers call ``verify`` on the
  exact file right before deserializing it.

The key is sha256 over the engine fingerprint and the module bytes: the
fingerprint covers the wasmtime version, ``ENGINE_SETTINGS``, the memory layout and
``abi.ABI_VERSION``, so an upgrade never loads stale machine code. A
module that is pre-initialised (``rusmd.wasm.preinit``) adds the
snapshot's other inputs, Wizer's version and flags: a changed
``pre-initialize`` setting or a Wizer upgrade compiles again, while the
key of a module compiled as it is stays what it always was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rusmd.errors import RusmError
from rusmd.wasm.settings import FULL_LAYOUT, MemoryLayout, engine_fingerprint, wasmtime_version

CWASM_SUFFIX = ".cwasm"
SIDECAR_SUFFIX = ".json"
TMP_SUFFIX = ".tmp"
# A temporary file this old belongs to a writer that died; younger ones
# may be another rusmd's write in progress.
STALE_TMP_S = 3600.0
# A sidecar is a few hundred bytes; a huge one is not ours.
MAX_SIDECAR_BYTES = 64 * 1024
# blake2b digest size: 256 bits is plenty to detect corruption.
DIGEST_BYTES = 32
_READ_CHUNK_BYTES = 1 << 20


class CacheError(RusmError):
    """The cache directory cannot be trusted or written (the message names it)."""


@dataclass(frozen=True)
class CacheEntry:
    """One verified cache entry.

    Attributes:
        path: Absolute path of the ``.cwasm`` file.
        digest: blake2b hex digest of its bytes (what ``verify`` checks).
        size: Its size in bytes.
        preinit: What pre-initialisation came to, as the compile event
            says it (``pre-initialized``, ``skipped: …``). Optional;
            defaults to "" (not recorded).
    """

    path: Path
    digest: str
    size: int
    preinit: str = ""


def file_digest(path: str | Path) -> str:
    """blake2b hex digest of a file's bytes, read in chunks."""
    hasher = hashlib.blake2b(digest_size=DIGEST_BYTES)
    with open(path, "rb") as file:
        while chunk := file.read(_READ_CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


def verify(path: str, digest: str) -> bool:
    """Whether the file at ``path`` still has blake2b ``digest``.

    Workers call this right before ``Module.deserialize_file``: a file
    changed since the compile step (disk corruption, a second writer) is
    never loaded. An unreadable file does not verify.
    """
    try:
        return file_digest(path) == digest
    except OSError:
        return False


def default_cache_dir(app_dir: Path, environ: Mapping[str, str]) -> Path:
    """Where the compile cache lives for ``app_dir``.

    ``$CACHE_DIRECTORY`` under systemd (``CacheDirectory=``; its first path
    when several are set), else ``<app dir>/.rusm/cache``.
    """
    configured = environ.get("CACHE_DIRECTORY", "")
    if configured:
        return Path(configured.split(":")[0])
    return Path(app_dir) / ".rusm" / "cache"


class CompileCache:
    """A directory of ``.cwasm`` entries keyed by module content and engine.

    Args:
        directory: The cache directory; created mode 0700 when missing.
        layout: The memory layout the entries are compiled for (part of
            the key). Optional; defaults to ``FULL_LAYOUT``.

    Raises:
        CacheError: The directory cannot be created, another user owns it,
            or group or others may write it.

    Attributes:
        directory: The directory, absolute.
        last_problem: Why the last ``lookup`` found no usable entry although
            one was there ("" after a hit or a clean miss), phrased to follow
            "cache entry": ``is corrupt (size 1234, expected 5678)``.
    """

    def __init__(self, directory: Path, layout: MemoryLayout = FULL_LAYOUT) -> None:
        self.directory = Path(directory).absolute()
        self.fingerprint = engine_fingerprint(layout)
        self.last_problem = ""
        _make_private_dirs(self.directory)
        _check_private_dir(self.directory)
        self._sweep_stale_tmp()

    def key(self, wasm: bytes, preinit: str = "") -> str:
        """The entry key of a module: sha256 hex over the engine fingerprint and its bytes.

        Args:
            wasm: The module as the artifact holds it.
            preinit: The snapshot's other inputs (``preinit.snapshot_inputs``)
                when the module is pre-initialised before compiling. Optional;
                defaults to "" (compiled as it is: the key is unchanged).
        """
        hasher = hashlib.sha256()
        hasher.update(self.fingerprint.encode())
        hasher.update(b"\0")
        if preinit:
            hasher.update(f"preinit {preinit}".encode())
            hasher.update(b"\0")
        hasher.update(wasm)
        return hasher.hexdigest()

    def cwasm_path(self, key: str) -> Path:
        """Where the compiled code of ``key`` lives."""
        return self.directory / f"{key}{CWASM_SUFFIX}"

    def sidecar_path(self, key: str) -> Path:
        """Where the sidecar of ``key`` lives."""
        return self.directory / f"{key}{SIDECAR_SUFFIX}"

    def lookup(self, key: str) -> CacheEntry | None:
        """The verified entry of ``key``, or None.

        A bad entry (truncated, corrupt, from another engine, without a
        valid sidecar, not a private regular file) is removed, and
        ``last_problem`` says what was wrong with it.
        """
        self.last_problem = ""
        cwasm = self.cwasm_path(key)
        sidecar = self.sidecar_path(key)
        if not cwasm.exists() and not sidecar.exists():
            return None
        entry, problem = self._check(cwasm, sidecar)
        if entry is None:
            self.last_problem = problem
            self._remove(key)
        return entry

    def store(self, key: str, data: bytes, source: str, preinit: str = "") -> CacheEntry:
        """Write ``data`` as the entry of ``key``, atomically; the sidecar last.

        Args:
            key: From ``key``.
            data: The serialized module.
            source: The artifact it was compiled from (recorded, for operators).
            preinit: What pre-initialisation came to (reported again on a
                hit). Optional; defaults to "".

        Raises:
            CacheError: The directory could not be written (full disk,
                read-only file system); names the directory.
        """
        digest = hashlib.blake2b(data, digest_size=DIGEST_BYTES).hexdigest()
        sidecar = {
            "size": len(data),
            "blake2b": digest,
            "wasmtime": wasmtime_version(),
            "fingerprint": self.fingerprint,
            "source": source,
            "created": time.time(),
            "preinit": preinit,
        }
        try:
            # An old sidecar must never vouch for the new file, even briefly.
            with contextlib.suppress(FileNotFoundError):
                self.sidecar_path(key).unlink()
            self._write_atomic(self.cwasm_path(key), data)
            encoded = json.dumps(sidecar, sort_keys=True).encode()
            self._write_atomic(self.sidecar_path(key), encoded)
            _fsync_dir(self.directory)
        except OSError as exc:
            raise CacheError(
                f"cannot write the compile cache {self.directory}: {exc.strerror or exc}"
            ) from None
        return CacheEntry(path=self.cwasm_path(key), digest=digest, size=len(data), preinit=preinit)

    # ── internals ───────────────────────────────────────────────────────

    def _check(self, cwasm: Path, sidecar: Path) -> tuple[CacheEntry | None, str]:
        meta, problem = self._read_sidecar(sidecar)
        if meta is None:
            return None, problem
        try:
            info = os.lstat(cwasm)
        except FileNotFoundError:
            return None, "has a sidecar but no .cwasm file"
        problem = _file_problem(info)
        if problem:
            return None, problem
        if meta["fingerprint"] != self.fingerprint:
            return None, (
                f"was built for another engine (fingerprint {meta['fingerprint']}, "
                f"expected {self.fingerprint})"
            )
        if info.st_size != meta["size"]:
            return None, f"is corrupt (size {info.st_size}, expected {meta['size']})"
        try:
            digest = file_digest(cwasm)
        except OSError as exc:
            return None, f"cannot be read ({exc.strerror or exc})"
        if digest != meta["blake2b"]:
            return None, "is corrupt (its blake2b digest does not match the sidecar)"
        preinit = meta.get("preinit")
        return CacheEntry(
            path=cwasm,
            digest=digest,
            size=info.st_size,
            preinit=preinit if isinstance(preinit, str) else "",
        ), ""

    def _read_sidecar(self, sidecar: Path) -> tuple[dict[str, object] | None, str]:
        try:
            info = os.lstat(sidecar)
        except FileNotFoundError:
            return None, "has no sidecar (an interrupted write)"
        problem = _file_problem(info)
        if problem:
            return None, f"sidecar {problem}"
        if info.st_size > MAX_SIDECAR_BYTES:
            return None, f"sidecar is {info.st_size} bytes, more than a sidecar ever is"
        try:
            meta = json.loads(sidecar.read_bytes())
        except (OSError, ValueError):
            return None, "has an unreadable sidecar (not valid JSON)"
        if (
            not isinstance(meta, dict)
            or not isinstance(meta.get("size"), int)
            or not isinstance(meta.get("blake2b"), str)
            or not isinstance(meta.get("fingerprint"), str)
        ):
            return None, "has a sidecar without size, blake2b and fingerprint"
        return meta, ""

    def _remove(self, key: str) -> None:
        for path in (self.sidecar_path(key), self.cwasm_path(key)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _write_atomic(self, final: Path, data: bytes) -> None:
        tmp = final.with_name(f"{final.name}.{os.getpid()}.{os.urandom(4).hex()}{TMP_SUFFIX}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def _sweep_stale_tmp(self) -> None:
        cutoff = time.time() - STALE_TMP_S
        with contextlib.suppress(OSError):
            for path in self.directory.glob(f"*{TMP_SUFFIX}"):
                with contextlib.suppress(OSError):
                    if path.lstat().st_mtime < cutoff:
                        path.unlink()


def _make_private_dirs(directory: Path) -> None:
    try:
        missing: list[Path] = []
        for candidate in (directory, *directory.parents):
            if candidate.exists() or candidate.is_symlink():
                break
            missing.append(candidate)
        for path in reversed(missing):
            # Another rusmd may make it meanwhile; it is checked afterwards.
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o700)
    except OSError as exc:
        raise CacheError(
            f"cannot create the compile cache {directory}: {exc.strerror or exc}"
        ) from None


def _check_private_dir(directory: Path) -> None:
    try:
        info = os.stat(directory)
    except OSError as exc:
        raise CacheError(f"compile cache {directory}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise CacheError(f"compile cache {directory} is not a directory")
    if info.st_uid != os.geteuid():
        raise CacheError(
            f"compile cache {directory} is owned by uid {info.st_uid}, not rusmd's "
            f"uid {os.geteuid()}; rusmd loads only code it wrote into a directory "
            "only it can write"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheError(
            f"compile cache {directory} is writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); rusmd loads only code it wrote "
            "into a directory only it can write: chmod 700 it or delete it"
        )


def _file_problem(info: os.stat_result) -> str:
    """Why an entry file cannot be trusted ("" when it can)."""
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_uid != os.geteuid():
        return f"is owned by uid {info.st_uid}, not rusmd's"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
    return ""


def _fsync_dir(directory: Path) -> None:
    # The renames are durable only once the directory itself is synced.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
