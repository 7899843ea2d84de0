"""``python -m rusmd.node``: the node endpoint child the main process starts.

Runs in: node endpoint (a fresh interpreter; ``rusmd.main.endpoint``
starts it with ``--listen``, ``--socket``, ``--ticks`` and ``--parent``,
and the token in ``RUSM_NODE_TOKEN``).

Its stderr goes back to the main process, which logs each line as
``node endpoint: …``; a line's first word is its level. It exits 2 when
it cannot bind ``[node] listen`` (the main process restarts it after a
backoff), 0 on SIGTERM or when its parent is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import sys

from rusmd.node.auth import TOKEN_VARIABLE
from rusmd.node.server import Endpoint

_PR_SET_PDEATHSIG = 1


class _LevelFirst(logging.Formatter):
    """``warn text``: the level word the main process reads, then the message."""

    def format(self, record: logging.LogRecord) -> str:
        level = "error" if record.levelno >= logging.ERROR else "warn"
        return f"{level} {record.name}: {record.getMessage()}"


def _die_with_parent() -> None:
    """SIGTERM when the main process dies, even by SIGKILL (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the parent check in the loop still ends it, a second later


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    """Parse the flags the main process passes, bind, serve."""
    parser = argparse.ArgumentParser(prog="python -m rusmd.node")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--ticks", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent()
    if os.getppid() != args.parent:
        return 0  # the main process died before the prctl took hold
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelFirst())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    host, port = split_address(args.listen)
    endpoint = Endpoint(
        host,
        port,
        args.socket,
        ticks=args.ticks,
        token=os.environ.get(TOKEN_VARIABLE, ""),
        listen=args.listen,
    )
    try:
        asyncio.run(endpoint.run(args.parent))
    except OSError as exc:
        print(
            f"error cannot listen on {args.listen} ([node] listen): {exc.strerror or exc}",
            file=sys.stderr,
            flush=True,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
