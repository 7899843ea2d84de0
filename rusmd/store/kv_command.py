"""``kv get|set|list|rm``: the node store's command line, for both its clients.

Runs in: rusmctl (``rusmctl kv``, a running daemon) and the ``rusmd kv``
command (a stopped one); stdlib only.
It lives in the daemon's package so ``rusmd`` never imports its client;
``rusmctl`` imports it from here.

Both clients take the same arguments and print the same way; they differ
in who answers a request: a worker of the running daemon, or the store
opened in the ``rusmd kv`` process itself. A request and its result are
the worker's ``kv`` query (``rusmd/worker/kv_queries.py``): keys and
values travel base64-encoded (``key_b64``, ``value_b64``), since they are
bytes and JSON carries text.

Command-line text becomes bytes with ``os.fsencode``, so a key is exactly
the bytes typed (invalid UTF-8 included). ``VALUE`` may be ``@path`` (the
file's bytes) or ``@-`` (stdin). ``get`` prints the raw value, ``list``
one key per line; ``--json`` prints the result document instead.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from rusmd.abi import MAX_LIST_KEYS
from rusmd.errors import EX_USAGE, RusmError

# One request's result, or the refusal it raised (``KvRefused``).
Ask = Callable[[dict[str, Any]], dict[str, Any]]


class KvRefused(RusmError):
    """A kv request refused; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EX_USAGE) -> None:
        super().__init__(message)
        self.code = code


def add_kv_parsers(parser: argparse.ArgumentParser, parents: list[argparse.ArgumentParser]) -> None:
    """The get, set, list and rm subcommands of ``parser``, each with ``parents``' flags."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, summary: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=summary, description=summary, parents=parents)
        sub.add_argument("bucket", metavar="BUCKET", help="1-64 bytes of A-Z a-z 0-9 _ . -")
        return sub

    get = action("get", "print a key's value (the raw bytes, as cat does)")
    get.add_argument("key", metavar="KEY", help="the key (1-511 bytes)")
    put = action("set", "set a key's value (durable when the command returns)")
    put.add_argument("key", metavar="KEY", help="the key (1-511 bytes)")
    put.add_argument(
        "value", metavar="VALUE", help="the value, @FILE for a file's bytes, or @- for stdin"
    )
    keys = action("list", "the bucket's keys in order, one per line")
    keys.add_argument(
        "prefix", metavar="PREFIX", nargs="?", default="", help="only keys starting with this"
    )
    keys.add_argument(
        "--limit", type=positive_int, metavar="N", help="at most N keys (default: every key)"
    )
    keys.add_argument(
        "--after", default="", metavar="KEY", help="start after KEY (the last key of a page)"
    )
    remove = action("rm", "remove a key")
    remove.add_argument("key", metavar="KEY", help="the key (1-511 bytes)")


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (also rusmd's --cpus)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}")
    return value


def request(args: argparse.Namespace, stdin: BinaryIO) -> dict[str, Any]:
    """The kv request for parsed ``args`` (a list's first page).

    Raises:
        KvRefused: ``@path`` names a file that cannot be read.
    """
    document: dict[str, Any] = {"action": args.action, "bucket": args.bucket}
    if args.action == "list":
        document["prefix_b64"] = _b64(os.fsencode(args.prefix))
        document["after_b64"] = _b64(os.fsencode(args.after))
        document["limit"] = min(args.limit or MAX_LIST_KEYS, MAX_LIST_KEYS)
        return document
    document["key_b64"] = _b64(os.fsencode(args.key))
    if args.action == "set":
        document["value_b64"] = _b64(read_value(args.value, stdin))
    return document


def read_value(spec: str, stdin: BinaryIO) -> bytes:
    """``VALUE`` as bytes: ``@-`` reads stdin, ``@path`` a file, anything else is itself.

    Raises:
        KvRefused: The file cannot be read (names it and why).
    """
    if spec == "@-":
        return stdin.read()
    if spec.startswith("@"):
        path = spec[1:]
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError as exc:
            raise KvRefused(f"cannot read the value from {path}: {exc.strerror or exc}") from None
    return os.fsencode(spec)


def run(ask: Ask, args: argparse.Namespace, first: dict[str, Any], out: BinaryIO) -> None:
    """Send ``first`` (and, for list, the pages after it) through ``ask``; print the result.

    Raises:
        KvRefused: A request was refused (nothing is printed for it).
    """
    if args.action != "list":
        print_result(args.action, ask(first), args.json, out)
        return
    keys: list[str] = []
    last: dict[str, Any] = {}
    for last in _pages(ask, first, args.limit):
        if args.json:
            keys.extend(last["keys_b64"])
        else:
            print_result("list", last, False, out)
    if args.json:
        print_result("list", {**last, "keys_b64": keys}, True, out)
    elif last["next_b64"] is not None:
        # --limit stopped the listing; the keys on stdout stay one per line.
        after = shlex.quote(_show(last["next_b64"]))
        print(f"(--limit reached; more keys may follow: --after {after})", file=sys.stderr)


def _pages(ask: Ask, first: dict[str, Any], limit: int | None) -> Iterator[dict[str, Any]]:
    """Each page of a list, following ``next_b64`` until the last one or ``limit`` keys."""
    wanted = limit
    page_request = first
    while True:
        page = ask(page_request)
        yield page
        if wanted is not None:
            wanted -= len(page["keys_b64"])
        if page["next_b64"] is None or wanted == 0:
            return
        page_request = {
            **first,
            "after_b64": page["next_b64"],
            "limit": min(wanted or MAX_LIST_KEYS, MAX_LIST_KEYS),
        }


def print_result(action: str, result: dict[str, Any], as_json: bool, out: BinaryIO) -> None:
    """Print one result: the JSON document, or the value / keys / a line saying what changed."""
    if as_json:
        out.write(json.dumps(result, indent=2).encode() + b"\n")
    elif action == "get":
        out.write(base64.b64decode(result["value_b64"]))
    elif action == "list":
        for key in result["keys_b64"]:
            out.write(base64.b64decode(key) + b"\n")
    elif action == "set":
        size = result["bytes"]
        where = f"{result['bucket']}/{_show(result['key_b64'])}"
        out.write(f"set {where} ({size} byte{'' if size == 1 else 's'})\n".encode())
    else:
        out.write(f"removed {result['bucket']}/{_show(result['key_b64'])}\n".encode())
    out.flush()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _show(key_b64: str) -> str:
    return base64.b64decode(key_b64).decode("utf-8", "backslashreplace")
