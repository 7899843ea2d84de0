"""``rusmctl kv`` in a worker: get, set, list and rm against the node store.

Runs in: worker, on a short-lived thread per query (a write waits for
its commit; the loop must not).

Keys and values travel base64-encoded (``key_b64``, ``value_b64``): they
are bytes, and JSON carries text. A query's answer is what ``rusmctl``
prints; every refusal names the bucket and key.
"""

from __future__ import annotations

import base64
from typing import Any

from rusmd.abi import MAX_LIST_KEYS, ErrorCode
from rusmd.errors import EX_NOSUCH, EX_REFUSED, EX_UNAVAILABLE, EX_USAGE, RusmError
from rusmd.store.committer import GroupCommitter
from rusmd.store.kv import (
    KvError,
    KvStore,
    Op,
    Write,
    check_bucket,
    check_key,
    check_value,
)


class QueryError(RusmError):
    """The query is refused; ``code`` is rusmctl's exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _bytes(args: dict[str, Any], name: str) -> bytes:
    try:
        return base64.b64decode(str(args.get(name, "")), validate=True)
    except ValueError:
        raise QueryError(f"{name} is not base64", EX_USAGE) from None


def _show(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def run_kv(store: KvStore, committer: GroupCommitter, args: dict[str, Any]) -> dict[str, Any]:
    """One ``kv`` query's result.

    Raises:
        QueryError: A bad argument, a missing key, or a failed write.
    """
    action = str(args.get("action", ""))
    bucket = str(args.get("bucket", "")).encode()
    try:
        check_bucket(bucket)
        if action == "list":
            return _list(store, bucket, args)
        key = _bytes(args, "key_b64")
        check_key(key)
        if action == "get":
            value = store.get(bucket, key)
            if value is None:
                raise QueryError(f"{bucket.decode()}/{_show(key)}: no such key", EX_NOSUCH)
            return {
                "bucket": bucket.decode(),
                "key_b64": base64.b64encode(key).decode(),
                "value_b64": base64.b64encode(value).decode(),
            }
        written = b""
        if action == "set":
            written = _bytes(args, "value_b64")
            check_value(written)
            code = committer.write(Write(bucket, ((Op.SET, key, written),)))
        elif action == "rm":
            code = committer.write(Write(bucket, ((Op.DELETE, key, b""),), report_missing=True))
        else:
            raise QueryError(f"unknown kv action {action!r} (get, set, list, rm)", EX_USAGE)
    except KvError as exc:
        raise QueryError(str(exc), EX_USAGE) from None
    where = f"{bucket.decode()}/{_show(key)}"
    if code == ErrorCode.NOTFOUND:
        raise QueryError(f"{where}: no such key", EX_NOSUCH)
    if code == ErrorCode.LIMIT:
        raise QueryError(f"{where}: the store holds its maximum of buckets", EX_REFUSED)
    if code != ErrorCode.OK:
        raise QueryError(f"{where}: the write failed (see the daemon log)", EX_UNAVAILABLE)
    result: dict[str, Any] = {"bucket": bucket.decode(), "key_b64": args["key_b64"]}
    if action == "set":
        result["bytes"] = len(written)
    else:
        result["removed"] = True
    return result


def _list(store: KvStore, bucket: bytes, args: dict[str, Any]) -> dict[str, Any]:
    prefix = _bytes(args, "prefix_b64")
    after = _bytes(args, "after_b64")
    limit = int(args.get("limit", MAX_LIST_KEYS))
    if not 0 < limit <= MAX_LIST_KEYS:
        raise QueryError(f"limit must be 1-{MAX_LIST_KEYS}", EX_USAGE)
    keys = store.keys(bucket, prefix, after, limit)
    return {
        "bucket": bucket.decode(),
        "keys_b64": [base64.b64encode(key).decode() for key in keys],
        # Pass as after_b64 for the next page; null when this page was the last.
        "next_b64": base64.b64encode(keys[-1]).decode() if len(keys) == limit else None,
    }
