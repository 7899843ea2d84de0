"""The resolved manifest: frozen, typed objects with every default.

Runs in: any (built in the main process, inherited by workers across fork).

These are the shapes the rest of rusmd reads; nothing here parses TOML
(``rusmd.config.loader`` does). Every field lists its default. A field
that holds a manifest key repeats the default declared for that key in
``rusmd.config.settings`` (the help, type and range live there); a unit
test holds the fields, their defaults and these docstrings to the
declarations.
"""

from __future__ import annotations

import enum

import msgspec


class Profile(enum.StrEnum):
    """The throughput dial: how many workers to fork from the usable cores."""

    LIGHT = "light"
    BALANCED = "balanced"
    MAX = "max"


class LogLevel(enum.StrEnum):
    """``[log].level``; cumulative, ``off`` shows nothing."""

    OFF = "off"
    ERROR = "error"
    WARN = "warn"
    INFO = "info"
    DEBUG = "debug"


class Protocol(enum.StrEnum):
    """What a ``[[serve]]`` listener speaks."""

    HTTP = "http"
    SSE = "sse"
    WS = "ws"


class BuiltinCapability(enum.StrEnum):
    """The three built-in capability profiles."""

    SANDBOXED = "sandboxed"
    NETWORK_CLIENT = "network-client"
    TRUSTED = "trusted"


class Node(msgspec.Struct, frozen=True, kw_only=True):
    """``[node]``: the node's own settings.

    Attributes:
        listen: Address of the node endpoint (attach stream, dashboard).
            Optional; defaults to ``"127.0.0.1:4000"``.
        profile: Worker-count dial. Optional; defaults to ``balanced``.
        ticks_per_second: Snapshot rate, 10–60. Optional; defaults to 20.
        auth_token_env: Name of the environment variable holding the node
            endpoint's token; required for a non-loopback ``listen``.
            Optional; defaults to None (no token: loopback only).
        store: Absolute path of the LMDB store file, resolved against the
            app dir. Optional; defaults to None (no store).
        compile_timeout_s: Wall-clock limit on compiling one module (the
            compile child is killed past it). Optional; defaults to 60.
        compile_memory_mb: Resident-memory limit of the compile child.
            Optional; defaults to 2048.
        max_processes: Processes one worker may hold at once; sizes its
            instance pool. Optional; defaults to 8000.
    """

    listen: str = "127.0.0.1:4000"
    profile: Profile = Profile.BALANCED
    ticks_per_second: int = 20
    auth_token_env: str | None = None
    store: str | None = None
    compile_timeout_s: int = 60
    compile_memory_mb: int = 2048
    max_processes: int = 8000


class Log(msgspec.Struct, frozen=True, kw_only=True):
    """``[log]``: one level gates lifecycle lines, guest logs and the access log.

    Attributes:
        level: Optional; defaults to ``off``.
    """

    level: LogLevel = LogLevel.OFF


class Route(msgspec.Struct, frozen=True, kw_only=True):
    """One ``[serve.routes]`` entry, ``"METHOD /path" = "component#action"``.

    Attributes:
        method: Uppercase HTTP method.
        path: The route path as declared (``/users/:id``).
        component: The handler component's name.
        action: The exported action to invoke.
    """

    method: str
    path: str
    component: str
    action: str


class Serve(msgspec.Struct, frozen=True, kw_only=True):
    """``[[serve]]``: one listener on its own TCP port.

    Attributes:
        protocol: ``http``, ``sse`` or ``ws``. Required.
        listen: ``host:port`` to bind. Required.
        routes: This listener's routes, in declaration order. Optional;
            defaults to none (then ``name`` is required).
        name: The single handler component of a routes-less listener.
            Optional; defaults to None.
        source: Where the handler's JS bundle comes from (``https://…``,
            ``url:…`` or ``kv:<bucket>/<key>``). Optional; defaults to None.
        max_connections: Open connections per worker on this listener; past
            it a new connection gets 503 with Retry-After at once and a clean
            close. Optional; defaults to 4096.
        max_url_bytes: Length of the request target; past it 414.
            Optional; defaults to 8192.
        max_header_bytes: Total bytes of the request's header names and
            values; past it 431. Optional; defaults to 16384.
        max_headers: Number of request headers; past it 431. Optional;
            defaults to 100.
        max_body_bytes: Request body after de-chunking; past it 413 (http
            and sse). Optional; defaults to 1048576 (1 MiB).
        header_timeout_s: Time to receive the whole request head once its
            first byte arrived; past it 408 and the connection is closed.
            Optional; defaults to 10.0.
        body_timeout_s: Time to receive the whole request body; past it 408
            and the connection is closed. Optional; defaults to 30.0.
        idle_timeout_s: An idle keep-alive connection is closed after this.
            Optional; defaults to 5.0.
        timeout_s: Wall-clock budget of one HTTP handler; past it 504 (the
            CPU budget is the profile's ``max_cpu_ms``). Optional; defaults
            to 30.0.
        heartbeat_s: A stream idle this long gets a keep-alive: an SSE
            comment line, a WS ping. Optional; defaults to 15.0.
        max_message_bytes: Largest incoming WS message; past it the socket
            closes with 1009. Optional; defaults to 1048576 (1 MiB).
        retry_after_s: The ``Retry-After`` value sent with a 503. Optional;
            defaults to 1.

    The limit keys are accepted on every listener, whatever its protocol;
    one that does not apply to it (``heartbeat_s`` on http,
    ``max_message_bytes`` on http or sse, ``max_body_bytes`` on ws) is
    ignored without a warning.
    """

    protocol: Protocol
    listen: str
    routes: tuple[Route, ...] = ()
    name: str | None = None
    source: str | None = None
    max_connections: int = 4096
    max_url_bytes: int = 8192
    max_header_bytes: int = 16384
    max_headers: int = 100
    max_body_bytes: int = 1048576
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 5.0
    timeout_s: float = 30.0
    heartbeat_s: float = 15.0
    max_message_bytes: int = 1048576
    retry_after_s: int = 1


class Preopen(msgspec.Struct, frozen=True, kw_only=True):
    """A host directory mounted in the sandbox.

    Attributes:
        host: Absolute host path, resolved against the app dir. Required.
        guest: Path the guest sees. Required.
        read_only: Optional; defaults to True (default-deny).
    """

    host: str
    guest: str
    read_only: bool = True


class Capability(msgspec.Struct, frozen=True, kw_only=True):
    """A resolved capability profile: what a process may do.

    Attributes:
        name: The profile's name (built-in or ``[capabilities.<name>]``).
        inherits: The built-in base. Optional; defaults to ``sandboxed``.
        allow_network: Outbound network. Default from the base.
        allow_spawn: Spawn components by name. Default from the base.
        allow_process_control: Act on other pids. Default from the base.
        allow_stdio: The host's raw stdio. Default from the base.
        allow_storage: The node store (kv). Default from the base.
        max_memory_mb: Per-process heap ceiling. Default from the base.
        max_cpu_ms: CPU budget of one call into the guest (its entry, a
            request handler, one message); past it the process is killed
            with reason crashed (cpu limit). Default from the base (1000).
        env: Env keys granted. Optional; defaults to none.
        preopen: Host dirs mounted. Optional; defaults to none.
    """

    name: str
    inherits: BuiltinCapability = BuiltinCapability.SANDBOXED
    allow_network: bool = False
    allow_spawn: bool = False
    allow_process_control: bool = False
    allow_stdio: bool = False
    allow_storage: bool = False
    max_memory_mb: int = 64
    max_cpu_ms: int = 1000
    env: tuple[str, ...] = ()
    preopen: tuple[Preopen, ...] = ()

    def grants(self) -> str:
        """The grant summary shown on spawn lines: ``net spawn storage env=2 mem=128M``."""
        words = [
            word
            for word, granted in (
                ("net", self.allow_network),
                ("spawn", self.allow_spawn),
                ("control", self.allow_process_control),
                ("stdio", self.allow_stdio),
                ("storage", self.allow_storage),
            )
            if granted
        ]
        if self.env:
            words.append(f"env={len(self.env)}")
        if self.preopen:
            words.append(f"fs={len(self.preopen)}")
        words.append(f"mem={self.max_memory_mb}M")
        return " ".join(words)


BUILTIN_CAPABILITIES: dict[BuiltinCapability, Capability] = {
    BuiltinCapability.SANDBOXED: Capability(name="sandboxed"),
    BuiltinCapability.NETWORK_CLIENT: Capability(
        name="network-client",
        inherits=BuiltinCapability.NETWORK_CLIENT,
        allow_network=True,
    ),
    BuiltinCapability.TRUSTED: Capability(
        name="trusted",
        inherits=BuiltinCapability.TRUSTED,
        allow_network=True,
        allow_spawn=True,
        allow_process_control=True,
        allow_stdio=True,
        allow_storage=True,
        max_memory_mb=1024,
    ),
}
"""The built-ins: sandboxed (CPU + 64 MiB heap only), network-client
(+ outbound network), trusted (+ stdio, spawn, process-control, storage,
1 GiB heap)."""


class Component(msgspec.Struct, frozen=True, kw_only=True):
    """``[components.<name>]``: a registered component.

    Attributes:
        name: The table key; the artifact is ``wasm/<name>.{qjsbc,js,wasm}``.
        capability: The profile name as declared. Optional; defaults to
            ``sandboxed``.
        profile: The profile it runs under after resolution (an unknown
            name falls back to ``sandboxed`` with a warning).
        resident: Boot-spawned and supervised. Optional; defaults to False.
        source: Where its JS bundle comes from instead of ``wasm/``.
            Optional; defaults to None.
        restart: A resident's restart type (permanent, transient,
            temporary). Optional; defaults to permanent.
        intensity: A resident's restarts allowed within ``period_s`` before
            it is quarantined. Optional; defaults to 3.
        period_s: The window for ``intensity``, in seconds. Optional;
            defaults to 5.
        pre_initialize: A reactor's start-up runs once, at compile time,
            and every instance starts from the memory it left. Optional;
            defaults to True.
    """

    name: str
    capability: str = "sandboxed"
    profile: Capability = BUILTIN_CAPABILITIES[BuiltinCapability.SANDBOXED]
    resident: bool = False
    source: str | None = None
    restart: str = "permanent"
    intensity: int = 3
    period_s: int = 5
    pre_initialize: bool = True


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """A validated, resolved ``rusm.toml`` with flags layered on top.

    Attributes:
        path: Absolute path of the manifest file ("" when built from defaults).
        app_dir: The manifest's directory; relative paths resolve against it.
        node: ``[node]``.
        log: ``[log]``.
        serve: Every ``[[serve]]`` listener, in file order.
        capabilities: Every custom ``[capabilities.<name>]``, resolved.
        components: Every ``[components.<name>]``, plus the implicit
            sandboxed component a single-handler listener names without
            declaring it.
        warnings: Non-fatal findings (`rusmd check` prints them).
    """

    path: str
    app_dir: str
    node: Node = Node()
    log: Log = Log()
    serve: tuple[Serve, ...] = ()
    capabilities: dict[str, Capability] = msgspec.field(default_factory=dict)
    components: dict[str, Component] = msgspec.field(default_factory=dict)
    warnings: tuple[str, ...] = ()
