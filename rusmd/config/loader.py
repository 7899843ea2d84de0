"""Load ``rusm.toml``: validate every table and key of seed 000, then resolve.

Runs in: main (``rusmd``, ``rusmd check``).

Layering: built-in defaults → the file → flags (``--listen``,
``--profile``). Relative paths resolve against the app dir (the
manifest's directory). Every problem in the file is collected and
raised once as a ``ConfigError``, one line each:

    rusm.toml:14: components.api: unknown key 'capabilty' (did you mean 'capability'?)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msgspec import structs

from rusmd.config.document import MAX_MANIFEST_BYTES, TomlSyntaxError, parse
from rusmd.config.environment import Environment, EnvOrigin
from rusmd.config.model import (
    BUILTIN_CAPABILITIES,
    BuiltinCapability,
    Capability,
    Component,
    Log,
    LogLevel,
    Manifest,
    Node,
    Preopen,
    Profile,
    Protocol,
    Route,
    Serve,
)
from rusmd.config.reader import Problems, TableReader, describe, did_you_mean, format_path
from rusmd.config.routes import RouteTable, parse_route_key, parse_route_target
from rusmd.errors import ConfigError, ConfigProblem, RouteError
from rusmd.supervision.spec import RestartType

TOP_LEVEL = ("node", "log", "serve", "capabilities", "components")
NODE_KEYS = (
    "listen",
    "profile",
    "ticks_per_second",
    "store",
    "compile-timeout-s",
    "compile-memory-mb",
)
LOG_KEYS = ("level",)
SERVE_KEYS = (
    "protocol",
    "listen",
    "name",
    "source",
    "routes",
    "max-connections",
    "max-url-bytes",
    "max-header-bytes",
    "max-headers",
    "max-body-bytes",
    "header-timeout-s",
    "body-timeout-s",
    "idle-timeout-s",
    "timeout-s",
    "heartbeat-s",
    "max-message-bytes",
    "retry-after-s",
)
CAPABILITY_KEYS = (
    "inherits",
    "allow-network",
    "allow-spawn",
    "allow-process-control",
    "allow-stdio",
    "allow-storage",
    "max-memory-mb",
    "max-cpu-ms",
    "env",
    "preopen",
)
PREOPEN_KEYS = ("host", "guest", "read-only")
COMPONENT_KEYS = ("capability", "resident", "source", "restart", "intensity", "period-s")

# The snapshot rate the node endpoint can sustain; seed 000 fixes 10–60 Hz.
TICKS_RANGE = (10, 60)
# wasm32 addresses at most 4 GiB, so a larger heap ceiling cannot be honoured.
MAX_MEMORY_MB = 4096
# A per-call CPU budget: at least one epoch tick, at most an hour.
CPU_MS_RANGE = (10, 3_600_000)
# A resident's restart budget: restarts within a period, and the period.
INTENSITY_RANGE = (0, 1000)
DEFAULT_INTENSITY = 3
DEFAULT_PERIOD_S = 5
PERIOD_S_RANGE = (1, 3600)
# Compile limits: long enough for a large JS engine, short enough to notice.
COMPILE_TIMEOUT_RANGE = (1, 3600)
COMPILE_MEMORY_RANGE = (64, 65536)
# Listener limits: each bounds what one client can make a worker hold or wait
# for; the floors keep a listener usable, the ceilings keep a typo from
# switching a limit off.
# Open connections per worker: file descriptors and per-connection buffers.
MAX_CONNECTIONS_RANGE = (1, 100_000)
# The request target is buffered whole before routing.
MAX_URL_BYTES_RANGE = (256, 1 << 20)
# The request head is buffered whole; the count bounds per-header parse work.
MAX_HEADER_BYTES_RANGE = (1024, 1 << 20)
MAX_HEADERS_RANGE = (1, 1000)
# The body is held in memory before the handler sees it.
MAX_BODY_BYTES_RANGE = (0, 1 << 30)
# Head, body, idle and handler timeouts: a client trickling bytes (slowloris),
# idle keep-alive sockets held open, a handler that never answers.
LISTENER_TIMEOUT_S_RANGE = (0.1, 3600.0)
# A heartbeat under a second would flood every open stream with keep-alives.
HEARTBEAT_S_RANGE = (1.0, 3600.0)
# One incoming WS message is buffered whole before delivery.
MAX_MESSAGE_BYTES_RANGE = (1, 1 << 26)
# How long a client refused with 503 is told to wait.
RETRY_AFTER_S_RANGE = (0, 3600)
_SERVE_INTEGER_LIMITS = (
    ("max-connections", MAX_CONNECTIONS_RANGE),
    ("max-url-bytes", MAX_URL_BYTES_RANGE),
    ("max-header-bytes", MAX_HEADER_BYTES_RANGE),
    ("max-headers", MAX_HEADERS_RANGE),
    ("max-body-bytes", MAX_BODY_BYTES_RANGE),
    ("max-message-bytes", MAX_MESSAGE_BYTES_RANGE),
    ("retry-after-s", RETRY_AFTER_S_RANGE),
)
_SERVE_SECONDS_LIMITS = (
    ("header-timeout-s", LISTENER_TIMEOUT_S_RANGE),
    ("body-timeout-s", LISTENER_TIMEOUT_S_RANGE),
    ("idle-timeout-s", LISTENER_TIMEOUT_S_RANGE),
    ("timeout-s", LISTENER_TIMEOUT_S_RANGE),
    ("heartbeat-s", HEARTBEAT_S_RANGE),
)

_COMPONENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_KV_SOURCE = re.compile(r"^kv:([A-Za-z0-9_.-]+)/(.+)$")


@dataclass(frozen=True)
class Overrides:
    """Flags layered over the file.

    Attributes:
        listen: ``--listen``: the node endpoint address. Optional; None keeps the file's.
        profile: ``--profile``. Optional; None keeps the file's.
    """

    listen: str | None = None
    profile: Profile | None = None


def load_manifest(
    path: str | Path,
    overrides: Overrides | None = None,
    environment: Environment | None = None,
) -> Manifest:
    """Read, validate and resolve a manifest.

    Args:
        path: The manifest file, as the operator gave it (shown in errors).
        overrides: Flags layered over the file.
        environment: When given, granted env keys with no value are warned about.

    Raises:
        ConfigError: Every problem in the file, at once.
    """
    display = str(path)
    manifest_path = Path(path).absolute()
    try:
        raw = manifest_path.read_bytes()
    except OSError as exc:
        raise ConfigError([ConfigProblem(display, 0, "", f"cannot read: {exc.strerror}")]) from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ConfigError(
            [ConfigProblem(display, 0, "", f"larger than {MAX_MANIFEST_BYTES} bytes")]
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([ConfigProblem(display, line, "", "not valid UTF-8")]) from None
    try:
        values, lines = parse(text)
    except TomlSyntaxError as exc:
        raise ConfigError([ConfigProblem(display, exc.line, "", exc.message)]) from None
    problems = Problems(display, lines)
    manifest = _Builder(problems, manifest_path, environment).build(
        values, overrides or Overrides()
    )
    if problems.errors:
        raise ConfigError(problems.errors)
    return manifest


class _Builder:
    """Turns validated tables into the frozen model, one table at a time."""

    def __init__(
        self, problems: Problems, manifest_path: Path, environment: Environment | None
    ) -> None:
        self.problems = problems
        self.manifest_path = manifest_path
        self.app_dir = manifest_path.parent
        self.environment = environment

    def build(self, values: dict[str, Any], overrides: Overrides) -> Manifest:
        root = TableReader(self.problems, (), values)
        root.check_keys(TOP_LEVEL, what="table")
        node = self._node(root.table("node"), overrides)
        log = self._log(root.table("log"))
        capabilities = self._capabilities(root.table("capabilities"), node)
        components = self._components(root.table("components"), capabilities, node)
        serve = self._serve_list(root, components, node)
        self._check_addresses(node, serve, overrides)
        for listener in serve:
            if listener.name and listener.name not in components:
                # Seed 000: a single handler with no [components.<name>] runs sandboxed.
                components[listener.name] = Component(name=listener.name)
        return Manifest(
            path=str(self.manifest_path),
            app_dir=str(self.app_dir),
            node=node,
            log=log,
            serve=tuple(serve),
            capabilities=capabilities,
            components=components,
            warnings=tuple(str(w) for w in self.problems.warnings),
        )

    def _node(self, table: TableReader | None, overrides: Overrides) -> Node:
        node = Node()
        if table is not None:
            table.check_keys(NODE_KEYS)
            listen = table.string("listen")
            if listen is not None and self._address_ok(table, "listen", listen):
                node = structs.replace(node, listen=listen)
            profile = table.choice("profile", Profile)
            if profile is not None:
                node = structs.replace(node, profile=profile)
            low, high = TICKS_RANGE
            ticks = table.integer("ticks_per_second", low, high)
            if ticks is not None:
                node = structs.replace(node, ticks_per_second=ticks)
            store = table.string("store")
            if store is not None:
                if store.strip():
                    node = structs.replace(node, store=str(self._resolve(store)))
                else:
                    table.error("store", "'store' must be a file path, not an empty string")
            timeout = table.integer("compile-timeout-s", *COMPILE_TIMEOUT_RANGE)
            if timeout is not None:
                node = structs.replace(node, compile_timeout_s=timeout)
            memory = table.integer("compile-memory-mb", *COMPILE_MEMORY_RANGE)
            if memory is not None:
                node = structs.replace(node, compile_memory_mb=memory)
        if overrides.listen is not None:
            flags = TableReader(Problems("--listen", self.problems.lines), (), {})
            if self._address_ok(flags, None, overrides.listen):
                node = structs.replace(node, listen=overrides.listen)
            self.problems.errors.extend(flags.problems.errors)
        if overrides.profile is not None:
            node = structs.replace(node, profile=overrides.profile)
        return node

    def _log(self, table: TableReader | None) -> Log:
        if table is None:
            return Log()
        table.check_keys(LOG_KEYS)
        level = table.choice("level", LogLevel)
        return Log(level=level) if level is not None else Log()

    def _capabilities(self, table: TableReader | None, node: Node) -> dict[str, Capability]:
        resolved: dict[str, Capability] = {}
        if table is None:
            return resolved
        builtin_names = [b.value for b in BuiltinCapability]
        for name in table.values:
            profile_table = table.table(name)
            if profile_table is None:
                continue
            if name in builtin_names:
                table.error(
                    name,
                    f"'{name}' is a built-in profile; give yours its own name "
                    f"and set inherits = '{name}'",
                )
                continue
            resolved[name] = self._capability(name, profile_table, node)
        return resolved

    def _capability(self, name: str, table: TableReader, node: Node) -> Capability:
        table.check_keys(CAPABILITY_KEYS)
        inherits = table.choice("inherits", BuiltinCapability) or BuiltinCapability.SANDBOXED
        base = BUILTIN_CAPABILITIES[inherits]
        grants: dict[str, Any] = {}
        for key in CAPABILITY_KEYS:
            if key.startswith("allow-"):
                granted = table.boolean(key)
                grants[key.replace("-", "_")] = (
                    granted if granted is not None else getattr(base, key.replace("-", "_"))
                )
        memory = table.integer(
            "max-memory-mb", 1, MAX_MEMORY_MB, " (wasm32 addresses at most 4 GiB)"
        )
        cpu = table.integer("max-cpu-ms", *CPU_MS_RANGE)
        capability = Capability(
            name=name,
            inherits=inherits,
            max_memory_mb=memory if memory is not None else base.max_memory_mb,
            max_cpu_ms=cpu if cpu is not None else base.max_cpu_ms,
            env=self._env_keys(table),
            preopen=self._preopens(table),
            **grants,
        )
        if capability.allow_storage and node.store is None:
            table.warn(
                "allow-storage" if "allow-storage" in table.values else "inherits",
                "grants allow-storage but [node] sets no store; "
                "kv calls will fail with 'no store configured'",
            )
        return capability

    def _env_keys(self, table: TableReader) -> tuple[str, ...]:
        keys = table.string_list("env") or []
        seen: list[str] = []
        for key in keys:
            if not _ENV_KEY.match(key):
                table.error("env", f"env key {key!r} is not a valid variable name")
            elif key in seen:
                table.error("env", f"env key '{key}' is listed twice")
            else:
                seen.append(key)
                if self.environment and self.environment.origin(key) is EnvOrigin.MISSING:
                    table.warn("env", f"env key '{key}' is set neither in the environment nor .env")
        return tuple(seen)

    def _preopens(self, table: TableReader) -> tuple[Preopen, ...]:
        mounts: list[Preopen] = []
        for entry in table.table_list("preopen") or []:
            entry.check_keys(PREOPEN_KEYS)
            host = entry.string("host", required=True)
            guest = entry.string("guest", required=True)
            read_only = entry.boolean("read-only")
            if guest is not None and not guest.startswith("/"):
                entry.error("guest", f"guest path {guest!r} must be absolute (start with '/')")
                continue
            if guest is not None and any(m.guest == guest for m in mounts):
                entry.error("guest", f"guest path {guest!r} is mounted twice")
                continue
            if host is None or guest is None:
                continue
            if not host.strip():
                entry.error("host", "'host' must be a directory path, not an empty string")
                continue
            mounts.append(
                Preopen(
                    host=str(self._resolve(host)),
                    guest=guest,
                    read_only=True if read_only is None else read_only,
                )
            )
        return tuple(mounts)

    def _components(
        self, table: TableReader | None, capabilities: dict[str, Capability], node: Node
    ) -> dict[str, Component]:
        components: dict[str, Component] = {}
        if table is None:
            return components
        for name in table.values:
            entry = table.table(name)
            if entry is None:
                continue
            if not _COMPONENT_NAME.match(name):
                table.error(
                    name,
                    f"component name {name!r} must be letters, digits, '-' or '_' "
                    "(it names the file wasm/<name>.*)",
                )
                continue
            entry.check_keys(COMPONENT_KEYS)
            declared = entry.string("capability") or "sandboxed"
            profile = self._profile_for(entry, declared, capabilities)
            source = self._source(entry, node)
            restart = entry.choice("restart", RestartType) or RestartType.PERMANENT
            intensity = entry.integer("intensity", *INTENSITY_RANGE)
            period_s = entry.integer("period-s", *PERIOD_S_RANGE)
            resident = bool(entry.boolean("resident"))
            if not resident:
                for key in ("restart", "intensity", "period-s"):
                    if key in entry.values:
                        entry.warn(key, f"'{key}' only applies to resident components")
            components[name] = Component(
                name=name,
                capability=declared,
                profile=profile,
                resident=resident,
                source=source,
                restart=str(restart),
                intensity=DEFAULT_INTENSITY if intensity is None else intensity,
                period_s=DEFAULT_PERIOD_S if period_s is None else period_s,
            )
        return components

    def _profile_for(
        self, entry: TableReader, declared: str, capabilities: dict[str, Capability]
    ) -> Capability:
        if declared in capabilities:
            return capabilities[declared]
        if declared in {b.value for b in BuiltinCapability}:
            return BUILTIN_CAPABILITIES[BuiltinCapability(declared)]
        known = [*capabilities, *(b.value for b in BuiltinCapability)]
        entry.warn(
            "capability",
            f"unknown capability '{declared}'{did_you_mean(declared, known)}; "
            "falling back to 'sandboxed'",
        )
        return BUILTIN_CAPABILITIES[BuiltinCapability.SANDBOXED]

    def _source(self, entry: TableReader, node: Node) -> str | None:
        source = entry.string("source")
        if source is None:
            return None
        kv = _KV_SOURCE.match(source)
        if kv:
            if node.store is None:
                entry.error(
                    "source", f"source {source!r} reads the store, but [node] sets no store"
                )
                return None
            return source
        url = source[4:] if source.startswith("url:") else source
        if re.match(r"^https?://[^/\s]+", url):
            return source
        entry.error(
            "source",
            f"source {source!r} must be https://…, http://…, url:<url> or kv:<bucket>/<key>",
        )
        return None

    def _serve_list(
        self, root: TableReader, components: dict[str, Component], node: Node
    ) -> list[Serve]:
        if "serve" not in root.values:
            return []
        entries = root.table_list("serve")
        if entries is None:
            return []
        listeners = []
        for entry in entries:
            listener = self._serve(entry, components, node)
            if listener is not None:
                listeners.append(listener)
        return listeners

    def _serve(
        self, entry: TableReader, components: dict[str, Component], node: Node
    ) -> Serve | None:
        entry.check_keys(SERVE_KEYS)
        protocol = entry.choice("protocol", Protocol, required=True)
        listen = entry.string("listen", required=True)
        if listen is not None and not self._address_ok(entry, "listen", listen):
            listen = None
        name = entry.string("name")
        if name is not None and not _COMPONENT_NAME.match(name):
            entry.error("name", f"handler name {name!r} must be letters, digits, '-' or '_'")
            name = None
        source = self._source(entry, node)
        routes = self._routes(entry, components)
        has_routes = "routes" in entry.values
        if protocol is Protocol.WS:
            if name is None and "name" not in entry.values:
                entry.error(None, "a ws listener needs 'name' (its one handler component)")
            if has_routes:
                entry.warn("routes", "ws listeners ignore [serve.routes]")
                routes = ()
        elif not has_routes and "name" not in entry.values:
            entry.error(None, "a listener needs [serve.routes] or 'name' (its one handler)")
        elif has_routes and "name" in entry.values:
            entry.error("name", "set either [serve.routes] or 'name', not both")
        limits = _serve_limits(entry)
        if protocol is None or listen is None:
            return None
        return Serve(
            protocol=protocol, listen=listen, routes=routes, name=name, source=source, **limits
        )

    def _routes(self, entry: TableReader, components: dict[str, Component]) -> tuple[Route, ...]:
        table = entry.table("routes")
        if table is None:
            return ()
        routes: list[Route] = []
        for key, value in table.values.items():
            route = self._route(table, key, value, components)
            if route is not None:
                routes.append(route)
        try:
            RouteTable.from_mapping(
                {f"{r.method} {r.path}": f"{r.component}#{r.action}" for r in routes}
            )
        except RouteError as exc:
            table.error(None, str(exc))
        return tuple(routes)

    def _route(
        self, table: TableReader, key: str, value: Any, components: dict[str, Component]
    ) -> Route | None:
        try:
            pattern = parse_route_key(key)
        except RouteError as exc:
            table.error(key, str(exc))
            return None
        if not isinstance(value, str):
            table.error(key, f"route '{key}' must map to 'component#action', not {value!r}")
            return None
        try:
            component, action = parse_route_target(value)
        except RouteError as exc:
            table.error(key, str(exc))
            return None
        if component not in components:
            table.error(
                key,
                f"route '{key}' names component '{component}', which has no "
                f"[components.{component}]{did_you_mean(component, components)}",
            )
            return None
        return Route(
            method=pattern.method, path=key.split(" ", 1)[1], component=component, action=action
        )

    def _address_ok(self, table: TableReader, key: str | None, address: str) -> bool:
        problem = address_problem(address)
        if problem:
            label = f"'{key}' " if key else ""
            table.error(key, f"{label}address {address!r} {problem}")
            return False
        return True

    def _check_addresses(self, node: Node, serve: list[Serve], overrides: Overrides) -> None:
        owners: dict[str, str] = {_normal(node.listen): "[node].listen"}
        for index, listener in enumerate(serve):
            key = _normal(listener.listen)
            if key in owners:
                self.problems.error(
                    ("serve", index, "listen"),
                    ("serve", index),
                    f"listen address {listener.listen} is already used by {owners[key]}",
                )
            else:
                owners[key] = format_path(("serve", index))

    def _resolve(self, path: str) -> Path:
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else self.app_dir / candidate


def address_problem(address: str) -> str:
    """Why ``address`` is not a usable ``host:port`` ("" when it is)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        return "must be host:port, e.g. 127.0.0.1:8080"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"has port {port!r}; a port is a number from 1 to 65535"
    if host.startswith("["):
        if not host.endswith("]") or ":" not in host:
            return "must write an IPv6 host in brackets, e.g. [::1]:8080"
        return ""
    if ":" in host:
        return "must write an IPv6 host in brackets, e.g. [::1]:8080"
    if not _HOSTNAME.match(host):
        return f"has host {host!r}, which is not an IP address or host name"
    return ""


def _serve_limits(entry: TableReader) -> dict[str, Any]:
    """The listener limits ``entry`` sets, as ``Serve`` keywords; the rest keep their defaults.

    A limit that does not apply to the listener's protocol (``heartbeat-s`` on
    http) is still accepted, so one block of limits can be copied between
    listeners.
    """
    limits: dict[str, Any] = {}
    for key, (low, high) in _SERVE_INTEGER_LIMITS:
        value = entry.integer(key, low, high)
        if value is not None:
            limits[key.replace("-", "_")] = value
    for key, (low_s, high_s) in _SERVE_SECONDS_LIMITS:
        seconds = _seconds(entry, key, low_s, high_s)
        if seconds is not None:
            limits[key.replace("-", "_")] = seconds
    return limits


def _seconds(table: TableReader, key: str, low: float, high: float) -> float | None:
    """A duration in ``low..high`` seconds (inclusive; an integer or a float), or None."""
    if key not in table.values:
        return None
    value = table.values[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        table.error(
            key,
            f"'{key}' must be a number of seconds from {low:g} to {high:g}, not {describe(value)}",
        )
        return None
    return float(value)


def _normal(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"{host.lower()}:{int(port)}" if port.isdigit() else address
