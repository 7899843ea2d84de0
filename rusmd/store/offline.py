"""``rusmd kv``'s store: the node's file opened in a short-lived CLI process.

Runs in: the ``rusmd kv`` command (never the daemon's main process).

``OfflineStore.ask`` answers the same requests as a worker's ``kv``
query (``rusmd/worker/kv_queries.py``), with the same results and the
same refusals (bucket/key named, the same exit codes), so ``rusmd kv``
and ``rusmctl kv`` behave alike. Writes commit with ``KvStore.apply``:
there is one writer here, so no group committer.

The file is opened only when a request needs it, and reads never create
it: a ``get`` or ``list`` on a node that has never started finds nothing
rather than leaving behind a file owned by whoever ran the command (the
daemon's user may then be unable to open it).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import lmdb

from rusmd.abi import MAX_LIST_KEYS, ErrorCode
from rusmd.errors import EX_NOSUCH, EX_REFUSED, EX_UNAVAILABLE, EX_USAGE
from rusmd.store.kv import (
    KvError,
    KvStore,
    Op,
    Write,
    check_bucket,
    check_key,
    check_value,
)
from rusmd.store.kv_command import KvRefused


class OfflineStore:
    """The store file at ``path``, opened on first use; a context manager that closes it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._store: KvStore | None = None

    def __enter__(self) -> OfflineStore:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """One kv request's result (the worker's shape).

        Raises:
            KvRefused: A bad argument (EX_USAGE), a missing key (EX_NOSUCH),
                or a store that cannot be opened or written (EX_UNAVAILABLE).
        """
        try:
            return self._answer(request)
        except KvError as exc:
            raise KvRefused(str(exc), EX_USAGE) from None
        except (lmdb.Error, OSError) as exc:
            raise KvRefused(f"store {self.path}: {exc}", EX_UNAVAILABLE) from None

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        action = request["action"]
        bucket = os.fsencode(request["bucket"])
        check_bucket(bucket)
        if action == "list":
            prefix, after = _bytes(request["prefix_b64"]), _bytes(request["after_b64"])
            limit = min(int(request["limit"]), MAX_LIST_KEYS)
            store = self._open(create=False)
            keys = store.keys(bucket, prefix, after, limit) if store else []
            return {
                "bucket": bucket.decode(),
                "keys_b64": [_b64(key) for key in keys],
                "next_b64": _b64(keys[-1]) if len(keys) == limit else None,
            }
        key = _bytes(request["key_b64"])
        check_key(key)
        where = f"{bucket.decode()}/{key.decode('utf-8', 'backslashreplace')}"
        result: dict[str, Any] = {"bucket": bucket.decode(), "key_b64": _b64(key)}
        if action == "get":
            store = self._open(create=False)
            value = store.get(bucket, key) if store else None
            if value is None:
                raise KvRefused(f"{where}: no such key", EX_NOSUCH)
            return {**result, "value_b64": _b64(value)}
        if action == "set":
            value = _bytes(request["value_b64"])
            check_value(value)
            self._write(where, Write(bucket, ((Op.SET, key, value),)))
            return {**result, "bytes": len(value)}
        if action != "rm":
            raise KvRefused(f"unknown kv action {action!r} (get, set, list, rm)", EX_USAGE)
        if self._open(create=False) is None:
            raise KvRefused(f"{where}: no such key", EX_NOSUCH)
        self._write(where, Write(bucket, ((Op.DELETE, key, b""),), report_missing=True))
        return {**result, "removed": True}

    def _open(self, *, create: bool) -> KvStore | None:
        """The open store; None when it does not exist and ``create`` is False."""
        if self._store is None and (create or Path(self.path).exists()):
            self._store = KvStore(self.path)
        return self._store

    def _write(self, where: str, write: Write) -> None:
        store = self._open(create=True)
        assert store is not None
        (code,) = store.apply([write])
        if code == ErrorCode.NOTFOUND:
            raise KvRefused(f"{where}: no such key", EX_NOSUCH)
        if code == ErrorCode.LIMIT:
            raise KvRefused(f"{where}: the store holds its maximum of buckets", EX_REFUSED)


def _bytes(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
