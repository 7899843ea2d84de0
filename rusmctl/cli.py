"""The ``rusmctl`` command line.

Runs in: rusmctl.

Exit codes follow sysexits: 0 ok, 1 the daemon refused, 2 usage,
3 no such pid/component, 69 daemon not reachable, 77 permission denied.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

EX_OK = 0
EX_UNAVAILABLE = 69
EX_NOPERM = 77

VERBS = ("status", "list", "info", "kill", "spawn", "restart", "reload", "stop", "profile", "logs")


def default_socket_path() -> Path:
    """``$RUNTIME_DIRECTORY/rusmd.sock`` under systemd, else ``./.rusm/rusmd.sock``."""
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0]) / "rusmd.sock"
    return Path.cwd() / ".rusm" / "rusmd.sock"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(prog="rusmctl", description="Control a running rusmd.")
    parser.add_argument("--socket", metavar="PATH", help="the control socket")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("verb", choices=VERBS)
    parser.add_argument("args", nargs="*")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rusmctl`` command."""
    args = build_parser().parse_args(argv)
    path = Path(args.socket) if args.socket else default_socket_path()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(path))
    except PermissionError:
        print(f"rusmctl: permission denied on {path}", file=sys.stderr)
        return EX_NOPERM
    except OSError as exc:
        print(f"rusmctl: cannot reach rusmd at {path}: {exc.strerror}", file=sys.stderr)
        return EX_UNAVAILABLE
    # TODO(#3): the control protocol; a socket that answers is not yet spoken to.
    print(f"rusmctl: {args.verb}: the control protocol lands with issue #3", file=sys.stderr)
    return EX_UNAVAILABLE
