"""Load ``rusm.toml``: validate every table and key, then resolve.

Runs in: main (``rusmd``, ``rusmd check``).

Which keys each table accepts, their types, ranges and defaults come from
the declarations in ``rusmd.config.settings``; this module adds the checks
a type and a range cannot express (addresses, paths, routes, sources, env
keys, mounts, the rules between keys) and builds the frozen model.

Layering: built-in defaults → the file → flags (``--listen``,
``--profile``). Relative paths resolve against the app dir (the
manifest's directory). Every problem in the file is collected and
raised once as a ``ConfigError``, one line each:

    rusm.toml:14: components.api: unknown key 'capabilty' (did you mean 'capability'?)
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
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
    Manifest,
    Node,
    Preopen,
    Profile,
    Protocol,
    Route,
    Serve,
)
from rusmd.config.reader import Problems, TableReader, did_you_mean, format_path
from rusmd.config.routes import RouteTable, parse_route_key, parse_route_target
from rusmd.config.settings import (
    CAPABILITY,
    COMPONENT,
    LOG,
    NODE,
    PREOPEN,
    ROOT,
    SERVE,
    Setting,
)
from rusmd.errors import ConfigError, ConfigProblem, RouteError

# A bespoke check of a key's typed value: the value to keep, or None when
# it is rejected (the check has reported why).
Check = Callable[[Any], Any]

# Every key a capability profile accepts (docs/abi.md tabulates the grants).
CAPABILITY_KEYS = CAPABILITY.names()

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
        root.check_keys(ROOT.names(), what="table")
        node = self._node(root.read(ROOT["node"]), overrides)
        log = self._log(root.read(ROOT["log"]))
        capabilities = self._capabilities(root.read(ROOT["capabilities"]), node)
        components = self._components(root.read(ROOT["components"]), capabilities, node)
        serve = self._serve_list(root, components, node)
        self._check_addresses(node, serve, overrides)
        for listener in serve:
            if listener.name and listener.name not in components:
                # A single handler with no [components.<name>] runs sandboxed.
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
            table.check_keys(NODE.names())
            checks: dict[str, Check] = {
                "listen": lambda listen: self._address(table, "listen", listen),
                "store": lambda store: self._store(table, store),
            }
            node = Node(**_read_settings(table, NODE.settings, checks))
        if overrides.listen is not None:
            flags = TableReader(Problems("--listen", self.problems.lines), (), {})
            if self._address_ok(flags, None, overrides.listen):
                node = structs.replace(node, listen=overrides.listen)
            self.problems.errors.extend(flags.problems.errors)
        if overrides.profile is not None:
            node = structs.replace(node, profile=overrides.profile)
        self._check_endpoint_auth(node)
        return node

    def _check_endpoint_auth(self, node: Node) -> None:
        """A node endpoint off loopback needs a token: it can change the pool and read logs."""
        where = ("node", "auth-token-env")
        name = node.auth_token_env
        if name is not None and not _ENV_KEY.match(name):
            self.problems.error(
                where, ("node",), f"'auth-token-env' {name!r} is not an environment variable name"
            )
            return
        if name is None:
            if not is_loopback(node.listen):
                self.problems.error(
                    ("node", "listen"),
                    ("node",),
                    f"'listen' address {node.listen} is not loopback; the node endpoint can "
                    "change the worker pool and read the logs, so set [node] auth-token-env to "
                    "the name of an environment variable holding a token (or listen on "
                    "127.0.0.1)",
                )
            return
        if self.environment is not None and not self.environment.get(name):
            unset = (
                f"'auth-token-env' names {name}, which is set neither in the environment nor "
                ".env (or is empty)"
            )
            if is_loopback(node.listen):
                # Fails closed: the endpoint then answers 401 to everything.
                self.problems.warn(
                    where, ("node",), f"{unset}; the node endpoint will answer 401 to every request"
                )
            else:
                self.problems.error(where, ("node",), unset)

    def _log(self, table: TableReader | None) -> Log:
        if table is None:
            return Log()
        table.check_keys(LOG.names())
        return Log(**_read_settings(table, LOG.settings))

    def _store(self, table: TableReader, store: str) -> str | None:
        if store.strip():
            return str(self._resolve(store))
        table.error("store", "'store' must be a file path, not an empty string")
        return None

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
        table.check_keys(CAPABILITY.names())
        checks: dict[str, Check] = {
            "env": lambda keys: self._env_keys(table, keys),
            "preopen": self._preopens,
        }
        values = _read_settings(table, CAPABILITY.settings, checks)
        inherits = values.pop("inherits", CAPABILITY["inherits"].default)
        base = BUILTIN_CAPABILITIES[inherits]
        for setting in CAPABILITY.settings:
            if setting.inherited:
                values.setdefault(setting.field, getattr(base, setting.field))
        capability = Capability(name=name, inherits=inherits, **values)
        if capability.allow_storage and node.store is None:
            table.warn(
                "allow-storage" if "allow-storage" in table.values else "inherits",
                "grants allow-storage but [node] sets no store; "
                "kv calls will fail with 'no store configured'",
            )
        return capability

    def _env_keys(self, table: TableReader, keys: list[str]) -> tuple[str, ...]:
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

    def _preopens(self, entries: list[TableReader]) -> tuple[Preopen, ...]:
        mounts: list[Preopen] = []
        for entry in entries:
            entry.check_keys(PREOPEN.names())
            values = _read_settings(entry, PREOPEN.settings)
            host, guest = values.get("host"), values.get("guest")
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
            read_only = values.get("read_only", PREOPEN["read-only"].default)
            mounts.append(Preopen(host=str(self._resolve(host)), guest=guest, read_only=read_only))
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
            components[name] = self._component(name, entry, capabilities, node)
        return components

    def _component(
        self, name: str, entry: TableReader, capabilities: dict[str, Capability], node: Node
    ) -> Component:
        entry.check_keys(COMPONENT.names())
        checks: dict[str, Check] = {"source": lambda source: self._source(entry, node, source)}
        # `resident` is read apart: whether the resident-only keys apply hangs on it.
        values = _read_settings(
            entry, (s for s in COMPONENT.settings if s.name != "resident"), checks
        )
        resident = bool(entry.read(COMPONENT["resident"]))
        # An empty name is no name: the component runs under the default profile.
        declared = values.pop("capability", None) or COMPONENT["capability"].default
        profile = self._profile_for(entry, declared, capabilities)
        if not resident:
            for key in ("restart", "intensity", "period-s"):
                if key in entry.values:
                    entry.warn(key, f"'{key}' only applies to resident components")
        restart = values.pop("restart", COMPONENT["restart"].default)
        return Component(
            name=name,
            capability=declared,
            profile=profile,
            resident=resident,
            restart=str(restart),
            **values,
        )

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

    def _source(self, entry: TableReader, node: Node, source: str) -> str | None:
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
        entries = root.read(ROOT["serve"])
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
        entry.check_keys(SERVE.names())
        checks: dict[str, Check] = {
            "listen": lambda listen: self._address(entry, "listen", listen),
            "name": lambda name: self._handler_name(entry, name),
            "source": lambda source: self._source(entry, node, source),
            "routes": lambda table: self._routes(table, components),
        }
        values = _read_settings(entry, (s for s in SERVE.settings if s.range is None), checks)
        protocol = values.get("protocol")
        has_routes = "routes" in entry.values
        if protocol is Protocol.WS:
            if values.get("name") is None and "name" not in entry.values:
                entry.error(None, "a ws listener needs 'name' (its one handler component)")
            if has_routes:
                entry.warn("routes", "ws listeners ignore [serve.routes]")
                values.pop("routes", None)
        elif not has_routes and "name" not in entry.values:
            entry.error(None, "a listener needs [serve.routes] or 'name' (its one handler)")
        elif has_routes and "name" in entry.values:
            entry.error("name", "set either [serve.routes] or 'name', not both")
        # A limit that does not apply to the listener's protocol (heartbeat-s on
        # http) is still accepted, so one block of limits can be copied between
        # listeners.
        values.update(_read_settings(entry, SERVE.limits()))
        if protocol is None or "listen" not in values:
            return None
        return Serve(**values)

    def _handler_name(self, entry: TableReader, name: str) -> str | None:
        if _COMPONENT_NAME.match(name):
            return name
        entry.error("name", f"handler name {name!r} must be letters, digits, '-' or '_'")
        return None

    def _routes(self, table: TableReader, components: dict[str, Component]) -> tuple[Route, ...]:
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

    def _address(self, table: TableReader, key: str, address: str) -> str | None:
        return address if self._address_ok(table, key, address) else None

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


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` binds a loopback interface only (``localhost``, 127/8, ``[::1]``)."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


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


def _read_settings(
    table: TableReader, settings: Iterable[Setting], checks: Mapping[str, Check] | None = None
) -> dict[str, Any]:
    """The values ``table`` sets for ``settings``, in order, as model keywords.

    Each value is type- and range-checked as declared, then by its bespoke
    check in ``checks`` if it has one; absent and rejected values are left
    out, so the model's defaults fill them.
    """
    values: dict[str, Any] = {}
    for setting in settings:
        value = table.read(setting)
        check = (checks or {}).get(setting.name)
        if value is not None and check is not None:
            value = check(value)
        if value is not None:
            values[setting.field] = value
    return values


def _normal(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"{host.lower()}:{int(port)}" if port.isdigit() else address
