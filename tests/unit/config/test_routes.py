"""Tests for the per-listener route table (``[serve.routes]``).

Runs in: any (pure logic, no sockets).
"""

from __future__ import annotations

import itertools

import pytest

from rusmd.config.routes import (
    HTTP_METHODS,
    MAX_PATH_SEGMENTS,
    Match,
    MethodNotAllowed,
    NotFound,
    Resolution,
    Route,
    RouteTable,
    SegmentKind,
    parse_route_key,
    parse_route_target,
)
from rusmd.errors import RouteError, RusmError

# The complete manifest's routes (tests/fixtures/manifests/complete.toml).
SEED_ROUTES = {
    "GET /": "api#home",
    "GET /users/:id": "api#show",
    "POST /users": "api#create",
    "GET /events": "api#events",
    "GET /assets/*": "api#assets",
    "POST /plans/:plan/events": "api#events",
}


def target_of(resolution: Resolution) -> str:
    assert isinstance(resolution, Match), resolution
    return resolution.route.target


def params_of(resolution: Resolution) -> dict[str, str]:
    assert isinstance(resolution, Match), resolution
    return resolution.params


# --- the resolution table --------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "expected_target", "expected_params"),
    [
        ("GET", "/", "api#home", {}),
        ("GET", "/users/42", "api#show", {"id": "42"}),
        ("POST", "/users", "api#create", {}),
        ("GET", "/events", "api#events", {}),
        ("GET", "/assets/css/site.css", "api#assets", {"*": "css/site.css"}),
        ("POST", "/plans/free/events", "api#events", {"plan": "free"}),
    ],
)
def test_seed_route_matching_path_and_method_dispatches_to_its_action(
    method: str, target: str, expected_target: str, expected_params: dict[str, str]
) -> None:
    table = RouteTable.from_mapping(SEED_ROUTES)
    result = table.resolve(method, target)
    assert target_of(result) == expected_target
    assert params_of(result) == expected_params


@pytest.mark.parametrize(
    ("method", "target", "allowed"),
    [
        ("DELETE", "/", ("GET", "HEAD")),
        ("PUT", "/users/42", ("GET", "HEAD")),
        ("GET", "/users", ("POST",)),
        ("POST", "/events", ("GET", "HEAD")),
        ("GET", "/plans/free/events", ("POST",)),
    ],
)
def test_seed_route_path_matching_without_method_is_405_with_allowed_methods(
    method: str, target: str, allowed: tuple[str, ...]
) -> None:
    table = RouteTable.from_mapping(SEED_ROUTES)
    assert table.resolve(method, target) == MethodNotAllowed(allowed)


@pytest.mark.parametrize(
    "target",
    ["/nope", "/users/42/extra", "/plans/free", "/plans/free/events/x", "/eventsx"],
)
def test_seed_route_no_path_matching_is_404(target: str) -> None:
    table = RouteTable.from_mapping(SEED_ROUTES)
    assert table.resolve("GET", target) == NotFound()
    assert table.resolve("POST", target) == NotFound()


# --- specificity -------------------------------------------------------------


OVERLAPPING = ["GET /users/new", "GET /users/:id", "GET /users/*", "GET /*"]


def overlapping_table(order: tuple[str, ...]) -> RouteTable:
    return RouteTable.from_mapping({key: f"app#r{OVERLAPPING.index(key)}" for key in order})


@pytest.mark.parametrize("order", list(itertools.permutations(OVERLAPPING)))
def test_overlapping_routes_resolve_the_same_in_any_declaration_order(
    order: tuple[str, ...],
) -> None:
    table = overlapping_table(order)
    assert target_of(table.resolve("GET", "/users/new")) == "app#r0"
    assert target_of(table.resolve("GET", "/users/7")) == "app#r1"
    assert target_of(table.resolve("GET", "/users/7/posts")) == "app#r2"
    assert target_of(table.resolve("GET", "/users")) == "app#r2"
    assert target_of(table.resolve("GET", "/teams/1")) == "app#r3"
    assert target_of(table.resolve("GET", "/")) == "app#r3"


@pytest.mark.parametrize(
    "order", list(itertools.permutations(["GET /users/new", "GET /users/:id"]))
)
def test_literal_segment_beats_param_in_any_declaration_order(order: tuple[str, ...]) -> None:
    targets = {"GET /users/new": "app#new", "GET /users/:id": "app#show"}
    table = RouteTable.from_mapping({key: targets[key] for key in order})
    assert target_of(table.resolve("GET", "/users/new")) == "app#new"
    assert target_of(table.resolve("GET", "/users/old")) == "app#show"


@pytest.mark.parametrize(
    "order", list(itertools.permutations(["GET /files/:name", "GET /files/*"]))
)
def test_param_segment_beats_wildcard_in_any_declaration_order(order: tuple[str, ...]) -> None:
    targets = {"GET /files/:name": "app#one", "GET /files/*": "app#rest"}
    table = RouteTable.from_mapping({key: targets[key] for key in order})
    assert target_of(table.resolve("GET", "/files/a")) == "app#one"
    assert target_of(table.resolve("GET", "/files/a/b")) == "app#rest"
    assert target_of(table.resolve("GET", "/files")) == "app#rest"


@pytest.mark.parametrize("order", list(itertools.permutations(["GET /a/:x", "GET /:y/b"])))
def test_leftmost_segment_decides_specificity_in_any_declaration_order(
    order: tuple[str, ...],
) -> None:
    targets = {"GET /a/:x": "app#a", "GET /:y/b": "app#b"}
    table = RouteTable.from_mapping({key: targets[key] for key in order})
    result = table.resolve("GET", "/a/b")
    assert target_of(result) == "app#a"
    assert params_of(result) == {"x": "b"}
    assert params_of(table.resolve("GET", "/z/b")) == {"y": "z"}


def test_literal_dead_end_backtracks_to_param_route() -> None:
    table = RouteTable.from_mapping({"GET /users/new/form": "app#form", "GET /users/:id": "app#id"})
    assert params_of(table.resolve("GET", "/users/new")) == {"id": "new"}


def test_exact_end_beats_wildcard_matching_zero_segments() -> None:
    table = RouteTable.from_mapping({"GET /assets/*": "app#rest", "GET /assets": "app#index"})
    assert target_of(table.resolve("GET", "/assets")) == "app#index"
    assert target_of(table.resolve("GET", "/assets/x")) == "app#rest"


def test_less_specific_route_with_matching_method_wins_over_specific_with_other_method() -> None:
    table = RouteTable.from_mapping({"GET /users/new": "app#new", "POST /users/:id": "app#update"})
    result = table.resolve("POST", "/users/new")
    assert target_of(result) == "app#update"
    assert params_of(result) == {"id": "new"}


# --- wildcard, params, request target ----------------------------------------


def test_wildcard_matches_zero_segments_with_empty_remainder() -> None:
    table = RouteTable.from_mapping({"GET /assets/*": "api#assets"})
    assert params_of(table.resolve("GET", "/assets")) == {"*": ""}
    assert params_of(table.resolve("GET", "/assets/")) == {"*": ""}


def test_wildcard_matches_many_segments_joined_with_slash() -> None:
    table = RouteTable.from_mapping({"GET /assets/*": "api#assets"})
    result = table.resolve("GET", "/assets/a/b/c/d.js")
    assert params_of(result) == {"*": "a/b/c/d.js"}


def test_wildcard_after_param_binds_both() -> None:
    table = RouteTable.from_mapping({"GET /repo/:name/*": "git#tree"})
    assert params_of(table.resolve("GET", "/repo/rusm/src/main.py")) == {
        "name": "rusm",
        "*": "src/main.py",
    }


def test_root_wildcard_matches_root_path() -> None:
    table = RouteTable.from_mapping({"GET /*": "app#all"})
    assert params_of(table.resolve("GET", "/")) == {"*": ""}


def test_param_value_is_percent_decoded_after_splitting() -> None:
    table = RouteTable.from_mapping({"GET /users/:id": "api#show"})
    assert params_of(table.resolve("GET", "/users/a%2Fb")) == {"id": "a/b"}
    assert params_of(table.resolve("GET", "/users/J%C3%BCrgen%20X")) == {"id": "Jürgen X"}


def test_param_does_not_match_across_segments_or_empty() -> None:
    table = RouteTable.from_mapping({"GET /users/:id": "api#show"})
    assert table.resolve("GET", "/users/a/b") == NotFound()
    assert table.resolve("GET", "/users/") == NotFound()


def test_literal_segment_matches_percent_encoded_request_segment() -> None:
    table = RouteTable.from_mapping({"GET /café": "app#cafe", "GET /100%25": "app#pct"})
    assert target_of(table.resolve("GET", "/caf%C3%A9")) == "app#cafe"
    assert target_of(table.resolve("GET", "/100%25")) == "app#pct"


def test_literal_segment_match_is_case_sensitive() -> None:
    table = RouteTable.from_mapping({"GET /users": "api#list"})
    assert table.resolve("GET", "/Users") == NotFound()


@pytest.mark.parametrize(
    "target", ["/users/7?x=1", "/users/7?", "/users/7#top", "/users/7?next=/a#b", "/users/7/?q"]
)
def test_query_string_and_fragment_are_stripped_before_matching(target: str) -> None:
    table = RouteTable.from_mapping({"GET /users/:id": "api#show"})
    assert params_of(table.resolve("GET", target)) == {"id": "7"}


def test_query_string_on_root_matches_root_route() -> None:
    table = RouteTable.from_mapping({"GET /": "api#home"})
    assert target_of(table.resolve("GET", "/?page=2")) == "api#home"


@pytest.mark.parametrize("target", ["/users/", "/users", "//users", "/users//"])
def test_empty_request_segments_are_ignored(target: str) -> None:
    table = RouteTable.from_mapping({"GET /users": "api#list"})
    assert target_of(table.resolve("GET", target)) == "api#list"


@pytest.mark.parametrize("target", ["*", "", "users", "http://example.com/users"])
def test_target_not_in_origin_form_is_not_found(target: str) -> None:
    table = RouteTable.from_mapping({"GET /*": "app#all", "OPTIONS /*": "app#options"})
    assert table.resolve("GET", target) == NotFound()


def test_path_at_segment_limit_matches_and_beyond_is_not_found() -> None:
    table = RouteTable.from_mapping({"GET /*": "app#all"})
    at_limit = "/x" * MAX_PATH_SEGMENTS
    assert params_of(table.resolve("GET", at_limit)) == {"*": "/".join(["x"] * MAX_PATH_SEGMENTS)}
    assert table.resolve("GET", at_limit + "/x") == NotFound()


# --- methods -----------------------------------------------------------------


def test_head_request_falls_back_to_get_route() -> None:
    table = RouteTable.from_mapping({"GET /users/:id": "api#show"})
    result = table.resolve("HEAD", "/users/7")
    assert target_of(result) == "api#show"
    assert params_of(result) == {"id": "7"}


def test_head_request_prefers_head_route_over_get_fallback() -> None:
    table = RouteTable.from_mapping({"GET /users/:id": "api#show", "HEAD /users/:id": "api#peek"})
    assert target_of(table.resolve("HEAD", "/users/7")) == "api#peek"


def test_get_request_does_not_fall_back_to_head_route() -> None:
    table = RouteTable.from_mapping({"HEAD /ping": "api#ping"})
    assert table.resolve("GET", "/ping") == MethodNotAllowed(("HEAD",))


def test_405_allow_list_is_sorted_union_of_every_matching_pattern() -> None:
    table = RouteTable.from_mapping(
        {
            "POST /users/new": "api#create",
            "PUT /users/:id": "api#replace",
            "DELETE /users/:id": "api#delete",
            "GET /users/*": "api#browse",
            "PATCH /*": "api#patch",
            "OPTIONS /teams/:id": "api#unrelated",
        }
    )
    assert table.resolve("TRACE", "/users/new") == MethodNotAllowed(
        ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")
    )


@pytest.mark.parametrize("method", ["get", "Get", "TRACE", "CONNECT", "", "GET "])
def test_lowercase_or_unknown_request_method_matches_no_route(method: str) -> None:
    table = RouteTable.from_mapping({"GET /": "api#home"})
    assert table.resolve(method, "/") == MethodNotAllowed(("GET", "HEAD"))
    assert table.resolve(method, "/missing") == NotFound()


def test_every_http_method_can_be_routed() -> None:
    table = RouteTable.from_mapping({f"{m} /x": f"api#{m.lower()}" for m in HTTP_METHODS})
    for method in HTTP_METHODS:
        assert target_of(table.resolve(method, "/x")) == f"api#{method.lower()}"


# --- tables ------------------------------------------------------------------


def test_two_tables_route_independently() -> None:
    public = RouteTable.from_mapping({"GET /users/:id": "api#show"})
    admin = RouteTable.from_mapping({"GET /users/:id": "admin#inspect", "DELETE /": "admin#wipe"})
    assert target_of(public.resolve("GET", "/users/1")) == "api#show"
    assert target_of(admin.resolve("GET", "/users/1")) == "admin#inspect"
    assert public.resolve("DELETE", "/") == NotFound()
    assert target_of(admin.resolve("DELETE", "/")) == "admin#wipe"


def test_table_routes_keep_declaration_order() -> None:
    table = RouteTable.from_mapping(SEED_ROUTES)
    assert [route.key for route in table.routes] == list(SEED_ROUTES)
    assert [route.target for route in table.routes] == list(SEED_ROUTES.values())


def test_table_built_from_routes_matches_mapping() -> None:
    routes = [Route("GET", "/users/:id", "api", "show"), Route("POST", "/users", "api", "create")]
    table = RouteTable(routes)
    assert table.routes == tuple(routes)
    assert params_of(table.resolve("GET", "/users/3")) == {"id": "3"}


def test_empty_table_finds_nothing() -> None:
    assert RouteTable([]).resolve("GET", "/") == NotFound()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("GET /users/:id", "GET /users/:id"),
        ("GET /users/:id", "GET /users/:name"),
        ("GET /files/*", "GET /files/*"),
        ("GET /café", "GET /caf%C3%A9"),
    ],
)
def test_duplicate_route_is_an_error_naming_both(first: str, second: str) -> None:
    routes = [Route.parse(first, "api#one"), Route.parse(second, "api#two")]
    with pytest.raises(RouteError) as caught:
        RouteTable(routes)
    assert repr(first) in str(caught.value)
    assert repr(second) in str(caught.value)


def test_same_path_with_different_methods_is_not_a_duplicate() -> None:
    table = RouteTable.from_mapping({"GET /users": "api#list", "POST /users": "api#create"})
    assert target_of(table.resolve("POST", "/users")) == "api#create"


# --- route key syntax --------------------------------------------------------


def test_route_key_parses_into_segment_kinds() -> None:
    pattern = parse_route_key("GET /repo/:name/*")
    assert pattern.method == "GET"
    assert pattern.path == "/repo/:name/*"
    assert [(s.kind, s.value) for s in pattern.segments] == [
        (SegmentKind.LITERAL, "repo"),
        (SegmentKind.PARAM, "name"),
        (SegmentKind.WILDCARD, "*"),
    ]
    assert parse_route_key("GET /").segments == ()


@pytest.mark.parametrize(
    "key",
    [
        "GET /files/*.png",
        "GET /a-b/c.d/~e/f@g/h:i",
        "GET /:_x/:Y9",
        "DELETE /v1/items/:item_id",
    ],
)
def test_route_key_valid_forms_are_accepted(key: str) -> None:
    assert parse_route_key(key).key == key


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("get /", "uppercase method (GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS)"),
        ("FETCH /", "must be 'METHOD /path'"),
        ("GET/", "must be 'METHOD /path'"),
        ("GET", "must be 'METHOD /path'"),
        ("", "must be 'METHOD /path'"),
        (" GET /", "must be 'METHOD /path'"),
        ("GET  /", "exactly one space"),
        ("GET\t/", "must be 'METHOD /path'"),
        ("GET users", "path must start with '/'"),
        ("GET /a b", "may not contain whitespace"),
        ("GET /a/*/b", "'*' may only be the last segment"),
        ("GET /*/*", "'*' may only be the last segment"),
        ("GET /a/:", "':' needs a parameter name"),
        ("GET /a/:1x", "parameter name '1x'"),
        ("GET /a/:id-x", "parameter name 'id-x'"),
        ("GET /a/:id/:id", "parameter 'id' appears twice"),
        ("GET /a//b", "empty path segment"),
        ("GET //", "trailing '/'"),
        ("GET /users/", "trailing '/' is not allowed (write 'GET /users')"),
        ("GET /a?x=1", "may not contain '?'"),
        ("GET /a#b", "may not contain '#'"),
    ],
)
def test_route_key_syntax_error_names_the_key_and_the_problem(key: str, problem: str) -> None:
    with pytest.raises(RouteError) as caught:
        parse_route_key(key)
    message = str(caught.value)
    assert message.startswith(f"route {key!r}")
    assert problem in message


def test_route_error_is_a_rusm_error_and_a_value_error() -> None:
    with pytest.raises(RouteError) as caught:
        parse_route_key("get /")
    assert isinstance(caught.value, RusmError)
    assert isinstance(caught.value, ValueError)


# --- route target syntax -----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("api#home", ("api", "home")),
        ("meta-json#on_event", ("meta-json", "on_event")),
        ("9lives#_x-y", ("9lives", "_x-y")),
    ],
)
def test_route_target_valid_forms_are_split(value: str, expected: tuple[str, str]) -> None:
    assert parse_route_target(value) == expected


@pytest.mark.parametrize(
    "value",
    ["api", "", "#", "api#", "#home", "api#home#x", "-api#home", "a pi#home", "api#9x", "api#a.b"],
)
def test_route_target_syntax_error_names_the_value(value: str) -> None:
    with pytest.raises(RouteError) as caught:
        parse_route_target(value)
    message = str(caught.value)
    assert message.startswith(f"route target {value!r}")
    assert "expected 'component#action'" in message
    assert "not ':'" not in message


@pytest.mark.parametrize("value", ["api:home", "kv:api"])
def test_route_target_with_colon_separator_hints_at_hash(value: str) -> None:
    with pytest.raises(RouteError) as caught:
        parse_route_target(value)
    assert str(caught.value) == (
        f"route target {value!r}: expected 'component#action' (the separator is '#', not ':')"
    )


def test_route_constructed_with_bad_parts_is_rejected() -> None:
    with pytest.raises(RouteError, match="route 'GET users'"):
        Route("GET", "users", "api", "list")
    with pytest.raises(RouteError, match="route target 'api#9x'"):
        Route("GET", "/users", "api", "9x")


def test_from_mapping_rejects_bad_key_and_bad_target() -> None:
    with pytest.raises(RouteError, match="route 'get /'"):
        RouteTable.from_mapping({"GET /ok": "api#ok", "get /": "api#home"})
    with pytest.raises(RouteError, match="route target 'api:home'"):
        RouteTable.from_mapping({"GET /": "api:home"})
