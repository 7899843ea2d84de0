"""Every manifest key, declared once: name, table, type, default, range, help.

Runs in: any (plain frozen data; read by the loader in main and by the
reference generator).

The loader derives from these declarations the keys each table accepts
(and the did-you-mean suggestions for the rest), the type and range
checks with their messages, and the defaults of absent keys;
``rusmd.config.reference`` renders them as ``docs/settings.md``. Keys
whose values need more than a type and range check (addresses, paths,
routes, sources, env keys, mounts) are declared here too and checked
further by the loader. The frozen model (``rusmd.config.model``) repeats
each default as a typed field; a unit test holds the two equal.

A table's settings are listed in the order the reference shows them and
an unknown key's error lists them (``valid: …``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from rusmd.config.model import BuiltinCapability, LogLevel, Profile, Protocol
from rusmd.supervision.spec import RestartType


class Kind(enum.StrEnum):
    """A setting's TOML type, as the loader checks it."""

    STRING = "string"
    BOOLEAN = "boolean"
    INTEGER = "integer"
    SECONDS = "seconds"  # an integer or a float
    CHOICE = "choice"  # a string, one of an enum's values
    STRING_ARRAY = "string-array"
    TABLE = "table"
    TABLE_ARRAY = "table-array"


@dataclass(frozen=True)
class Setting:
    """One manifest key: what the loader checks and the reference shows.

    Attributes:
        name: The key as written in ``rusm.toml`` (``max-connections``).
        kind: Its TOML type.
        help: What it does, in Markdown, for the reference.
        default: Its value when absent, as the model holds it. Optional;
            defaults to None.
        range: Inclusive ``(low, high)`` bounds of an integer or seconds
            setting. Optional; defaults to None.
        range_note: Said after the bounds in an out-of-range error.
            Optional; defaults to "".
        choices: The enum whose values a choice setting accepts. Optional;
            defaults to None.
        required: The table is invalid without it. Optional; defaults to
            False.
        inherited: A capability grant or limit whose absent value comes
            from the profile's ``inherits`` base (``default`` is then the
            ``sandboxed`` value). Optional; defaults to False.
    """

    name: str
    kind: Kind
    help: str
    default: Any = None
    range: tuple[float, float] | None = None
    range_note: str = ""
    choices: type[enum.StrEnum] | None = None
    required: bool = False
    inherited: bool = False

    @property
    def field(self) -> str:
        """The model attribute holding the value (``max_connections``)."""
        return self.name.replace("-", "_")


@dataclass(frozen=True)
class Section:
    """One table of the manifest and the keys it accepts.

    Attributes:
        header: The table as written (``[node]``, ``[[serve]]``,
            ``[components.<name>]``).
        help: What the table is for, in Markdown, for the reference.
        settings: Its keys, in reference order.
    """

    header: str
    help: str
    settings: tuple[Setting, ...]

    def names(self) -> tuple[str, ...]:
        """The name of every key this table accepts."""
        return tuple(setting.name for setting in self.settings)

    def limits(self) -> tuple[Setting, ...]:
        """The settings with a range (integers and seconds)."""
        return tuple(setting for setting in self.settings if setting.range is not None)

    def __getitem__(self, name: str) -> Setting:
        for setting in self.settings:
            if setting.name == name:
                return setting
        raise KeyError(f"{self.header} declares no setting {name!r}")


ROOT = Section(
    "the top level",
    "The tables a manifest may have; any other is an error. Every table is optional.",
    (
        Setting("node", Kind.TABLE, "The node's own settings: `[node]`."),
        Setting("log", Kind.TABLE, "Logging: `[log]`."),
        Setting("serve", Kind.TABLE_ARRAY, "The listeners, one `[[serve]]` per TCP port."),
        Setting(
            "capabilities",
            Kind.TABLE,
            "Custom capability profiles, one `[capabilities.<name>]` each.",
        ),
        Setting("components", Kind.TABLE, "Registered components, one `[components.<name>]` each."),
    ),
)

NODE = Section(
    "[node]",
    "The node itself: its endpoint, how many workers it forks, its store and its compile limits.",
    (
        Setting(
            "listen",
            Kind.STRING,
            "Address (`host:port`) of the node endpoint: attach stream, dashboard, JSON API. "
            "Not a serving port; `[[serve]]` listeners bind their own. `--listen` overrides it.",
            default="127.0.0.1:4000",
        ),
        Setting(
            "profile",
            Kind.CHOICE,
            "How many workers to fork from the usable cores: `light` ≈ ¼, `balanced` ≈ ⅖, "
            "`max` ≈ ½, never fewer than 1. `--profile` overrides it.",
            default=Profile.BALANCED,
            choices=Profile,
        ),
        # The snapshot rate the node endpoint can sustain: 10–60 Hz.
        Setting(
            "ticks_per_second",
            Kind.INTEGER,
            "Snapshot rate of the node endpoint.",
            default=20,
            range=(10, 60),
        ),
        Setting(
            "auth-token-env",
            Kind.STRING,
            "Name of the environment variable (set in the environment or the app's `.env`) "
            "holding the node endpoint's token. With it, the page, the API, the attach stream "
            "and `/metrics` answer 401 without `Authorization: Bearer <token>` (or `?token=`). "
            "Required when `listen` is not a loopback address.",
        ),
        Setting(
            "store",
            Kind.STRING,
            "Path of the node's durable key-value store (one LMDB file), resolved against the "
            "app dir. Needed by `allow-storage` grants and `kv:` sources; absent, there is none.",
        ),
        # Compile limits: long enough for a large JS engine, short enough to notice.
        Setting(
            "compile-timeout-s",
            Kind.INTEGER,
            "Wall-clock limit on compiling one module, in seconds; the compile child is "
            "killed past it.",
            default=60,
            range=(1, 3600),
        ),
        Setting(
            "compile-memory-mb",
            Kind.INTEGER,
            "Resident-memory limit of the compile child, in MiB.",
            default=2048,
            range=(64, 65536),
        ),
        # Each process a worker may hold reserves address space and memory
        # maps up front (docs/operations.md, "Capacity"): the ceiling keeps a
        # typo from asking for a pool no x86-64 address space can hold.
        Setting(
            "max-processes",
            Kind.INTEGER,
            "Processes one worker may hold at once (residents, spawned children, supervisor "
            "children, WebSocket and SSE connections, non-inline HTTP handlers); it sizes the "
            "worker's instance pool. A spawn past it fails with `limit`. Above about 16,000 "
            "each process's memory reservation shrinks to the largest `max-memory-mb` and guest "
            "memory accesses are bounds-checked; past what `vm.max_map_count` or the address "
            "space can back, the worker holds fewer and logs a warning (docs/operations.md, "
            '"Capacity").',
            default=8000,
            range=(1, 1_000_000),
        ),
    ),
)

LOG = Section(
    "[log]",
    "One level gates lifecycle lines (spawn, exit), guest logs and the access log.",
    (
        Setting(
            "level",
            Kind.CHOICE,
            "Cumulative (`info` shows errors and warnings too); `off` shows nothing.",
            default=LogLevel.OFF,
            choices=LogLevel,
        ),
    ),
)

# Listener limits: each bounds what one client can make a worker hold or wait
# for; the floors keep a listener usable, the ceilings keep a typo from
# switching a limit off.
# Head, body, idle and handler timeouts: a client trickling bytes (slowloris),
# idle keep-alive sockets held open, a handler that never answers.
_LISTENER_TIMEOUT_S = (0.1, 3600.0)

SERVE = Section(
    "[[serve]]",
    "One TCP listener each. HTTP and SSE run a fresh sandboxed instance per request, WS one "
    "process per connection. Every limit key is accepted on every listener; one that does not "
    "apply to its protocol is ignored without a warning, so one block of limits can be copied "
    "between listeners.",
    (
        Setting(
            "protocol",
            Kind.CHOICE,
            "What the listener speaks.",
            choices=Protocol,
            required=True,
        ),
        Setting(
            "listen",
            Kind.STRING,
            "`host:port` to bind (IPv6 as `[::1]:8080`); no two listeners, nor a listener and "
            "`[node].listen`, may share one.",
            required=True,
        ),
        Setting(
            "name",
            Kind.STRING,
            "The one handler component of a listener without routes (a `ws` listener must "
            "have one): letters, digits, `-` or `_`. Without a `[components.<name>]` it runs "
            "`sandboxed`.",
        ),
        Setting(
            "source",
            Kind.STRING,
            "Where the handler's JS bundle comes from instead of `wasm/<name>.*`: `https://…`, "
            "`http://…`, `url:<url>` or `kv:<bucket>/<key>` (needs `[node].store`).",
        ),
        Setting(
            "routes",
            Kind.TABLE,
            '`[serve.routes]`: `"METHOD /path" = "component#action"` entries. A path segment is '
            "a literal, `:param` or a trailing `*`; the most specific route wins, whatever the "
            "order. Set `routes` or `name`, not both; `ws` listeners ignore routes.",
            default=(),
        ),
        # Open connections per worker: file descriptors and per-connection buffers,
        # and how long each admitted client waits its turn on the worker's loop.
        Setting(
            "max-connections",
            Kind.INTEGER,
            "Open connections per worker on this listener; past it a new connection gets 503 "
            "with `Retry-After` at once and a clean close. One worker serves 4,096 keep-alive "
            "clients at its full rate with none refused or reset, each request waiting its "
            "turn (about 0.3 s at 4,096 on two cores, growing with the count); each "
            "connection holds a file descriptor, and rusmd raises its open-files soft limit "
            "to fit.",
            default=4096,
            range=(1, 100_000),
        ),
        # The request target is buffered whole before routing.
        Setting(
            "max-url-bytes",
            Kind.INTEGER,
            "Length of the request target; past it 414.",
            default=8192,
            range=(256, 1 << 20),
        ),
        # The request head is buffered whole; the count bounds per-header parse work.
        Setting(
            "max-header-bytes",
            Kind.INTEGER,
            "Total bytes of the request's header names and values; past it 431.",
            default=16384,
            range=(1024, 1 << 20),
        ),
        Setting(
            "max-headers",
            Kind.INTEGER,
            "Number of request headers; past it 431.",
            default=100,
            range=(1, 1000),
        ),
        # The body is held in memory before the handler sees it.
        Setting(
            "max-body-bytes",
            Kind.INTEGER,
            "http, sse: the request body after de-chunking; past it 413.",
            default=1048576,
            range=(0, 1 << 30),
        ),
        Setting(
            "header-timeout-s",
            Kind.SECONDS,
            "Time to receive the whole request head once its first byte arrived; past it 408 "
            "and the connection is closed.",
            default=10.0,
            range=_LISTENER_TIMEOUT_S,
        ),
        Setting(
            "body-timeout-s",
            Kind.SECONDS,
            "Time to receive the whole request body; past it 408 and the connection is closed. "
            "A client that reads none of its responses this long is cut off.",
            default=30.0,
            range=_LISTENER_TIMEOUT_S,
        ),
        Setting(
            "idle-timeout-s",
            Kind.SECONDS,
            "An idle keep-alive connection is closed after this.",
            default=5.0,
            range=_LISTENER_TIMEOUT_S,
        ),
        Setting(
            "timeout-s",
            Kind.SECONDS,
            "Wall-clock budget of one HTTP handler; past it 504 (its CPU budget is the "
            "profile's `max-cpu-ms`).",
            default=30.0,
            range=_LISTENER_TIMEOUT_S,
        ),
        # A heartbeat under a second would flood every open stream with keep-alives.
        Setting(
            "heartbeat-s",
            Kind.SECONDS,
            "A stream idle this long gets a keep-alive: an sse comment line, a ws ping.",
            default=15.0,
            range=(1.0, 3600.0),
        ),
        # One incoming WS message is buffered whole before delivery.
        Setting(
            "max-message-bytes",
            Kind.INTEGER,
            "ws: the largest incoming message; past it the socket closes with 1009.",
            default=1048576,
            range=(1, 1 << 26),
        ),
        # How long a client refused with 503 is told to wait.
        Setting(
            "retry-after-s",
            Kind.INTEGER,
            "The `Retry-After` value sent with a 503, in seconds.",
            default=1,
            range=(0, 3600),
        ),
    ),
)


def _grant(name: str, help_text: str) -> Setting:
    return Setting(name, Kind.BOOLEAN, help_text, default=False, inherited=True)


CAPABILITY = Section(
    "[capabilities.<name>]",
    "A custom capability profile: it inherits a built-in (`sandboxed`: CPU and a 64 MiB heap "
    "only; `network-client`: + outbound network; `trusted`: + stdio, spawn, process control, "
    "storage, a 1 GiB heap) and overrides only what it sets. Its name may not be a built-in's.",
    (
        Setting(
            "inherits",
            Kind.CHOICE,
            "The built-in profile it starts from.",
            default=BuiltinCapability.SANDBOXED,
            choices=BuiltinCapability,
        ),
        _grant("allow-network", "Outbound network (fetch)."),
        _grant("allow-spawn", "Spawn components by name."),
        _grant("allow-process-control", "Act on other pids: kill, list, inspect."),
        _grant("allow-stdio", "The host's raw stdout and stdin (logging never needs it)."),
        _grant("allow-storage", "The node store (kv); without `[node].store` kv calls fail."),
        # wasm32 addresses at most 4 GiB, so a larger heap ceiling cannot be honoured.
        Setting(
            "max-memory-mb",
            Kind.INTEGER,
            "Per-process heap ceiling, in MiB.",
            default=64,
            range=(1, 4096),
            range_note=" (wasm32 addresses at most 4 GiB)",
            inherited=True,
        ),
        # A per-call CPU budget: at least one epoch tick, at most an hour.
        Setting(
            "max-cpu-ms",
            Kind.INTEGER,
            "CPU budget of one call into the guest (its entry, a request handler, one message), "
            "in ms; past it the process exits `crashed` (cpu limit).",
            default=1000,
            range=(10, 3_600_000),
            inherited=True,
        ),
        Setting(
            "env",
            Kind.STRING_ARRAY,
            "Env keys granted, each a variable name listed once; values come from the process "
            "environment, then the app dir's `.env`.",
            default=(),
        ),
        Setting(
            "preopen",
            Kind.TABLE_ARRAY,
            "Host directories mounted in the sandbox, `{ host, guest, read-only }` each.",
            default=(),
        ),
    ),
)

PREOPEN = Section(
    "preopen = [{ … }]",
    "One host directory mounted in the sandbox, an entry of a capability profile's `preopen`.",
    (
        Setting(
            "host",
            Kind.STRING,
            "The host directory, resolved against the app dir.",
            required=True,
        ),
        Setting(
            "guest",
            Kind.STRING,
            "The absolute path the guest sees it at; each is mounted once.",
            required=True,
        ),
        Setting(
            "read-only",
            Kind.BOOLEAN,
            "Whether the guest may only read it (default-deny).",
            default=True,
        ),
    ),
)

COMPONENT = Section(
    "[components.<name>]",
    "A registered component; its name (letters, digits, `-` or `_`) names the artifact, "
    "`wasm/<name>.{qjsbc,js,wasm}`, tried in that order.",
    (
        Setting(
            "capability",
            Kind.STRING,
            "A built-in profile or a `[capabilities.<name>]`; an unknown name falls back to "
            "`sandboxed` with a warning.",
            default="sandboxed",
        ),
        Setting(
            "resident",
            Kind.BOOLEAN,
            "Boot-spawned, registered under its name and supervised; otherwise spawned on "
            "demand (per request or by name).",
            default=False,
        ),
        Setting(
            "source",
            Kind.STRING,
            "Where its JS bundle comes from instead of `wasm/<name>.*`: `https://…`, `http://…`, "
            "`url:<url>` or `kv:<bucket>/<key>` (needs `[node].store`).",
        ),
        Setting(
            "restart",
            Kind.CHOICE,
            "Residents only: when an exited resident is restarted (`permanent`: always; "
            "`transient`: after an abnormal exit; `temporary`: never).",
            default=RestartType.PERMANENT,
            choices=RestartType,
        ),
        # A resident's restart budget: restarts within a period, and the period.
        Setting(
            "intensity",
            Kind.INTEGER,
            "Residents only: restarts allowed within `period-s` before the resident is "
            "quarantined with backoff.",
            default=3,
            range=(0, 1000),
        ),
        Setting(
            "period-s",
            Kind.INTEGER,
            "Residents only: the window for `intensity`, in seconds.",
            default=5,
            range=(1, 3600),
        ),
        Setting(
            "pre-initialize",
            Kind.BOOLEAN,
            "Reactors only (a module that exports `_initialize`, not `_start`): run its "
            "start-up (libc, C constructors) once, when it is compiled, and give every fresh "
            "instance the memory it left, instead of running it in each instance. A start-up "
            "that calls an import (environment, files, clock, randomness, a `rusm` function) "
            "is not snapshotted and runs per instance; the compile log says why. Needs Wizer "
            "(`make tools`); `false` runs the start-up per instance.",
            default=True,
        ),
    ),
)

SECTIONS = (ROOT, NODE, LOG, SERVE, CAPABILITY, PREOPEN, COMPONENT)
"""Every table shape, in reference order."""
