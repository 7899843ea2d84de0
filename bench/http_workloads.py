"""The HTTP workloads of ``bench/http.py``: what wrk sends, what must come back.

Runs in: the benchmark process.

Each workload is one route that rusmd serves from a guest and the
baseline's ASGI app (``bench/http_baseline.py``) serves in Python, with
the same answer:

- ``hello``: ``GET /`` answering ``hello world`` (the WAT ``api#home``).
- ``users``: ``GET /users/:id`` with an ``X-Request-Id`` header, answering
  about 1 KB of JSON with both (``rest#user``, C). wrk cycles through
  ``USER_IDS`` ids, each with its own request id, from requests prepared
  once in its Lua ``init``: more distinct paths than rusmd's route cache
  holds (``RESOLVED_CACHE_SIZE``, 4,096), so each request is routed
  through the table, as a users API with many users would be.
- ``items``: ``POST /items`` with a JSON body of ``ITEM_BODY_BYTES``
  (4,096), answering the body's top-level ``name`` and its size
  (``rest#create_item``, C); the baseline ``json.loads`` the body.
- ``kv``: ``GET /kv/:key`` answering the ~200-byte value of ``KV_KEY``
  from one store read (``kv#get``, C, ``rusm.kv_get``; the baseline: one
  py-lmdb read transaction). ``seed`` writes it into both stores. The
  guest, its key and its value are the kv-storm scenario's
  (``rusmd/node/guests/kv_get.c``, ``rusmd.node.scenario_app``), so
  ``rusmd bench kv-storm`` measures the same handler.

``check`` asks a server once for each workload's sample request and
refuses a wrong status, content type or body, so a broken handler stops
the run instead of giving a fast figure made of errors.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.http_baseline import HELLO, item_answer, seed_store, user_document
from rusmd.node.scenario_app import KV_KEY, KV_VALUE

REPO = Path(__file__).resolve().parent.parent
GUESTS = REPO / "bench" / "guests"
# Component name → the C guest it runs: bench/guests/<file>.wasm, built by
# make from bench/guests/<file>.c (http_kv's source is the package's
# rusmd/node/guests/kv_get.c, the kv-storm scenario's guest).
C_COMPONENTS = {"rest": "http_rest", "kv": "http_kv"}
# A cold zig cache builds wasi-libc first (tens of seconds on 2 cores).
BUILD_TIMEOUT_S = 300
CHECK_TIMEOUT_S = 10.0

USER_IDS = 10_000
ITEM_BODY_BYTES = 4096
ITEM_NAME = "bench widget"

_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"


@dataclass(frozen=True)
class Workload:
    """One route under load, and the sample request ``check`` sends.

    Attributes:
        name: The name ``--workloads`` takes.
        title: What the table's heading says of it.
        path: The URL's path (a script may send others).
        script: A wrk Lua script, or "" for plain GETs of ``path``.
        method: The sample request's method.
        sample_path: The sample request's path.
        headers: The sample request's headers.
        body: The sample request's body.
        content_type: The answer's expected ``Content-Type``.
        expected: The answer's expected body.
    """

    name: str
    title: str
    path: str
    script: str
    method: str
    sample_path: str
    expected: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def item_body() -> bytes:
    """A JSON object of exactly ``ITEM_BODY_BYTES`` whose top-level name is ``ITEM_NAME``.

    A nested ``name`` and a string mentioning ``"name"`` come first, so a
    scan that does not follow strings and nesting answers the wrong one.
    """
    document = {
        "owner": {"name": "not the item's name", "team": "platform"},
        "note": 'a quoted "name": "decoy" inside a string',
        "name": ITEM_NAME,
        "tags": ["bench", "json", "post"],
        "attributes": {f"attribute_{i}": i * 7 for i in range(40)},
        "description": "",
    }
    padding = ITEM_BODY_BYTES - len(_compact(document))
    if padding < 0:
        raise ValueError(f"the item document is over {ITEM_BODY_BYTES} bytes before padding")
    document["description"] = "x" * padding
    return _compact(document)


def _compact(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _lua_string(text: str) -> str:
    """``text`` as a Lua long string, with a level its content does not close."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


USERS_SCRIPT = f"""-- GET /users/ID for {USER_IDS} ids in turn, each with its own request id;
-- the requests are formatted once, in init, so wrk's per-request cost is a lookup.
local requests = {{}}
local n = 0
function init(args)
  for i = 1, {USER_IDS} do
    requests[i] = wrk.format("GET", "/users/" .. i, {{["X-Request-Id"] = "bench-" .. i}})
  end
end
function request()
  n = n % {USER_IDS} + 1
  return requests[n]
end
"""


def _items_script(body: bytes) -> str:
    return (
        f"-- POST /items with the same {len(body)}-byte JSON body every time.\n"
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {_lua_string(body.decode())}\n"
    )


def workloads() -> dict[str, Workload]:
    """Every workload by name, in the order the table shows them."""
    body = item_body()
    return {
        "hello": Workload(
            name="hello",
            title="GET / 'hello world'",
            path="/",
            script="",
            method="GET",
            sample_path="/",
            expected=HELLO,
            content_type=_TEXT,
        ),
        "users": Workload(
            name="users",
            title=f"GET /users/:id + X-Request-Id, ~1 KB JSON, {USER_IDS:,} ids",
            path="/",
            script=USERS_SCRIPT,
            method="GET",
            sample_path="/users/42",
            headers={"X-Request-Id": "bench-42"},
            expected=user_document(42, "bench-42"),
            content_type=_JSON,
        ),
        "items": Workload(
            name="items",
            title=f"POST /items, {len(body):,}-byte JSON body, its name back",
            path="/items",
            script=_items_script(body),
            method="POST",
            sample_path="/items",
            headers={"Content-Type": "application/json"},
            body=body,
            expected=item_answer(ITEM_NAME, len(body)),
            content_type=_JSON,
        ),
        "kv": Workload(
            name="kv",
            title=f"GET /kv/:key, one store read, {len(KV_VALUE)}-byte value",
            path=f"/kv/{KV_KEY}",
            script="",
            method="GET",
            sample_path=f"/kv/{KV_KEY}",
            expected=KV_VALUE,
            content_type=_JSON,
        ),
    }


def build_guests() -> dict[str, bytes]:
    """The C components' modules, built by ``make`` (the Makefile holds the flags).

    Raises:
        RuntimeError: make failed; the message carries its output.
    """
    targets = [f"bench/guests/{source}.wasm" for source in C_COMPONENTS.values()]
    # PY: the compiler is the ziglang package of the interpreter running this.
    argv = ["make", "-s", "-C", str(REPO), f"PY={sys.executable}", *targets]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"make {' '.join(targets)} failed:\n{done.stdout}{done.stderr}")
    return {
        component: (GUESTS / f"{source}.wasm").read_bytes()
        for component, source in C_COMPONENTS.items()
    }


def seed(app_dir: Path, baseline_store: Path) -> None:
    """``KV_KEY`` = ``KV_VALUE`` in rusm's store (``rusmd kv set`` on the stopped
    node) and in the baseline's LMDB file.

    Raises:
        RuntimeError: ``rusmd kv set`` failed; the message carries its output.
    """
    argv = [sys.executable, "-m", "rusmd", "kv", "--config", "rusm.toml"]
    argv += ["set", "bench", KV_KEY, KV_VALUE.decode()]
    done = subprocess.run(argv, cwd=app_dir, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rusmd kv set bench {KV_KEY} failed:\n{done.stdout}{done.stderr}")
    seed_store(str(baseline_store), KV_KEY.encode(), KV_VALUE)


def check(server: str, port: int, workload: Workload) -> None:
    """Send ``workload``'s sample request; return if the answer is the expected one.

    Raises:
        RuntimeError: The status is not 200, or the content type or body differ;
            the message names the server, the request and what came back.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CHECK_TIMEOUT_S)
    try:
        conn.request(
            workload.method,
            workload.sample_path,
            body=workload.body or None,
            headers=workload.headers,
        )
        response = conn.getresponse()
        status, content_type, body = (
            response.status,
            response.getheader("content-type", ""),
            response.read(),
        )
    finally:
        conn.close()
    request = f"{workload.method} {workload.sample_path}"
    if status != 200 or body != workload.expected:
        raise RuntimeError(
            f"{server} answered {request} ({workload.name}) with {status}: {body[:300]!r}; "
            f"expected 200: {workload.expected[:300]!r}"
        )
    if content_type != workload.content_type:
        raise RuntimeError(
            f"{server} answered {request} ({workload.name}) as {content_type!r}, "
            f"not {workload.content_type!r}"
        )
