"""The per-listener route table: ``"METHOD /path" = "component#action"``.

Runs in: worker (one ``RouteTable`` per listener resolves every request);
also main, where ``rusmd check`` parses and prints the routes.

Pure logic, stdlib only. The rules (``[serve.routes]`` in the manifest):

- A route key is an uppercase method from ``HTTP_METHODS``, one space, and
  a path of ``/``-separated segments. A segment is a literal (``users``), a
  parameter (``:id``, one non-empty segment bound as ``id``) or, last only,
  a wildcard (``*``, zero or more remaining segments bound as ``*``).
- A route value is ``component#action``.
- A request target loses its query string and fragment, is split on ``/``
  (empty segments ignored), and each segment is percent-decoded after the
  split, so ``%2F`` stays inside one segment. Literals in a route path are
  compared in decoded form too, so ``/caf%C3%A9`` matches ``GET /café``.
- Most specific wins, per segment from the left: literal, then ``:param``,
  then ``*``. Declaration order never matters.
- Among the paths that match, the most specific route with the request's
  method wins; ``HEAD`` falls back to ``GET`` when no ``HEAD`` route
  matches. A matching path with no route for the method is a 405 listing
  the allowed methods; no matching path is a 404.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from rusmd.errors import RouteError


class HttpMethod(enum.StrEnum):
    """The request methods a route key may name, spelled as on the wire."""

    GET = "GET"
    HEAD = "HEAD"
    POST = "POST"
    PUT = "PUT"
    DELETE = "DELETE"
    PATCH = "PATCH"
    OPTIONS = "OPTIONS"


HTTP_METHODS: frozenset[str] = frozenset(m.value for m in HttpMethod)

# Bounds the trie walk and the params built for one request: a path of
# thousands of segments (``/a/a/a/...``) would otherwise cost work per
# segment on every request. No route is anywhere near this deep; the HTTP
# layer's URL length limit (414) bounds the raw path before it gets here.
MAX_PATH_SEGMENTS = 128

WILDCARD_PARAM = "*"

_METHOD_LIST = ", ".join(HttpMethod)
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COMPONENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_ACTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_WHITESPACE = re.compile(r"\s")


class SegmentKind(enum.StrEnum):
    """What one route path segment matches, in order of precedence."""

    LITERAL = "literal"
    PARAM = "param"
    WILDCARD = "wildcard"


@dataclass(frozen=True)
class Segment:
    """One segment of a route path.

    Attributes:
        kind: Literal, parameter or wildcard.
        value: For a literal, its percent-decoded text; for a parameter, its
            name; for the wildcard, ``"*"``.
    """

    kind: SegmentKind
    value: str


@dataclass(frozen=True)
class RoutePattern:
    """A parsed route key.

    Attributes:
        method: The uppercase method, one of ``HTTP_METHODS``.
        path: The path as declared, e.g. ``/users/:id``.
        segments: The path's segments; empty for the root ``/``.
    """

    method: str
    path: str
    segments: tuple[Segment, ...]

    @property
    def key(self) -> str:
        """The route key as written in the manifest, ``"METHOD /path"``."""
        return f"{self.method} {self.path}"


def parse_route_key(key: str) -> RoutePattern:
    """Parse a ``"METHOD /path"`` route key.

    Args:
        key: The key of one ``[serve.routes]`` entry.

    Returns:
        The method and the path's segments.

    Raises:
        RouteError: The key is malformed; the message names the key and
            says what is valid.
    """
    method, space, path = key.partition(" ")
    if not space or method not in HTTP_METHODS:
        raise RouteError(
            f"route {key!r} must be 'METHOD /path' with an uppercase method ({_METHOD_LIST})"
        )
    if path[:1].isspace():
        raise RouteError(f"route {key!r}: method and path must be separated by exactly one space")
    if not path.startswith("/"):
        raise RouteError(f"route {key!r}: path must start with '/'")
    if _WHITESPACE.search(path):
        raise RouteError(f"route {key!r}: path may not contain whitespace")
    for char in "?#":
        if char in path:
            raise RouteError(
                f"route {key!r}: path may not contain {char!r} "
                "(query strings and fragments are not matched)"
            )
    if path == "/":
        return RoutePattern(method, path, ())
    if path.endswith("/"):
        raise RouteError(
            f"route {key!r}: trailing '/' is not allowed (write {method + ' ' + path[:-1]!r})"
        )
    raw_segments = path[1:].split("/")
    if "" in raw_segments:
        raise RouteError(f"route {key!r}: empty path segment ('//')")
    return RoutePattern(method, path, _parse_segments(key, raw_segments))


def _parse_segments(key: str, raw_segments: list[str]) -> tuple[Segment, ...]:
    segments: list[Segment] = []
    seen_params: set[str] = set()
    last = len(raw_segments) - 1
    for index, raw in enumerate(raw_segments):
        if raw == "*":
            if index != last:
                raise RouteError(f"route {key!r}: '*' may only be the last segment")
            segments.append(Segment(SegmentKind.WILDCARD, WILDCARD_PARAM))
        elif raw.startswith(":"):
            name = raw[1:]
            if not name:
                raise RouteError(f"route {key!r}: ':' needs a parameter name")
            if not _PARAM_NAME.fullmatch(name):
                raise RouteError(
                    f"route {key!r}: parameter name {name!r} must match {_PARAM_NAME.pattern}"
                )
            if name in seen_params:
                raise RouteError(f"route {key!r}: parameter {name!r} appears twice")
            seen_params.add(name)
            segments.append(Segment(SegmentKind.PARAM, name))
        else:
            segments.append(Segment(SegmentKind.LITERAL, unquote(raw)))
    return tuple(segments)


def parse_route_target(value: str) -> tuple[str, str]:
    """Parse a ``"component#action"`` route target.

    Args:
        value: The value of one ``[serve.routes]`` entry.

    Returns:
        The component name and the action name.

    Raises:
        RouteError: The value is malformed; the message names the value and
            says what is expected.
    """
    expected = "expected 'component#action'"
    if value.count("#") != 1:
        hint = " (the separator is '#', not ':')" if ":" in value and "#" not in value else ""
        raise RouteError(f"route target {value!r}: {expected}{hint}")
    component, _, action = value.partition("#")
    if not _COMPONENT_NAME.fullmatch(component):
        raise RouteError(
            f"route target {value!r}: component {component!r} must match "
            f"{_COMPONENT_NAME.pattern}; {expected}"
        )
    if not _ACTION_NAME.fullmatch(action):
        raise RouteError(
            f"route target {value!r}: action {action!r} must match "
            f"{_ACTION_NAME.pattern}; {expected}"
        )
    return component, action


@dataclass(frozen=True)
class Route:
    """One route: a method and path dispatched to ``component#action``.

    Constructing a ``Route`` validates it, so an invalid one cannot exist.

    Attributes:
        method: The uppercase method. Required.
        path: The path as declared, e.g. ``/users/:id``. Required.
        component: The handler component's name. Required.
        action: The exported action to invoke. Required.
        pattern: The parsed key; computed, not passed.

    Raises:
        RouteError: The method, path, component or action is malformed.
    """

    method: str
    path: str
    component: str
    action: str
    pattern: RoutePattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parse_route_target(self.target)
        object.__setattr__(self, "pattern", parse_route_key(self.key))

    @classmethod
    def parse(cls, key: str, target: str) -> Route:
        """Build a route from a manifest entry, ``"GET /" = "api#home"``.

        Raises:
            RouteError: The key or the target is malformed.
        """
        pattern = parse_route_key(key)
        component, action = parse_route_target(target)
        return cls(pattern.method, pattern.path, component, action)

    @property
    def key(self) -> str:
        """The route key, ``"METHOD /path"``."""
        return f"{self.method} {self.path}"

    @property
    def target(self) -> str:
        """The route target, ``"component#action"``."""
        return f"{self.component}#{self.action}"


@dataclass(frozen=True)
class Match:
    """A route matched path and method: dispatch to it.

    Attributes:
        route: The most specific matching route.
        params: Parameter name → percent-decoded segment; a wildcard's
            remainder (decoded segments joined with ``/``) is under ``"*"``.
    """

    route: Route
    params: dict[str, str]


@dataclass(frozen=True)
class MethodNotAllowed:
    """Some route matches the path, none the method: answer 405.

    Attributes:
        allowed: Methods of every route whose path matches, sorted; ``HEAD``
            is included whenever ``GET`` is. The ``Allow`` header's value.
    """

    allowed: tuple[str, ...]


@dataclass(frozen=True)
class NotFound:
    """No route matches the path: answer 404."""


Resolution = Match | MethodNotAllowed | NotFound


@dataclass
class _TrieNode:
    """Routes sharing a prefix of segment shapes; mutated only while building."""

    literals: dict[str, _TrieNode] = field(default_factory=dict)
    param: _TrieNode | None = None
    # Routes whose last segment is this node, by method.
    exact: dict[str, Route] = field(default_factory=dict)
    # Routes ending in '*' right after this node, by method.
    wildcard: dict[str, Route] = field(default_factory=dict)


class RouteTable:
    """One listener's routes, resolved most-specific-first.

    Tables share nothing: each listener builds its own.
    """

    def __init__(self, routes: Iterable[Route]) -> None:
        """Build the table.

        Args:
            routes: The listener's routes, in declaration order.

        Raises:
            RouteError: Two routes have the same method and match the same
                paths (e.g. ``GET /users/:id`` and ``GET /users/:name``).
        """
        self.routes: tuple[Route, ...] = tuple(routes)
        self._root = _TrieNode()
        # Per route, where its params are: (segment index, name, rest-of-path).
        self._binders: dict[Route, tuple[tuple[int, str, bool], ...]] = {}
        for route in self.routes:
            self._insert(route)
            self._binders[route] = tuple(
                (index, segment.value, segment.kind is SegmentKind.WILDCARD)
                for index, segment in enumerate(route.pattern.segments)
                if segment.kind is not SegmentKind.LITERAL
            )

    def _bind(self, route: Route, segments: list[str]) -> dict[str, str]:
        """The params a matched route binds from the request's segments."""
        params: dict[str, str] = {}
        for index, name, rest in self._binders[route]:
            if rest:
                params[WILDCARD_PARAM] = "/".join(segments[index:])
            else:
                params[name] = segments[index]
        return params

    @classmethod
    def from_mapping(cls, routes: Mapping[str, str]) -> RouteTable:
        """Build a table from manifest-style ``{"GET /": "api#home"}``.

        Raises:
            RouteError: The first malformed key or target, or a duplicate.
        """
        return cls(Route.parse(key, target) for key, target in routes.items())

    def _insert(self, route: Route) -> None:
        node = self._root
        terminal = None
        for segment in route.pattern.segments:
            if segment.kind is SegmentKind.LITERAL:
                node = node.literals.setdefault(segment.value, _TrieNode())
            elif segment.kind is SegmentKind.PARAM:
                if node.param is None:
                    node.param = _TrieNode()
                node = node.param
            else:
                terminal = node.wildcard
        if terminal is None:
            terminal = node.exact
        existing = terminal.get(route.method)
        if existing is not None:
            raise RouteError(
                f"route {route.key!r} duplicates route {existing.key!r}: "
                "both match the same requests"
            )
        terminal[route.method] = route

    def resolve(self, method: str, target: str) -> Resolution:
        """Find the route for one request.

        Args:
            method: The request method as received; a lowercase or unknown
                method matches no route.
            target: The origin-form request target, e.g. ``/users/7?x=1``.
                Anything not starting with ``/`` (``*``, absolute-form)
                matches nothing.

        Returns:
            ``Match`` to dispatch, ``MethodNotAllowed`` for a 405 or
            ``NotFound`` for a 404.
        """
        segments = _request_segments(target)
        if segments is None:
            return NotFound()
        if method != HttpMethod.HEAD:
            # The usual case: the first (most specific) group that has the
            # method wins, and the walk stops there.
            for by_method in self._matching(segments):
                route = by_method.get(method)
                if route is not None:
                    return Match(route, self._bind(route, segments))
        candidates = list(self._matching(segments))
        route = _most_specific(candidates, method)
        if route is None and method == HttpMethod.HEAD:
            route = _most_specific(candidates, HttpMethod.GET.value)
        if route is not None:
            return Match(route, self._bind(route, segments))
        if not candidates:
            return NotFound()
        return MethodNotAllowed(_allowed_methods(candidates))

    def _matching(self, segments: list[str]) -> Iterator[dict[str, Route]]:
        """Yield the route groups whose path matches, most specific first.

        A depth-first walk that tries, at each position, the literal child,
        then the parameter child, then a wildcard ending here. Each trie
        node is reached from its one parent only, so a walk visits every
        node at most once: linear in the size of the table.
        """
        # (node, depth, wildcard_only): the last marks "yield this node's
        # wildcard routes", queued so it comes after both child subtrees.
        stack: list[tuple[_TrieNode, int, bool]] = [(self._root, 0, False)]
        while stack:
            node, depth, wildcard_only = stack.pop()
            if wildcard_only:
                yield node.wildcard
                continue
            if depth == len(segments):
                if node.exact:
                    yield node.exact
                if node.wildcard:
                    yield node.wildcard
                continue
            if node.wildcard:
                stack.append((node, depth, True))
            if node.param is not None:
                stack.append((node.param, depth + 1, False))
            literal = node.literals.get(segments[depth])
            if literal is not None:
                stack.append((literal, depth + 1, False))


def _request_segments(target: str) -> list[str] | None:
    """The decoded, non-empty path segments of a target; None if unmatchable."""
    path = target.partition("?")[0]
    if "#" in path:
        path = path.partition("#")[0]
    if not path.startswith("/"):
        return None
    raw_segments = [raw for raw in path.split("/") if raw]
    if len(raw_segments) > MAX_PATH_SEGMENTS:
        return None
    # Decoding is only needed where there is something to decode.
    return [unquote(raw) if "%" in raw else raw for raw in raw_segments]


def _most_specific(candidates: list[dict[str, Route]], method: str) -> Route | None:
    for by_method in candidates:
        route = by_method.get(method)
        if route is not None:
            return route
    return None


def _allowed_methods(candidates: list[dict[str, Route]]) -> tuple[str, ...]:
    allowed = {method for by_method in candidates for method in by_method}
    if HttpMethod.GET.value in allowed:
        allowed.add(HttpMethod.HEAD.value)
    return tuple(sorted(allowed))
