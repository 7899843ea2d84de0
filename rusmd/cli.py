"""The ``rusmd`` command line: ``rusmd [flags]`` runs the app, ``rusmd check`` validates it.

Runs in: main; ``rusmd kv`` runs in its own short-lived process and
opens the store there (``rusmd.store`` is imported inside ``kv`` only:
the daemon's main process must never load lmdb).

``rusmd check`` validates the manifest, then compiles and checks every
component as a worker would load it (``rusmd.guest.check``);
``--config-only`` stops after the manifest.

``rusmd bench SCENARIO`` starts a daemon of its own on a temporary app
of the scenarios' components, runs one benchmark scenario against it and
prints its rate and latency (``rusmd.node.bench_command``; loaded only
when it runs). The app's C guest is compiled first, or taken from the
cache of an earlier run (``rusmd.guest.module_cache``); it exits 69
(EX_UNAVAILABLE) when it does not compile, or the scenario cannot run.

``rusmd kv get|set|list|rm`` reads and writes the manifest's ``[node]
store`` directly, for a node that is not running (``rusmctl kv`` asks a
running one); its arguments and output are ``rusmctl kv``'s.

``rusmd build`` compiles ``components/<name>/*.c`` into ``wasm/<name>.wasm``
(``rusmd.guest.builder``), only what changed; it exits 65 (EX_DATAERR)
when a source does not compile. ``rusmd new NAME`` writes a new app
(``rusmd.guest.scaffold``); it exits 73 (EX_CANTCREAT) for a bad name or a
directory that is not empty. ``rusmd dev`` runs the daemon as its child
and rebuilds and upgrades what changes (``rusmd.guest.dev``); it exits
with the daemon's code.

Exit codes follow sysexits: 0 ok, 2 usage, 3 (kv) no such key, 78
(EX_CONFIG) for an invalid manifest, a component that cannot run, or (kv)
a manifest that sets no store, 69 (EX_UNAVAILABLE) for a part that cannot
run here (kv: the store cannot be opened).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rusmd import __version__
from rusmd.config import Environment, Manifest, Overrides, load_environment, load_manifest
from rusmd.config.model import Profile, Protocol
from rusmd.config.render import render_errors_json
from rusmd.config.sizing import usable_cores
from rusmd.errors import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_DATAERR,
    EX_OK,
    EX_UNAVAILABLE,
    ConfigError,
    RusmError,
)
from rusmd.guest.builder import BuildError, build_app, report_line
from rusmd.guest.check import run_check
from rusmd.guest.module_cache import build_all
from rusmd.guest.scaffold import DEFAULT_NODE_PORT, DEFAULT_PORT, Lang, ScaffoldError, create_app
from rusmd.main.loop import MainProcess
from rusmd.node.scenario_app import C_GUESTS, DEFAULT_SECONDS, MAX_SECONDS, SCENARIO_NAMES
from rusmd.store import kv_command as kv_cli

DEFAULT_CONFIG = "rusm.toml"
_CONFIG = f"the manifest (default ./{DEFAULT_CONFIG})"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; ``rusmd`` with no subcommand runs the app."""
    parser = argparse.ArgumentParser(
        prog="rusmd",
        description="Run WebAssembly components as Erlang-style processes.",
    )
    parser.add_argument("--version", action="version", version=f"rusmd {__version__}")
    _add_manifest_flags(parser)
    parser.add_argument(
        "--socket", metavar="PATH", help="control socket (default <app dir>/.rusm/rusmd.sock)"
    )
    parser.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="log line format"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="validate the manifest, compile its components; exit 0 or 78",
        description=(
            "Validate the manifest, compile every component into the cache, "
            "check each one's imports against its grants and the ABI, and print "
            "the resolved config; exit 0 or 78."
        ),
    )
    _add_manifest_flags(check)
    check.add_argument("--json", action="store_true", help="print one JSON document")
    check.add_argument(
        "--config-only",
        action="store_true",
        help="validate the manifest alone; skip the components' artifacts",
    )
    _add_kv_parser(commands)
    _add_guest_parsers(commands)
    _add_bench_parser(commands)
    return parser


def _add_guest_parsers(commands: Any) -> None:
    summary = "compile components/<name>/*.c into wasm/<name>.wasm (only what changed)"
    build = commands.add_parser("build", help=summary, description=summary)
    build.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=_CONFIG)
    build.add_argument("--force", action="store_true", help="rebuild even up-to-date modules")
    build.add_argument("names", nargs="*", metavar="NAME", help="only these components")
    summary = "serve the app; rebuild and upgrade a component on every saved change"
    dev = commands.add_parser("dev", help=summary, description=summary)
    _add_manifest_flags(dev)
    summary = "write a new app NAME/ (rusm.toml, components/NAME/NAME.c, README) that serves as is"
    new = commands.add_parser("new", help=summary, description=summary)
    new.add_argument("name", metavar="NAME", help="the app's directory and its component's name")
    new.add_argument(
        "--protocol", choices=[p.value for p in Protocol], default="http", help="default http"
    )
    new.add_argument("--lang", choices=[lang.value for lang in Lang], default="c", help="c")
    new.add_argument("--port", type=kv_cli.positive_int, default=DEFAULT_PORT, help="listener")
    new.add_argument(
        "--node-port", type=kv_cli.positive_int, default=DEFAULT_NODE_PORT, help="[node].listen"
    )


def _add_bench_parser(commands: Any) -> None:
    summary = "run a benchmark scenario on a daemon of its own; print its rate and latency"
    parser = commands.add_parser(
        "bench",
        help=summary,
        description=f"{summary} (docs/operations.md says what each counts).",
    )
    parser.add_argument(
        "scenario",
        choices=SCENARIO_NAMES,
        metavar="SCENARIO",
        help=f"one of {', '.join(SCENARIO_NAMES)}",
    )
    parser.add_argument(
        "--seconds",
        type=_bench_seconds,
        default=DEFAULT_SECONDS,
        help=f"how long, warm-up included (default {DEFAULT_SECONDS:g}, at most {MAX_SECONDS:g})",
    )
    # SUPPRESS: rusmd's own --profile (before the subcommand) is the same flag.
    parser.add_argument(
        "--profile",
        choices=[p.value for p in Profile],
        default=argparse.SUPPRESS,
        help="the daemon's profile (default balanced; max for more than one worker)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def _bench_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seconds must be a number, not {text!r}") from None
    if not 0.1 <= value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"--seconds must be from 0.1 to {MAX_SECONDS:g}")
    return value


def _add_kv_parser(commands: Any) -> None:
    summary = "get, set, list or rm a key in the store of a stopped node ([node] store)"
    kv_parser = commands.add_parser("kv", help=summary, description=summary)
    kv_parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=_CONFIG)
    kv_parser.add_argument("--json", action="store_true", help="print one JSON document")
    # The flags work before or after the action; given after it, they must
    # not reset what was given before it.
    leaf = argparse.ArgumentParser(add_help=False)
    leaf.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=_CONFIG)
    leaf.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document"
    )
    kv_cli.add_kv_parsers(kv_parser, [leaf])


def _add_manifest_flags(parser: argparse.ArgumentParser) -> None:
    default = argparse.SUPPRESS if parser.prog != "rusmd" else None
    parser.add_argument("--config", metavar="FILE", default=default, help=_CONFIG)
    parser.add_argument(
        "--listen", metavar="ADDR", default=default, help="override [node].listen (host:port)"
    )
    parser.add_argument(
        "--profile",
        choices=[p.value for p in Profile],
        default=default,
        help="override [node].profile",
    )
    parser.add_argument(
        "--cpus",
        type=kv_cli.positive_int,
        metavar="N",
        default=default,
        help="size the profile as if N cores were usable (default: detected)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rusmd`` command."""
    args = build_parser().parse_args(argv)
    if args.command == "check":
        return check(args)
    if args.command == "kv":
        return kv(args)
    if args.command == "build":
        return build(args)
    if args.command == "new":
        return new(args)
    if args.command == "dev":
        return dev(args)
    if args.command == "bench":
        return bench(args)
    return run(args)


def load(args: argparse.Namespace) -> tuple[str, Overrides, Environment, Manifest]:
    """The manifest the flags name, layered: defaults → file → flags.

    Raises:
        ConfigError: Every problem in the file (or the flags).
    """
    config = args.config or DEFAULT_CONFIG
    environment = load_environment(Path(config).absolute().parent)
    overrides = Overrides(
        listen=args.listen, profile=Profile(args.profile) if args.profile else None
    )
    return config, overrides, environment, load_manifest(config, overrides, environment)


def check(args: argparse.Namespace) -> int:
    """``rusmd check``: validate, compile, print the resolved manifest; exit 0 or 78."""
    try:
        config, _overrides, environment, manifest = load(args)
    except ConfigError as exc:
        if args.json:
            sys.stdout.buffer.write(render_errors_json(exc.problems) + b"\n")
        else:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
        return EX_CONFIG
    return run_check(
        config,
        manifest,
        environment,
        args.cpus or usable_cores(),
        as_json=args.json,
        config_only=args.config_only,
    )


def _load_reported(
    args: argparse.Namespace,
) -> tuple[str, Overrides, Environment, Manifest] | None:
    """``load(args)``, or None once its problems are printed to stderr."""
    try:
        return load(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def kv(args: argparse.Namespace) -> int:
    """``rusmd kv``: one kv action on the manifest's store, opened in this process."""
    # Imported here only: it loads lmdb, which the daemon's main process never
    # does (an LMDB environment must not cross a fork).
    from rusmd.store.offline import OfflineStore

    loaded = _load_reported(args)
    if loaded is None:
        return EX_CONFIG
    config, _overrides, _environment, manifest = loaded
    if manifest.node.store is None:
        message = f'{config}: [node] sets no store (e.g. store = "data/app.mdb")'
        return _kv_fail(message, EX_CONFIG, args.json)
    try:
        first = kv_cli.request(args, sys.stdin.buffer)
        with OfflineStore(manifest.node.store) as store:
            kv_cli.run(store.ask, args, first, sys.stdout.buffer)
    except kv_cli.KvRefused as exc:
        return _kv_fail(str(exc), exc.code, args.json)
    return EX_OK


def _kv_fail(message: str, code: int, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"ok": False, "error": message, "code": code}))
    print(f"rusmd: {message}", file=sys.stderr)
    return code


def build(args: argparse.Namespace) -> int:
    """``rusmd build``: compile the app's components; exit 0, or 65 if one fails."""
    app_dir = Path(args.config or DEFAULT_CONFIG).absolute().parent
    try:
        results = build_app(app_dir, force=args.force, names=frozenset(args.names or ()) or None)
    except BuildError as exc:
        print(f"rusmd: {exc}", file=sys.stderr)
        return EX_CONFIG
    for result in results:
        if result.messages:
            print(result.messages, file=sys.stderr)
        print(report_line(result), file=sys.stdout if result.ok else sys.stderr, flush=True)
    if not results:
        print(f"rusmd: {app_dir / 'components'}: no component to build", file=sys.stderr)
        return EX_CONFIG
    return EX_OK if all(result.ok for result in results) else EX_DATAERR


def new(args: argparse.Namespace) -> int:
    """``rusmd new``: scaffold an app directory; exit 0, or 73 when it cannot be written."""
    target = Path(args.name)
    try:
        create_app(
            target, args.protocol, lang=Lang(args.lang), port=args.port, node_port=args.node_port
        )
    except ScaffoldError as exc:
        print(f"rusmd: {exc}", file=sys.stderr)
        return EX_CANTCREAT
    print(f"created {target}/: cd {target} && rusmd build && rusmd")
    return EX_OK


def bench(args: argparse.Namespace) -> int:
    """``rusmd bench``: compile the scenario app's C guest (or take it from the cache),
    then run the scenario on a daemon of its own; exit 0, or 69."""
    # Here, not at the top: the daemon's main process imports this module
    # and must not load the scenario drivers' websockets client.
    from rusmd.node.bench_command import bench as run_scenario

    try:
        built = build_all(C_GUESTS)
    except (RusmError, OSError) as exc:
        print(f"rusmd bench {args.scenario}: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    for name, result in built.items():
        if result.built:
            where = f"{result.output} ({result.seconds:.1f} s)"
            print(f"rusmd bench: built {name} from {C_GUESTS[name]}: {where}", file=sys.stderr)
    modules = {name: result.output for name, result in built.items()}
    return run_scenario(
        args.scenario, args.seconds, args.profile, args.json, args.cpus, c_modules=modules
    )


def dev(args: argparse.Namespace) -> int:
    """``rusmd dev``: build, run the daemon as a child, rebuild and upgrade on changes."""
    # Imported here only: watchfiles (and its notify thread) belongs to the
    # dev parent; the daemon's main process, which runs this module, never
    # loads it.
    from rusmd.guest.dev import DevSession, run_dev

    loaded = _load_reported(args)
    if loaded is None:
        return EX_CONFIG
    config, _overrides, _environment, manifest = loaded
    app_dir = Path(manifest.app_dir).resolve()
    socket_path = Path(args.socket) if args.socket else default_socket_path(str(app_dir))
    passed = [("--listen", args.listen), ("--profile", args.profile), ("--cpus", args.cpus)]
    daemon_args = [part for flag, value in passed if value for part in (flag, str(value))]
    daemon_args += ["--log-format", args.log_format]
    residents = frozenset(name for name, spec in manifest.components.items() if spec.resident)
    session = DevSession(
        app_dir, Path(config).resolve(), socket_path.absolute(), daemon_args, residents
    )
    return run_dev(session)


def run(args: argparse.Namespace) -> int:
    """``rusmd``: run the app in the foreground until SIGTERM (exit 0)."""
    loaded = _load_reported(args)
    if loaded is None:
        return EX_CONFIG
    config, overrides, _environment, manifest = loaded

    socket_path = Path(args.socket) if args.socket else default_socket_path(manifest.app_dir)
    daemon = MainProcess(
        manifest,
        overrides,
        config,
        socket_path,
        json_logs=args.log_format == "json",
        cores=args.cpus,
    )
    try:
        return daemon.run()
    except RusmError as exc:
        print(f"rusmd: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE


def default_socket_path(app_dir: str) -> Path:
    """``$RUNTIME_DIRECTORY/rusmd.sock`` under systemd, else ``<app dir>/.rusm/rusmd.sock``."""
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0]) / "rusmd.sock"
    return Path(app_dir) / ".rusm" / "rusmd.sock"


if __name__ == "__main__":
    sys.exit(main())
