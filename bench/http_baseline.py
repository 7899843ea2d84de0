"""The baselines' servers for ``bench/http.py``: plain-Python ASGI and websockets.

Runs in: a server process of its own, started by ``bench/http.py``: a
uvicorn worker (``python -m uvicorn bench.http_baseline:app ...``) or the
WebSocket echo server (``python -m bench.http_baseline ws-echo PORT``);
and the benchmark process, which builds the expected answers with the
same functions (``user_document``, ``item_answer``) and seeds the store
(``seed_store``).

- ``app``, the ASGI app: ``GET /`` answers ``hello world``
  (``text/plain; charset=utf-8``, rusm's default, with ``content-length``)
  as rusm's ``api#home`` does; ``GET /events`` streams ``EVENTS`` (or
  ``?n=COUNT``) server-sent events of ``SSE_DATA``, one
  ``http.response.body`` message with ``more_body=True`` each, so uvicorn
  sends each event as one chunk, as rusm's ``rusm.sse_event`` does.
- The workloads, each the same answer as rusm's C guest
  (``bench/guests/http_rest.c``, ``rusmd/node/guests/kv_get.c``), as
  ``application/json``:
  ``GET /users/ID`` reads the id from the path and the ``x-request-id``
  header and answers about 1 KB of JSON (``user_document``, built with
  ``json.dumps`` per request); ``POST /items`` reads the body whole,
  ``json.loads`` it and answers its ``name`` and size (``item_answer``);
  ``GET /kv/KEY`` answers the value of KEY in the bucket ``KV_BUCKET`` of
  the LMDB file named by ``$BENCH_KV_STORE``, with one read transaction
  per request. The file is opened on the first such request, in the
  worker that serves it, with the flags of rusm's own store
  (``rusmd/store/kv.py``): an environment must not cross a fork.
- ``ws-echo``: ``websockets.asyncio.server.serve`` on uvloop (the loop
  rusm's workers run), sending every message back with the same type.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import lmdb

HELLO = b"hello world"
EVENTS = 20_000
SSE_DATA = b"0123456789abcdef"
"""The payload of every event, rusm's and the baseline's alike."""

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_HELLO_HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"11")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_NOT_FOUND_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"0")]

BIO = "Writes small services and reads the logs they leave behind. " * 10
"""The bulk of a user document; ``bench/guests/http_rest.c`` has the same."""
# The refusals' bounds, as in bench/guests/http_rest.c.
MAX_ID_DIGITS = 18
MAX_REQUEST_ID_BYTES = 128
MAX_NAME_BYTES = 256
KV_BUCKET = b"bench"
KV_STORE_VARIABLE = "BENCH_KV_STORE"
"""The environment variable naming the baseline's LMDB file."""
# The flags of rusm's KvStore (rusmd/store/kv.py), so both read the same kind of store.
KV_OPEN_FLAGS: dict[str, Any] = {
    "subdir": False,
    "map_size": 64 << 20,
    "max_dbs": 1000,
    "max_readers": 4096,
    "sync": True,
    "metasync": True,
    "writemap": False,
    "map_async": False,
    "max_spare_txns": 0,
    "lock": True,
}

_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI app uvicorn serves."""
    if scope["type"] != "http":
        return
    if scope["method"] == "GET" and scope["path"] == "/":
        await send({"type": "http.response.start", "status": 200, "headers": _HELLO_HEADERS})
        await send({"type": "http.response.body", "body": HELLO})
    elif scope["method"] == "GET" and scope["path"].startswith("/users/"):
        await _json(send, *_user(scope))
    elif scope["method"] == "POST" and scope["path"] == "/items":
        await _json(send, *_item(await _body(receive)))
    elif scope["method"] == "GET" and scope["path"].startswith("/kv/"):
        await _json(send, *_kv_value(scope["path"][len("/kv/") :].encode()))
    elif scope["method"] == "GET" and scope["path"] == "/events":
        await _events(scope, send)
    else:
        await send({"type": "http.response.start", "status": 404, "headers": _NOT_FOUND_HEADERS})
        await send({"type": "http.response.body", "body": b""})


async def _json(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def user_document(user_id: int, request_id: str | None) -> bytes:
    """The answer to ``GET /users/ID``: about 1 KB of JSON."""
    return _JSON.encode(
        {
            "id": user_id,
            "request_id": request_id,
            "name": f"User {user_id}",
            "email": f"user{user_id}@example.com",
            "active": True,
            "roles": ["reader", "writer"],
            "created_at": "2026-01-01T00:00:00Z",
            "links": {"self": f"/users/{user_id}", "avatar": f"/users/{user_id}/avatar.png"},
            "bio": BIO,
        }
    ).encode()


def _user(scope: Scope) -> tuple[int, bytes]:
    digits = scope["path"][len("/users/") :]
    if not (0 < len(digits) <= MAX_ID_DIGITS and digits.isascii() and digits.isdigit()):
        return 404, b'{"error":"no such user"}'
    request_id = None
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            # rusm joins a repeated header's values with ", "; one is all wrk sends.
            if len(value) > MAX_REQUEST_ID_BYTES:
                return 400, b'{"error":"x-request-id over 128 bytes"}'
            request_id = value.decode("utf-8", "replace")
            break
    return 200, user_document(int(digits), request_id)


def item_answer(name: str, size: int) -> bytes:
    """The answer to ``POST /items`` whose body of ``size`` bytes names the item ``name``."""
    return _JSON.encode({"created": True, "name": name, "bytes": size}).encode()


def _item(body: bytes) -> tuple[int, bytes]:
    try:
        document = json.loads(body)
    except ValueError:
        return 400, b'{"error":"no name"}'
    name = document.get("name") if isinstance(document, dict) else None
    if not isinstance(name, str):
        return 400, b'{"error":"no name"}'
    if len(_JSON.encode(name).encode()) - 2 > MAX_NAME_BYTES:
        return 400, b'{"error":"name over 256 bytes"}'
    return 200, item_answer(name, len(body))


@functools.cache
def _kv_store() -> tuple[Any, Any]:
    """The environment and the bucket's handle, opened once per worker process."""
    env = lmdb.open(os.environ[KV_STORE_VARIABLE], **KV_OPEN_FLAGS)
    return env, env.open_db(KV_BUCKET, create=False)


def _kv_value(key: bytes) -> tuple[int, bytes]:
    if not key or b"/" in key:
        return 404, b'{"error":"no such key"}'
    env, db = _kv_store()
    with env.begin(db=db, buffers=False) as txn:
        value = txn.get(key)
    if value is None:
        return 404, b'{"error":"no such key"}'
    return 200, value


def seed_store(path: str, key: bytes, value: bytes) -> None:
    """Write ``value`` under ``key`` in ``KV_BUCKET`` of the LMDB file at ``path``."""
    env = lmdb.open(path, **KV_OPEN_FLAGS)
    try:
        db = env.open_db(KV_BUCKET)
        with env.begin(write=True, db=db) as txn:
            txn.put(key, value)
    finally:
        env.close()


async def _events(scope: Scope, send: Send) -> None:
    query = parse_qs(scope["query_string"].decode("latin-1"))
    count = int(query.get("n", [str(EVENTS)])[0])
    event = b"data: " + SSE_DATA + b"\n\n"
    await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
    for _ in range(count):
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def ws_echo(port: int) -> None:
    """Echo every WebSocket message on 127.0.0.1:``port`` until killed."""
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async with serve(echo, "127.0.0.1", port, compression=None) as server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "ws-echo" or not sys.argv[2].isdigit():
        print("usage: python -m bench.http_baseline ws-echo PORT", file=sys.stderr)
        sys.exit(2)
    import uvloop

    uvloop.run(ws_echo(int(sys.argv[2])))
