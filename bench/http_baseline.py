"""The baselines' servers for ``bench/http.py``: plain-Python ASGI and websockets.

Runs in: a server process of its own, started by ``bench/http.py``: a
uvicorn worker (``python -m uvicorn bench.http_baseline:app ...``) or the
WebSocket echo server (``python -m bench.http_baseline ws-echo PORT``).

- ``app``, the ASGI app: ``GET /`` answers ``hello world``
  (``text/plain; charset=utf-8``, rusm's default, with ``content-length``)
  as rusm's ``api#home`` does; ``GET /events`` streams ``EVENTS`` (or
  ``?n=COUNT``) server-sent events of ``SSE_DATA``, one
  ``http.response.body`` message with ``more_body=True`` each, so uvicorn
  sends each event as one chunk, as rusm's ``rusm.sse_event`` does.
- ``ws-echo``: ``websockets.asyncio.server.serve`` on uvloop (the loop
  rusm's workers run), sending every message back with the same type.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

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


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI app uvicorn serves."""
    if scope["type"] != "http":
        return
    if scope["method"] == "GET" and scope["path"] == "/":
        await send({"type": "http.response.start", "status": 200, "headers": _HELLO_HEADERS})
        await send({"type": "http.response.body", "body": HELLO})
    elif scope["method"] == "GET" and scope["path"] == "/events":
        await _events(scope, send)
    else:
        await send({"type": "http.response.start", "status": 404, "headers": _NOT_FOUND_HEADERS})
        await send({"type": "http.response.body", "body": b""})


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
