"""The ``rusmd`` command line: ``rusmd [flags]`` runs the app, ``rusmd check`` validates it.

Runs in: main; ``rusmd kv`` runs in its own short-lived process and
opens the store there (``rusmd.store`` is imported inside ``kv`` only:
the daemon's main process must never load lmdb).

``rusmd check`` validates the manifest, then resolves every component's
artifact and compiles it in the compile child, warming the AOT cache the
daemon will load from, and says for each reactor whether its start-up was
pre-initialised (and why not). It then checks what a worker would refuse
at load: each component's imports against the ABI and its grants, and
each route's action against the exports; ``--config-only`` stops after
the manifest.

``rusmd bench SCENARIO`` starts a daemon of its own on a temporary app
of the scenarios' components, runs one benchmark scenario against it and
prints its rate and latency (``rusmd.node.bench_command``; loaded only
when it runs).

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
from rusmd.config.document import parse
from rusmd.config.model import LogLevel, Profile, Protocol
from rusmd.config.render import ArtifactStatus, render_errors_json, render_json, render_text
from rusmd.config.sizing import usable_cores
from rusmd.errors import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_DATAERR,
    EX_OK,
    EX_UNAVAILABLE,
    ConfigError,
    ConfigProblem,
    RusmError,
)
from rusmd.guest.builder import BuildError, build_app, report_line
from rusmd.guest.scaffold import DEFAULT_NODE_PORT, DEFAULT_PORT, Lang, ScaffoldError, create_app
from rusmd.log import Logger
from rusmd.main.compile import compile_blocking, jobs_for
from rusmd.main.loop import MainProcess
from rusmd.node.scenario_app import DEFAULT_SECONDS, MAX_SECONDS, SCENARIO_NAMES
from rusmd.store import kv_command as kv_cli
from rusmd.wasm.cache import default_cache_dir
from rusmd.wasm.capacity import manifest_layout
from rusmd.wasm.preinit import OFF, PREINITIALIZED, SKIPPED

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
        # Here, not at the top: the daemon's main process imports this module
        # and must not load the scenario drivers' websockets client.
        from rusmd.node.bench_command import bench

        return bench(args.scenario, args.seconds, args.profile, args.json, args.cpus)
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
    cores = args.cpus or usable_cores()
    artifacts = None if args.config_only else check_artifacts(manifest)
    problems = [
        ConfigProblem(config, 0, f"components.{name}", status.error)
        for name, status in (artifacts or {}).items()
        if not status.ok
    ]
    if artifacts is not None:
        problems += import_problems(config, manifest, artifacts)
        problems += route_problems(config, manifest, artifacts)
    if args.json:
        document = render_json(manifest, environment, cores, artifacts, problems)
        sys.stdout.buffer.write(document + b"\n")
    elif problems:
        for problem in problems:
            print(problem, file=sys.stderr)
    else:
        print(render_text(manifest, environment, cores, config, artifacts))
    return EX_CONFIG if problems else EX_OK


def check_artifacts(manifest: Manifest) -> dict[str, ArtifactStatus]:
    """Resolve and compile every component (warming the cache); each one's status.

    Long compiles print progress lines on stderr, and so does a warning of
    the compile step (a missing Wizer).
    """
    app_dir = Path(manifest.app_dir)
    jobs, failures = jobs_for(manifest)
    warnings: list[str] = []
    results = compile_blocking(
        jobs,
        default_cache_dir(app_dir, os.environ),
        timeout_s=manifest.node.compile_timeout_s,
        memory_mb=manifest.node.compile_memory_mb,
        log=Logger(LogLevel.OFF, lambda _record: None),
        layout=manifest_layout(manifest),
        progress=lambda line: print(line, file=sys.stderr, flush=True),
        warnings=warnings,
    )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    shown = {job.name: _shown(Path(job.path), app_dir) for job in jobs}
    statuses: dict[str, ArtifactStatus] = {}
    for name in manifest.components:
        result = results.get(name) or failures[name]
        statuses[name] = ArtifactStatus(
            artifact=shown.get(name, ""),
            ok=result.ok,
            cached=result.cached,
            seconds=result.seconds,
            cwasm=result.cwasm,
            error=result.reason,
            preinit=preinit_text(result.preinit),
        )
    return statuses


def preinit_text(preinit: str) -> str:
    """The compile child's ``preinit`` value as ``check`` shows it."""
    if preinit == PREINITIALIZED:
        return "pre-initialized"
    if preinit == OFF:
        return "not pre-initialized (pre-initialize = false)"
    if preinit.startswith(SKIPPED):
        return f"not pre-initialized: {preinit.removeprefix(SKIPPED)}"
    return preinit


def import_problems(
    config: str, manifest: Manifest, artifacts: dict[str, ArtifactStatus]
) -> list[ConfigProblem]:
    """Components whose imports a worker would refuse at load, one problem each.

    A worker links every module against its component's grants and the
    ABI (``rusmd.wasm.linking.check_module``) and refuses one importing an
    unknown, mistyped or ungranted function; such a component answers 503
    on every request. ``check`` runs the same check on the compiled module,
    so it names the component and the import before the daemon runs.
    Components that failed to compile are reported already.
    """
    # Imported here only: the daemon's main process (which runs this module)
    # must never load wasmtime; ``check`` may.
    import wasmtime

    from rusmd.wasm.engine import compile_engine  # fork safety, as above
    from rusmd.wasm.linking import LinkError, check_module, granted  # fork safety, as above

    _values, lines = parse(Path(config).read_text(encoding="utf-8"))
    engine = compile_engine(manifest_layout(manifest))
    problems = []
    for name, component in sorted(manifest.components.items()):
        status = artifacts.get(name)
        if status is None or not status.ok:
            continue
        module = wasmtime.Module.deserialize_file(engine, status.cwasm)
        try:
            check_module(name, module, granted(component.profile))
        except LinkError as exc:
            where = ("components", name)
            problems.append(
                ConfigProblem(config, lines.line_of(where), f"components.{name}", str(exc))
            )
    return problems


def route_problems(
    config: str, manifest: Manifest, artifacts: dict[str, ArtifactStatus]
) -> list[ConfigProblem]:
    """Routes (and ``name`` listeners) whose action the compiled component does not export.

    Such a route would answer 502 on every request; ``check`` says so
    before it runs. Components that failed to compile are reported already.
    """
    # Imported here only: the daemon's main process (which runs this module)
    # must never load wasmtime, httptools or websockets; ``check`` may.
    import wasmtime

    from rusmd.serving.server import SINGLE_ACTION  # fork safety, as above
    from rusmd.wasm.engine import compile_engine  # fork safety, as above
    from rusmd.wasm.linking import action_results  # fork safety, as above

    uses: dict[str, list[tuple[tuple[str | int, ...], str, str]]] = {}
    for index, serve in enumerate(manifest.serve):
        if serve.protocol is Protocol.WS:
            continue  # a ws listener runs its component's entry, checked at load
        where: tuple[str | int, ...]
        for route in serve.routes:
            key = f"{route.method} {route.path}"
            where = ("serve", index, "routes", key)
            uses.setdefault(route.component, []).append((where, key, route.action))
        if not serve.routes and serve.name:
            where = ("serve", index, "name")
            uses.setdefault(serve.name, []).append((where, "name", SINGLE_ACTION))
    _values, lines = parse(Path(config).read_text(encoding="utf-8"))
    engine = compile_engine(manifest_layout(manifest))
    problems = []
    for name, wanted in sorted(uses.items()):
        status = artifacts.get(name)
        if status is None or not status.ok:
            continue
        module = wasmtime.Module.deserialize_file(engine, status.cwasm)
        for where, key, action in wanted:
            answer = action_results(name, module, action)
            if isinstance(answer, str):
                path = f"serve[{where[1]}].routes" if len(where) == 4 else f"serve[{where[1]}]"
                problems.append(
                    ConfigProblem(config, lines.line_of(where), path, f"{key!r}: {answer}")
                )
    return problems


def _shown(path: Path, app_dir: Path) -> str:
    try:
        return str(path.relative_to(app_dir))
    except ValueError:
        return str(path)


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
