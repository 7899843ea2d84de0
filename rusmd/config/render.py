"""Render a resolved manifest for ``rusmd check``: a readable page or one JSON document.

Runs in: main.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import msgspec

from rusmd.config.environment import Environment
from rusmd.config.model import Manifest
from rusmd.config.sizing import worker_count
from rusmd.errors import ConfigProblem

_LABEL = 14  # width of the left column


@dataclass(frozen=True)
class ArtifactStatus:
    """What ``rusmd check`` found for one component's artifact.

    Attributes:
        artifact: The artifact as the operator reads it (``wasm/api.wasm``);
            "" when none could be resolved.
        ok: True when it compiled (or was in the cache) and can run.
        cached: True when the compile cache already held it.
        seconds: Compile time (0 for a cache hit).
        cwasm: The cache entry's path ("" on failure).
        error: Why it cannot run, without the ``component <name>:`` prefix.
        preinit: For a reactor, whether its start-up was pre-initialised
            (``pre-initialized``, ``not pre-initialized: <why>``); "" for a
            module without a start-up.
    """

    artifact: str
    ok: bool
    cached: bool = False
    seconds: float = 0.0
    cwasm: str = ""
    error: str = ""
    preinit: str = ""

    def summary(self) -> str:
        """``wasm/api.wasm ok (cached)``, ``wasm/api.wasm compiled in 0.4 s`` or the error,
        then ``, pre-initialized`` or ``, not pre-initialized: <why>`` for a reactor."""
        if not self.ok:
            return f"error: {self.error}"
        outcome = "ok (cached)" if self.cached else f"compiled in {self.seconds:.1f} s"
        preinit = f", {self.preinit}" if self.preinit else ""
        return f"{self.artifact} {outcome}{preinit}"


def render_text(
    manifest: Manifest,
    environment: Environment,
    cores: int,
    shown_path: str,
    artifacts: dict[str, ArtifactStatus] | None = None,
) -> str:
    """The human page: what will run, with every default filled in.

    ``artifacts`` adds each component's artifact status (None: not checked).
    """
    workers = worker_count(manifest.node.profile, cores)
    residents = sum(1 for c in manifest.components.values() if c.resident)
    lines = [
        f"{shown_path}: ok — {len(manifest.serve)} listener(s), "
        f"{len(manifest.components)} component(s) ({residents} resident), "
        f"{len(manifest.capabilities)} custom capability profile(s)",
        "",
    ]
    node = manifest.node
    plural = "" if workers == 1 else "s"
    lines.append(
        _row(
            "node",
            f"listen {node.listen}  profile {node.profile} → {workers} worker{plural} "
            f"of {cores} usable core{'' if cores == 1 else 's'}  ticks {node.ticks_per_second}/s",
        )
    )
    lines.append(_row("", f"store {node.store or 'none'}"))
    lines.append(_row("log", f"level {manifest.log.level}"))
    for index, listener in enumerate(manifest.serve):
        handler = f"  handler {listener.name}" if listener.name else ""
        source = f"  source {listener.source}" if listener.source else ""
        lines.append(
            _row(f"serve[{index}]", f"{listener.protocol} {listener.listen}{handler}{source}")
        )
        width = max((len(r.path) for r in listener.routes), default=0)
        for route in listener.routes:
            lines.append(
                _row(
                    "",
                    f"  {route.method:<7} {route.path:<{width}}  {route.component}#{route.action}",
                )
            )
    for name, capability in manifest.capabilities.items():
        lines.append(
            _row("capability", f"{name}  inherits {capability.inherits}  {capability.grants()}")
        )
        for key in capability.env:
            lines.append(_row("", f"  env {key} ({environment.origin(key)})"))
        for mount in capability.preopen:
            mode = "read-only" if mount.read_only else "read-write"
            lines.append(_row("", f"  preopen {mount.host} → {mount.guest} ({mode})"))
    name_width = max((len(name) for name in manifest.components), default=0)
    for name, component in manifest.components.items():
        role = "resident" if component.resident else "spawn-by-name"
        source = f"  source {component.source}" if component.source else ""
        lines.append(
            _row(
                "component",
                f"{name:<{name_width}}  capability {component.profile.name} "
                f"({component.profile.grants()})  {role}{source}",
            )
        )
        if artifacts is not None and name in artifacts:
            lines.append(_row("", f"  artifact {artifacts[name].summary()}"))
    if manifest.warnings or environment.problems:
        lines.append("")
        lines.extend(f"warning: {w}" for w in manifest.warnings)
        lines.extend(f"warning: {p}" for p in environment.problems)
    return "\n".join(lines)


def render_json(
    manifest: Manifest,
    environment: Environment,
    cores: int,
    artifacts: dict[str, ArtifactStatus] | None = None,
    problems: list[ConfigProblem] | None = None,
) -> bytes:
    """One JSON document: the resolved manifest plus derived facts.

    ``artifacts`` adds ``"artifacts"``, each component's status (absent
    when not checked); ``problems`` (artifacts that cannot run) make
    ``"ok"`` false and fill ``"errors"`` as ``render_errors_json`` does.
    """
    document: dict[str, Any] = {
        "ok": not problems,
        "manifest": msgspec.to_builtins(manifest),
        "usable_cores": cores,
        "workers": worker_count(manifest.node.profile, cores),
        "env": {
            key: environment.origin(key).value
            for capability in manifest.capabilities.values()
            for key in capability.env
        },
        "warnings": [*manifest.warnings, *(str(p) for p in environment.problems)],
    }
    if artifacts is not None:
        document["artifacts"] = {
            name: {**dataclasses.asdict(status), "text": status.summary()}
            for name, status in artifacts.items()
        }
    if problems:
        document["errors"] = _errors(problems)
    return msgspec.json.format(msgspec.json.encode(document), indent=2)


def render_errors_json(problems: list[ConfigProblem]) -> bytes:
    """The failure document: every problem with its file, line and key path."""
    document = {"ok": False, "errors": _errors(problems)}
    return msgspec.json.format(msgspec.json.encode(document), indent=2)


def _errors(problems: list[ConfigProblem]) -> list[dict[str, Any]]:
    return [
        {"file": p.file, "line": p.line, "path": p.path, "message": p.message, "text": str(p)}
        for p in problems
    ]


def _row(label: str, text: str) -> str:
    return f"{label:<{_LABEL}}{text}".rstrip()
