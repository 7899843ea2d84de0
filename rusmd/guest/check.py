"""``rusmd check``: what would fail at run time, found before the app runs.

Runs in: the ``rusmd check`` command (never the daemon). It imports
wasmtime, the serving layer and the engine inside its functions only:
the daemon's main process imports ``rusmd.cli``, which imports this
module, and must never load them.

After the manifest has loaded (``rusmd.cli``), ``run_check`` resolves
every component's artifact and compiles it in the compile child
(``check_artifacts``), warming the AOT cache the daemon will load from,
and says for each reactor whether its start-up was pre-initialised
(``preinit_text``). It then checks what a worker would refuse at load:
each component's imports against the ABI and its grants
(``import_problems``), and each route's action against the exports
(``route_problems``). Any problem exits 78 (EX_CONFIG), naming the
component, the manifest line and the import or route.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rusmd.config import Environment, Manifest
from rusmd.config.document import parse
from rusmd.config.model import LogLevel, Protocol
from rusmd.config.render import ArtifactStatus, render_json, render_text
from rusmd.errors import EX_CONFIG, EX_OK, ConfigProblem
from rusmd.log import Logger
from rusmd.main.compile import compile_blocking, jobs_for
from rusmd.wasm.cache import default_cache_dir
from rusmd.wasm.capacity import manifest_layout
from rusmd.wasm.preinit import OFF, PREINITIALIZED, SKIPPED


def run_check(
    config: str,
    manifest: Manifest,
    environment: Environment,
    cores: int,
    *,
    as_json: bool,
    config_only: bool,
) -> int:
    """Compile and check a loaded manifest, print the outcome; exit 0 or 78.

    Args:
        config: The manifest's path as given (problems name it).
        manifest: The loaded manifest.
        environment: Env values for its granted keys.
        cores: The usable cores profiles are sized by.
        as_json: Print one JSON document instead of text.
        config_only: Stop after the manifest: compile nothing.
    """
    artifacts = None if config_only else check_artifacts(manifest)
    problems = [
        ConfigProblem(config, 0, f"components.{name}", status.error)
        for name, status in (artifacts or {}).items()
        if not status.ok
    ]
    if artifacts is not None:
        problems += import_problems(config, manifest, artifacts)
        problems += route_problems(config, manifest, artifacts)
    if as_json:
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
