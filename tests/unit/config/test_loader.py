"""Manifest loading: every table and key, located errors, resolution."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from rusmd.config import Overrides, load_manifest
from rusmd.config.environment import Environment
from rusmd.config.model import (
    BuiltinCapability,
    LogLevel,
    Manifest,
    Profile,
    Protocol,
)
from rusmd.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
SEED_FIXTURES = sorted((REPO / "tests" / "fixtures" / "manifests").glob("*.toml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rusm.toml"
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, overrides: Overrides | None = None) -> Manifest:
    return load_manifest(write(tmp_path, text), overrides)


def problems(tmp_path: Path, text: str, overrides: Overrides | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, overrides)
    return [str(p) for p in caught.value.problems]


def only_problem(tmp_path: Path, text: str) -> str:
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    return found[0]


# ── defaults ──────────────────────────────────────────────────────────────


def test_empty_manifest_takes_every_seed_default(tmp_path: Path) -> None:
    manifest = load(tmp_path, "")
    assert manifest.node.listen == "127.0.0.1:4000"
    assert manifest.node.profile is Profile.BALANCED
    assert manifest.node.ticks_per_second == 20
    assert manifest.node.store is None
    assert manifest.log.level is LogLevel.OFF
    assert manifest.serve == ()
    assert manifest.components == {}
    assert manifest.app_dir == str(tmp_path)


def test_component_defaults_to_sandboxed_and_not_resident(tmp_path: Path) -> None:
    component = load(tmp_path, "[components.api]\n").components["api"]
    assert component.capability == "sandboxed"
    assert component.profile.name == "sandboxed"
    assert component.profile.max_memory_mb == 64
    assert not component.resident
    assert component.source is None


def test_manifest_objects_are_frozen(tmp_path: Path) -> None:
    manifest = load(tmp_path, "[node]\nprofile = 'max'\n")
    with pytest.raises(AttributeError):
        manifest.node.profile = Profile.LIGHT  # type: ignore[misc]


# ── the reference snippets ──────────────────────────────────────────────


@pytest.mark.parametrize("fixture", SEED_FIXTURES, ids=lambda p: p.stem)
def test_seed_snippet_loads(fixture: Path) -> None:
    load_manifest(fixture)


def test_seed_fixtures_cover_every_snippet() -> None:
    assert {p.stem for p in SEED_FIXTURES} >= {
        "at_a_glance",
        "log",
        "serve_routes",
        "capabilities_agent",
        "complete",
        "bundle_sourcing",
    }


def test_complete_manifest_resolves_as_the_seed_describes() -> None:
    manifest = load_manifest(REPO / "tests" / "fixtures" / "manifests" / "complete.toml")
    assert manifest.node.store == str(REPO / "tests" / "fixtures" / "manifests" / "data/app.redb")
    (listener,) = manifest.serve
    assert listener.protocol is Protocol.HTTP
    assert [(r.method, r.path, r.component, r.action) for r in listener.routes] == [
        ("GET", "/", "api", "home"),
        ("GET", "/users/:id", "api", "show"),
        ("POST", "/users", "api", "create"),
        ("GET", "/events", "api", "events"),
        ("GET", "/assets/*", "api", "assets"),
    ]
    caps = manifest.capabilities["api-caps"]
    assert caps.inherits is BuiltinCapability.NETWORK_CLIENT
    assert (caps.allow_network, caps.allow_storage, caps.allow_spawn) == (True, True, False)
    assert caps.max_memory_mb == 128
    assert caps.env == ("API_BASE_URL",)
    assert manifest.components["api"].profile == caps
    assert manifest.components["sessions"].resident
    assert manifest.components["sessions"].profile.max_memory_mb == 1024


# ── strictness: located errors ─────────────────────────────────────────────


def test_misspelled_component_key_names_file_line_table_and_suggestion(tmp_path: Path) -> None:
    line = only_problem(
        tmp_path,
        """\
        [components.api]
        capabilty = "x"
        """,
    )
    assert line == (
        f"{tmp_path / 'rusm.toml'}:2: components.api: unknown key 'capabilty' "
        "(did you mean 'capability'?)"
    )


def test_three_mistakes_give_three_lines_in_file_order(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        [node]
        profil = "max"

        [log]
        level = "loud"

        [components.api]
        resident = "yes"
        """,
    )
    assert len(found) == 3
    assert ":2: node: unknown key 'profil' (did you mean 'profile'?)" in found[0]
    assert ":5: log: 'level' is 'loud', not one of off, error, warn, info, debug" in found[1]
    assert ":8: components.api: 'resident' must be true or false, not string 'yes'" in found[2]


def test_unknown_table_is_an_error_with_suggestion(tmp_path: Path) -> None:
    assert "unknown table 'componets' (did you mean 'components'?)" in only_problem(
        tmp_path, "[componets.api]\n"
    )


def test_unknown_key_without_near_match_lists_valid_keys(tmp_path: Path) -> None:
    line = only_problem(tmp_path, "[log]\nzzz = 1\n")
    assert "unknown key 'zzz' (valid: level)" in line


def test_ticks_per_second_outside_range_is_an_error(tmp_path: Path) -> None:
    for value in (9, 61, "20", 20.0, True):
        rendered = f'"{value}"' if isinstance(value, str) else str(value).lower()
        line = only_problem(tmp_path, f"[node]\nticks_per_second = {rendered}\n")
        assert ":2: node: 'ticks_per_second' must be an integer from 10 to 60" in line


@pytest.mark.parametrize("value", [10, 60])
def test_ticks_per_second_bounds_are_accepted(tmp_path: Path, value: int) -> None:
    assert load(tmp_path, f"[node]\nticks_per_second = {value}\n").node.ticks_per_second == value


def test_bad_profile_names_valid_values(tmp_path: Path) -> None:
    assert "'profile' is 'fast', not one of light, balanced, max" in only_problem(
        tmp_path, '[node]\nprofile = "fast"\n'
    )


def test_wrong_type_for_table_is_an_error(tmp_path: Path) -> None:
    assert "'node' must be a table, not string 'x'" in only_problem(tmp_path, 'node = "x"\n')


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    line = only_problem(tmp_path, "[node]\nlisten = \n")
    assert line.startswith(f"{tmp_path / 'rusm.toml'}:2: ")


def test_repeated_key_names_the_second_definition(tmp_path: Path) -> None:
    line = only_problem(tmp_path, '[node]\nlisten = "a:1"\nprofile = "max"\nlisten = "b:2"\n')
    assert ":4: " in line and "listen" in line


def test_non_utf8_manifest_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "rusm.toml"
    path.write_bytes(b"[node]\nlisten = '\xff'\n")
    with pytest.raises(ConfigError, match=r":2: not valid UTF-8"):
        load_manifest(path)


def test_missing_manifest_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read: No such file"):
        load_manifest(tmp_path / "nope.toml")


# ── [[serve]] ──────────────────────────────────────────────────────────────


def test_listener_with_neither_routes_nor_name_is_an_error(tmp_path: Path) -> None:
    line = only_problem(
        tmp_path,
        """\
        [[serve]]
        protocol = "http"
        listen = "127.0.0.1:8080"
        """,
    )
    assert ":1: serve[0]: a listener needs [serve.routes] or 'name'" in line


def test_listener_missing_required_keys_names_each(tmp_path: Path) -> None:
    found = problems(tmp_path, '[[serve]]\nname = "api"\n')
    assert any("missing required key 'protocol'" in p for p in found)
    assert any("missing required key 'listen'" in p for p in found)


def test_route_must_name_a_declared_component(tmp_path: Path) -> None:
    line = only_problem(
        tmp_path,
        """\
        [[serve]]
        protocol = "http"
        listen = "127.0.0.1:8080"
        [serve.routes]
        "GET /" = "apii#home"
        [components.api]
        """,
    )
    assert ":5: serve[0].routes: route 'GET /' names component 'apii'" in line
    assert "(did you mean 'api'?)" in line


@pytest.mark.parametrize(
    ("route", "fragment"),
    [
        ('"get /" = "api#home"', "uppercase method"),
        ('"GET users" = "api#home"', "must start with '/'"),
        ('"GET /a/*/b" = "api#home"', "'*' may only be the last segment"),
        ('"GET /" = "api:home"', "the separator is '#', not ':'"),
        ('"GET /" = "api"', "expected 'component#action'"),
        ('"GET /" = 7', "must map to 'component#action'"),
    ],
)
def test_bad_route_is_reported_at_its_line(tmp_path: Path, route: str, fragment: str) -> None:
    line = only_problem(
        tmp_path,
        f"""\
        [[serve]]
        protocol = "http"
        listen = "127.0.0.1:8080"
        [serve.routes]
        {route}
        [components.api]
        """,
    )
    assert ":5: serve[0].routes: " in line
    assert fragment in line


def test_routes_with_the_same_shape_are_an_error(tmp_path: Path) -> None:
    line = only_problem(
        tmp_path,
        """\
        [[serve]]
        protocol = "http"
        listen = "127.0.0.1:8080"
        [serve.routes]
        "GET /users/:id" = "api#show"
        "GET /users/:name" = "api#other"
        [components.api]
        """,
    )
    assert "serve[0].routes" in line and "/users/:id" in line and "/users/:name" in line


def test_two_listeners_route_independently(tmp_path: Path) -> None:
    manifest = load(
        tmp_path,
        """\
        [[serve]]
        protocol = "http"
        listen = "127.0.0.1:8080"
        [serve.routes]
        "GET /" = "api#home"
        [[serve]]
        protocol = "http"
        listen = "127.0.0.1:9090"
        [serve.routes]
        "GET /" = "admin#home"
        [components.api]
        [components.admin]
        """,
    )
    assert [listener.routes[0].component for listener in manifest.serve] == ["api", "admin"]


def test_second_listener_errors_name_its_index_and_line(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        [[serve]]
        protocol = "http"
        listen = "127.0.0.1:8080"
        name = "api"
        [[serve]]
        protocol = "ws"
        listen = "127.0.0.1:8081"
        nmae = "chat"
        """,
    )
    assert found[0].endswith(":5: serve[1]: a ws listener needs 'name' (its one handler component)")
    assert found[1].endswith(":8: serve[1]: unknown key 'nmae' (did you mean 'name'?)")


def test_ws_listener_needs_a_name(tmp_path: Path) -> None:
    assert "a ws listener needs 'name'" in only_problem(
        tmp_path, '[[serve]]\nprotocol = "ws"\nlisten = "127.0.0.1:8081"\n'
    )


def test_routes_and_name_together_are_an_error(tmp_path: Path) -> None:
    line = only_problem(
        tmp_path,
        """\
        [[serve]]
        protocol = "http"
        listen = "127.0.0.1:8080"
        name = "api"
        [serve.routes]
        "GET /" = "api#home"
        [components.api]
        """,
    )
    assert "set either [serve.routes] or 'name', not both" in line


def test_single_handler_without_component_entry_runs_sandboxed(tmp_path: Path) -> None:
    manifest = load(
        tmp_path, '[[serve]]\nprotocol = "ws"\nlisten = "127.0.0.1:8081"\nname = "chat"\n'
    )
    assert manifest.components["chat"].profile.name == "sandboxed"


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("8080", "must be host:port"),
        ("127.0.0.1:0", "port '0'"),
        ("127.0.0.1:70000", "port '70000'"),
        ("127.0.0.1:http", "port 'http'"),
        ("::1:8080", "IPv6 host in brackets"),
        ("bad host:8080", "not an IP address or host name"),
    ],
)
def test_bad_listen_address_is_an_error(tmp_path: Path, address: str, fragment: str) -> None:
    line = only_problem(
        tmp_path, f'[[serve]]\nprotocol = "http"\nlisten = "{address}"\nname = "api"\n'
    )
    assert ":3: serve[0]: 'listen' address" in line and fragment in line


def test_ipv6_and_hostname_addresses_are_accepted(tmp_path: Path) -> None:
    manifest = load(
        tmp_path,
        '[node]\nlisten = "localhost:4001"\n'
        '[[serve]]\nprotocol = "http"\nlisten = "[::1]:8080"\nname = "api"\n',
    )
    assert manifest.serve[0].listen == "[::1]:8080"


def test_two_listeners_on_one_address_is_an_error(tmp_path: Path) -> None:
    line = only_problem(
        tmp_path,
        """\
        [[serve]]
        protocol = "http"
        listen = "127.0.0.1:8080"
        name = "a"
        [[serve]]
        protocol = "sse"
        listen = "127.0.0.1:8080"
        name = "b"
        """,
    )
    assert ":7: serve[1]: listen address 127.0.0.1:8080 is already used by serve[0]" in line


def test_listener_on_node_address_is_an_error(tmp_path: Path) -> None:
    assert "already used by [node].listen" in only_problem(
        tmp_path, '[[serve]]\nprotocol = "http"\nlisten = "127.0.0.1:4000"\nname = "a"\n'
    )


# ── [[serve]] listener limits ─────────────────────────────────────────────

LISTENER = '[[serve]]\nprotocol = "http"\nlisten = "127.0.0.1:8080"\nname = "api"\n'


def test_listener_limits_take_their_defaults_when_omitted(tmp_path: Path) -> None:
    (listener,) = load(tmp_path, LISTENER).serve
    assert (
        listener.max_connections,
        listener.max_url_bytes,
        listener.max_header_bytes,
        listener.max_headers,
        listener.max_body_bytes,
        listener.max_message_bytes,
        listener.retry_after_s,
    ) == (4096, 8192, 16384, 100, 1048576, 1048576, 1)
    assert (
        listener.header_timeout_s,
        listener.body_timeout_s,
        listener.idle_timeout_s,
        listener.timeout_s,
        listener.heartbeat_s,
    ) == (10.0, 30.0, 5.0, 30.0, 15.0)


@pytest.mark.parametrize(
    ("key", "rendered", "expected"),
    [
        ("max-connections", "5", 5),
        ("max-url-bytes", "256", 256),
        ("max-header-bytes", "1048576", 1048576),
        ("max-headers", "1", 1),
        ("max-body-bytes", "0", 0),
        ("header-timeout-s", "0.1", 0.1),
        ("body-timeout-s", "3600", 3600.0),
        ("idle-timeout-s", "2.5", 2.5),
        ("timeout-s", "7", 7.0),
        ("heartbeat-s", "1.0", 1.0),
        ("max-message-bytes", "67108864", 67108864),
        ("retry-after-s", "0", 0),
    ],
)
def test_listener_limit_key_is_read(
    tmp_path: Path, key: str, rendered: str, expected: float
) -> None:
    manifest = load(tmp_path, f"{LISTENER}{key} = {rendered}\n")
    assert getattr(manifest.serve[0], key.replace("-", "_")) == expected
    assert manifest.warnings == ()


def test_listener_limit_sets_only_its_own_field(tmp_path: Path) -> None:
    (listener,) = load(tmp_path, f"{LISTENER}max-headers = 20\n").serve
    assert (listener.max_headers, listener.max_header_bytes, listener.timeout_s) == (
        20,
        16384,
        30.0,
    )


@pytest.mark.parametrize(
    ("key", "rendered", "expected"),
    [
        ("timeout-s", "2", 2.0),
        ("timeout-s", "2.5", 2.5),
        ("heartbeat-s", "20", 20.0),
        ("heartbeat-s", "1.5", 1.5),
    ],
)
def test_seconds_limit_accepts_an_integer_or_a_float(
    tmp_path: Path, key: str, rendered: str, expected: float
) -> None:
    value = getattr(
        load(tmp_path, f"{LISTENER}{key} = {rendered}\n").serve[0], key.replace("-", "_")
    )
    assert value == expected
    assert isinstance(value, float)


@pytest.mark.parametrize(
    ("key", "rendered", "shown", "bounds"),
    [
        ("max-connections", "0", "integer 0", "1 to 100000"),
        ("max-connections", "100001", "integer 100001", "1 to 100000"),
        ("max-url-bytes", "255", "integer 255", "256 to 1048576"),
        ("max-header-bytes", "1023", "integer 1023", "1024 to 1048576"),
        ("max-headers", "0", "integer 0", "1 to 1000"),
        ("max-headers", "1001", "integer 1001", "1 to 1000"),
        ("max-body-bytes", "-1", "integer -1", "0 to 1073741824"),
        ("max-body-bytes", "1073741825", "integer 1073741825", "0 to 1073741824"),
        ("max-message-bytes", "0", "integer 0", "1 to 67108864"),
        ("max-message-bytes", "67108865", "integer 67108865", "1 to 67108864"),
        ("retry-after-s", "3601", "integer 3601", "0 to 3600"),
    ],
)
def test_integer_listener_limit_outside_range_names_key_and_value(
    tmp_path: Path, key: str, rendered: str, shown: str, bounds: str
) -> None:
    line = only_problem(tmp_path, f"{LISTENER}{key} = {rendered}\n")
    assert line == (
        f"{tmp_path / 'rusm.toml'}:5: serve[0]: "
        f"'{key}' must be an integer from {bounds}, not {shown}"
    )


@pytest.mark.parametrize(
    ("key", "rendered", "shown", "bounds"),
    [
        ("header-timeout-s", "0.05", "float 0.05", "0.1 to 3600"),
        ("body-timeout-s", "0", "integer 0", "0.1 to 3600"),
        ("idle-timeout-s", "-1.0", "float -1.0", "0.1 to 3600"),
        ("timeout-s", "3600.5", "float 3600.5", "0.1 to 3600"),
        ("timeout-s", "inf", "float inf", "0.1 to 3600"),
        ("timeout-s", "nan", "float nan", "0.1 to 3600"),
        ("heartbeat-s", "0.5", "float 0.5", "1 to 3600"),
    ],
)
def test_seconds_listener_limit_outside_range_names_key_and_value(
    tmp_path: Path, key: str, rendered: str, shown: str, bounds: str
) -> None:
    line = only_problem(tmp_path, f"{LISTENER}{key} = {rendered}\n")
    assert line == (
        f"{tmp_path / 'rusm.toml'}:5: serve[0]: "
        f"'{key}' must be a number of seconds from {bounds}, not {shown}"
    )


@pytest.mark.parametrize(
    ("key", "rendered", "shown"),
    [
        ("max-headers", '"100"', "string '100'"),
        ("max-body-bytes", "1024.0", "float 1024.0"),
        ("max-connections", "true", "boolean true"),
        ("retry-after-s", "1.5", "float 1.5"),
        ("timeout-s", '"30s"', "string '30s'"),
        ("idle-timeout-s", "true", "boolean true"),
        ("heartbeat-s", "[15]", "array"),
    ],
)
def test_listener_limit_of_the_wrong_type_names_key_and_value(
    tmp_path: Path, key: str, rendered: str, shown: str
) -> None:
    line = only_problem(tmp_path, f"{LISTENER}{key} = {rendered}\n")
    assert line.startswith(f"{tmp_path / 'rusm.toml'}:5: serve[0]: '{key}' must be ")
    assert line.endswith(f", not {shown}")


def test_bad_listener_limits_are_each_reported_on_their_line(tmp_path: Path) -> None:
    found = problems(tmp_path, f"{LISTENER}max-headers = 0\ntimeout-s = 0\n")
    assert len(found) == 2
    assert ":5: serve[0]: 'max-headers'" in found[0]
    assert ":6: serve[0]: 'timeout-s'" in found[1]


@pytest.mark.parametrize(
    ("protocol", "key"),
    [
        ("http", "heartbeat-s = 5"),
        ("http", "max-message-bytes = 4096"),
        ("sse", "max-message-bytes = 4096"),
        ("ws", "max-body-bytes = 4096"),
    ],
)
def test_limit_for_another_protocol_is_accepted_without_a_warning(
    tmp_path: Path, protocol: str, key: str
) -> None:
    manifest = load(
        tmp_path,
        f'[[serve]]\nprotocol = "{protocol}"\nlisten = "127.0.0.1:8080"\nname = "api"\n{key}\n',
    )
    assert len(manifest.serve) == 1
    assert manifest.warnings == ()


# ── sources ───────────────────────────────────────────────────────────────


def test_kv_source_needs_a_store(tmp_path: Path) -> None:
    assert "reads the store, but [node] sets no store" in only_problem(
        tmp_path, '[components.w]\nsource = "kv:bundles/w"\n'
    )


@pytest.mark.parametrize("source", ["ftp://x/y.js", "kv:", "kv:bucket", "./local.js"])
def test_bad_source_is_an_error(tmp_path: Path, source: str) -> None:
    line = only_problem(tmp_path, f'[node]\nstore = "s"\n[components.w]\nsource = "{source}"\n')
    assert ":4: components.w: source" in line


@pytest.mark.parametrize("source", ["https://cdn.example/a.js", "url:http://127.0.0.1/a.js"])
def test_url_sources_are_accepted(tmp_path: Path, source: str) -> None:
    assert load(tmp_path, f'[components.w]\nsource = "{source}"\n').components["w"].source == source


# ── capabilities ────────────────────────────────────────────────────────────


def test_custom_profile_inherits_base_and_overrides_only_what_it_sets(tmp_path: Path) -> None:
    manifest = load(
        tmp_path,
        """\
        [node]
        store = "kv.lmdb"
        [capabilities.ops]
        inherits = "trusted"
        allow-stdio = false
        """,
    )
    ops = manifest.capabilities["ops"]
    assert ops.allow_stdio is False
    assert (ops.allow_network, ops.allow_spawn, ops.allow_process_control) == (True, True, True)
    assert ops.allow_storage is True
    assert ops.max_memory_mb == 1024


def test_custom_profile_defaults_to_inheriting_sandboxed(tmp_path: Path) -> None:
    ops = load(tmp_path, "[capabilities.ops]\nallow-spawn = true\n").capabilities["ops"]
    assert ops.inherits is BuiltinCapability.SANDBOXED
    assert (ops.allow_spawn, ops.allow_network, ops.max_memory_mb) == (True, False, 64)


def test_component_capability_resolves_custom_then_builtin(tmp_path: Path) -> None:
    manifest = load(
        tmp_path,
        """\
        [capabilities.agent]
        inherits = "network-client"
        max-memory-mb = 256
        [components.a]
        capability = "agent"
        [components.b]
        capability = "network-client"
        """,
    )
    assert manifest.components["a"].profile.max_memory_mb == 256
    assert manifest.components["b"].profile.name == "network-client"
    assert manifest.components["b"].profile.allow_network
    assert manifest.warnings == ()


def test_unknown_capability_falls_back_to_sandboxed_with_a_warning(tmp_path: Path) -> None:
    manifest = load(tmp_path, '[components.api]\ncapability = "agnet"\n[capabilities.agent]\n')
    assert manifest.components["api"].profile.name == "sandboxed"
    (warning,) = manifest.warnings
    assert ":2: components.api: unknown capability 'agnet' (did you mean 'agent'?)" in warning
    assert "falling back to 'sandboxed'" in warning


def test_custom_profile_cannot_reuse_a_builtin_name(tmp_path: Path) -> None:
    assert "'trusted' is a built-in profile" in only_problem(
        tmp_path, "[capabilities.trusted]\nmax-memory-mb = 2\n"
    )


def test_bad_inherits_names_the_builtins(tmp_path: Path) -> None:
    assert "not one of sandboxed, network-client, trusted" in only_problem(
        tmp_path, '[capabilities.x]\ninherits = "root"\n'
    )


@pytest.mark.parametrize("value", [0, 4097, -1, "128"])
def test_max_memory_outside_wasm32_range_is_an_error(tmp_path: Path, value: object) -> None:
    rendered = f'"{value}"' if isinstance(value, str) else value
    line = only_problem(tmp_path, f"[capabilities.x]\nmax-memory-mb = {rendered}\n")
    assert "'max-memory-mb' must be an integer from 1 to 4096" in line


def test_env_keys_must_be_variable_names_and_unique(tmp_path: Path) -> None:
    found = problems(tmp_path, '[capabilities.x]\nenv = ["OK", "NOT-OK", "OK"]\n')
    assert len(found) == 2
    assert "env key 'NOT-OK' is not a valid variable name" in found[0] + found[1]
    assert "env key 'OK' is listed twice" in found[0] + found[1]


def test_granted_env_key_set_nowhere_is_warned(tmp_path: Path) -> None:
    path = write(tmp_path, '[capabilities.x]\nenv = ["HERE", "NOWHERE"]\n')
    environment = Environment(process={"HERE": "1"})
    manifest = load_manifest(path, environment=environment)
    (warning,) = manifest.warnings
    assert "env key 'NOWHERE' is set neither in the environment nor .env" in warning


def test_preopen_resolves_host_against_app_dir_and_defaults_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    monkeypatch.chdir(tmp_path)
    manifest = load_manifest(
        write(
            app,
            """\
            [capabilities.x]
            preopen = [{ host = "./data", guest = "/data" },
                       { host = "/srv/up", guest = "/up", read-only = false }]
            """,
        )
    )
    first, second = manifest.capabilities["x"].preopen
    assert (first.host, first.guest, first.read_only) == (str(app / "data"), "/data", True)
    assert (second.host, second.read_only) == ("/srv/up", False)


def test_preopen_errors_point_inside_the_array(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        [capabilities.x]
        preopen = [
          { host = "./a", guest = "/a" },
          { hots = "./b", guest = "b" },
        ]
        """,
    )
    assert any(":4: capabilities.x.preopen[1]: unknown key 'hots'" in p for p in found)
    assert any("guest path 'b' must be absolute" in p for p in found)


def test_preopen_same_guest_path_twice_is_an_error(tmp_path: Path) -> None:
    assert "guest path '/a' is mounted twice" in only_problem(
        tmp_path,
        '[capabilities.x]\npreopen = [{ host = "a", guest = "/a" },\n'
        '  { host = "b", guest = "/a" }]\n',
    )


def test_storage_grant_without_store_is_warned(tmp_path: Path) -> None:
    manifest = load(tmp_path, "[capabilities.x]\nallow-storage = true\n")
    assert any("no store configured" in w for w in manifest.warnings)


def test_component_name_must_be_a_file_name(tmp_path: Path) -> None:
    assert "component name 'a.b'" in only_problem(tmp_path, '[components."a.b"]\n')


# ── layering and paths ────────────────────────────────────────────────────


def test_flags_override_the_file(tmp_path: Path) -> None:
    manifest = load(
        tmp_path,
        '[node]\nlisten = "127.0.0.1:4000"\nprofile = "light"\n',
        Overrides(listen="127.0.0.1:4555", profile=Profile.MAX),
    )
    assert (manifest.node.listen, manifest.node.profile) == ("127.0.0.1:4555", Profile.MAX)


def test_no_flags_keep_the_file_values(tmp_path: Path) -> None:
    manifest = load(tmp_path, '[node]\nlisten = "127.0.0.1:4001"\nprofile = "light"\n')
    assert (manifest.node.listen, manifest.node.profile) == ("127.0.0.1:4001", Profile.LIGHT)


def test_bad_listen_flag_is_reported_as_the_flag(tmp_path: Path) -> None:
    (line,) = problems(tmp_path, "", Overrides(listen="nope"))
    assert line.startswith("--listen: ") and "must be host:port" in line


def test_store_path_resolves_against_app_dir_not_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    monkeypatch.chdir(tmp_path)
    manifest = load_manifest(write(app, '[node]\nstore = "data/kv.lmdb"\n'))
    assert manifest.node.store == str(app / "data" / "kv.lmdb")
    assert manifest.app_dir == str(app)
