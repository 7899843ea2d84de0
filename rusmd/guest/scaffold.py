"""``rusmd new``: a new app directory that builds and serves as it is.

Runs in: the ``rusmd new`` command (a short-lived process).

``rusmd new NAME --protocol http|sse|ws`` writes ``NAME/`` with:

- ``rusm.toml``: one listener of that protocol on ``--port`` and one
  component ``NAME`` (capability ``sandboxed``: none of the templates
  needs a grant);
- ``components/NAME/NAME.c``: a handler (http: ``GET /`` as text and
  ``GET /hello/:name`` as JSON; sse: ``GET /ticks``, a few events) or a
  WebSocket echo (ws: its ``run`` loops on ``rusm_recv``);
- ``README.md`` (build, run, the URL to try) and ``.gitignore``
  (``wasm/``, ``.rusm/``: built modules and the runtime directory).

``cd NAME && rusmd build && rusmd`` serves it. A directory that exists and
is not empty is refused (nothing is written), so ``new`` never overwrites
anyone's work.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path

from rusmd.errors import RusmError

# The component name ends up in the manifest, a file name and the C sources'
# comments: the manifest's own rule for component names, and short enough
# to read.
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
DEFAULT_PORT = 8080
DEFAULT_NODE_PORT = 4000


class Lang(enum.StrEnum):
    """The language of the scaffolded component (``--lang``)."""

    C = "c"


class ScaffoldError(RusmError):
    """``rusmd new`` cannot write the app (a bad name, a non-empty directory)."""


HTTP_SOURCE = """\
/* {name}: an HTTP handler. Each request runs one action (an export named
 * in rusm.toml's routes) in a fresh instance; nothing survives a request.
 * rusm.h is the C SDK, on the include path of `rusmd build`. */
#include "rusm.h"

/* GET /: a greeting as text. */
RUSM_EXPORT(home) int home(void) {{
    rusm_respond_text(200, "Hello from {name}!\\n");
    return 0; /* non-zero: the action crashed, the client gets 502 */
}}

/* GET /hello/:name: a route parameter, answered as JSON. */
RUSM_EXPORT(greet) int greet(void) {{
    char who[128];
    if (rusm_param("name", who, sizeof who) < 0) {{
        rusm_respond_text(400, "that name is too long\\n");
        return 0;
    }}
    char out[512];
    rusm_json j;
    rusm_json_init(&j, out, sizeof out);
    rusm_json_object(&j);
    rusm_json_key(&j, "greeting");
    rusm_json_str(&j, "hello");
    rusm_json_key(&j, "name");
    rusm_json_str(&j, who);
    rusm_json_object_end(&j);
    if (rusm_json_finish(&j) < 0) {{
        return 1;
    }}
    rusm_respond_json(200, out);
    return 0;
}}
"""

SSE_SOURCE = """\
/* {name}: a Server-Sent Events stream. The action runs as a process for
 * the stream's life: it sends events, then returns to end the stream.
 * rusm.h is the C SDK, on the include path of `rusmd build`. */
#include <stdlib.h>

#include "rusm.h"

#define MAX_TICKS 100

/* GET /ticks: a `tick` event every 500 ms, 3 of them (?n=N: N, up to 100). */
RUSM_EXPORT(ticks) int ticks(void) {{
    char n_text[16];
    int n = 3;
    if (rusm_query_param("n", n_text, sizeof n_text) > 0) {{
        n = atoi(n_text);
        n = n < 1 ? 1 : n > MAX_TICKS ? MAX_TICKS : n;
    }}
    for (int i = 1; i <= n; i++) {{
        char data[64];
        snprintf(data, sizeof data, "{name} tick %d", i);
        if (rusm_sse_event_str("tick", data) == RUSM_ERR_CLOSED) {{
            return 0; /* the client went away */
        }}
        if (i < n) {{
            rusm_sleep(500);
        }}
    }}
    return 0;
}}
"""

WS_SOURCE = """\
/* {name}: a WebSocket echo. The listener starts one process per
 * connection; its run loop receives the client's messages from its
 * mailbox and sends each one back.
 * rusm.h is the C SDK, on the include path of `rusmd build`. */
#include "rusm.h"

/* A bigger message stays in the mailbox (RUSM_ERR_TOOBIG) and ends the echo. */
static char buf[65536];

RUSM_EXPORT(run) void run(void) {{
    rusm_set_label_str("{name} echo");
    rusm_header header = {{0}};
    for (;;) {{
        int32_t n = rusm_recv(&header, buf, sizeof buf, RUSM_FOREVER);
        if (n < 0 || header.kind == RUSM_KIND_CLOSED) {{
            return;
        }}
        if (header.kind == RUSM_KIND_FRAME &&
            rusm_ws_send(header.reason, buf, (size_t)n) == RUSM_ERR_CLOSED) {{
            return;
        }}
    }}
}}
"""

MANIFEST_HEAD = """\
# {name}: a rusm app. `rusmd build` compiles components/ into wasm/,
# `rusmd` serves it, `rusmd dev` rebuilds and reloads on every save.
[node]
listen = "127.0.0.1:{node_port}"     # the node endpoint

[log]
level = "info"                # guest log lines at info and above

[[serve]]
protocol = "{protocol}"
listen = "127.0.0.1:{port}"
"""

MANIFEST_SERVE = {
    "http": '\n[serve.routes]\n"GET /" = "{name}#home"\n"GET /hello/:name" = "{name}#greet"\n',
    "sse": '\n[serve.routes]\n"GET /ticks" = "{name}#ticks"\n',
    "ws": 'name = "{name}"              # one {name} process per connection\n',
}

MANIFEST_COMPONENT = """
[components.{name}]           # wasm/{name}.wasm, built from components/{name}/
capability = "sandboxed"      # logging, messages and serving need no grant
"""

TRY = {
    "http": "curl http://127.0.0.1:{port}/\ncurl http://127.0.0.1:{port}/hello/you",
    "sse": "curl -N http://127.0.0.1:{port}/ticks",
    "ws": "python -m websockets ws://127.0.0.1:{port}/",
}

README = """\
# {name}

A rusm app: one {protocol} component, `components/{name}/{name}.c`.

```sh
rusmd build     # components/{name}/*.c -> wasm/{name}.wasm
rusmd           # serve it: {scheme}://127.0.0.1:{port}/
rusmd dev       # serve it, rebuild and reload on every save
```

Try it:

```sh
{try_it}
```

The C SDK is `rusm.h` (shipped with rusmd, on the include path of
`rusmd build`); see the rusm docs: getting-started.md and writing-c.md.
"""

GITIGNORE = "# built modules and the runtime directory (control socket, AOT cache)\nwasm/\n.rusm/\n"

SOURCES = {"http": HTTP_SOURCE, "sse": SSE_SOURCE, "ws": WS_SOURCE}


def app_files(
    name: str, protocol: str, port: int = DEFAULT_PORT, node_port: int = DEFAULT_NODE_PORT
) -> dict[str, str]:
    """The new app's files: path relative to the app directory → text."""
    fields = {"name": name, "protocol": protocol, "port": port, "node_port": node_port}
    manifest = (
        MANIFEST_HEAD.format(**fields)
        + MANIFEST_SERVE[protocol].format(**fields)
        + MANIFEST_COMPONENT.format(**fields)
    )
    readme = README.format(
        **fields,
        scheme="ws" if protocol == "ws" else "http",
        try_it=TRY[protocol].format(**fields),
    )
    return {
        "rusm.toml": manifest,
        f"components/{name}/{name}.c": SOURCES[protocol].format(**fields),
        "README.md": readme,
        ".gitignore": GITIGNORE,
    }


def create_app(
    target: Path,
    protocol: str,
    *,
    lang: Lang = Lang.C,
    port: int = DEFAULT_PORT,
    node_port: int = DEFAULT_NODE_PORT,
) -> list[Path]:
    """Write a new app into ``target`` (its name is the directory's); the files written.

    Raises:
        ScaffoldError: The name is not a component name, or ``target``
            exists and is not an empty directory.
    """
    name = target.name
    if not _NAME.match(name):
        raise ScaffoldError(
            f"{name!r}: not an app name (a letter, then up to 62 letters, digits, _ or -)"
        )
    if lang is not Lang.C:
        raise ScaffoldError(f"--lang {lang}: only c is supported")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ScaffoldError(f"{target}: exists and is not empty; nothing was written")
    written = []
    for relative, text in app_files(name, protocol, port, node_port).items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
