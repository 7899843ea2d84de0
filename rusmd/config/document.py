"""Parse a TOML file into plain values plus the line of every key.

Runs in: main (``rusmd``, ``rusmd check``); pure, no side effects.

tomlkit gives a faithful parse but no positions, so the parser is
extended to remember where each key and table header starts. The result
is a plain ``dict`` (what validation walks) and a ``KeyLines`` index that
maps a key path such as ``("components", "api", "capabilty")`` or
``("serve", 0, "routes", "GET /")`` to its 1-based line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tomlkit import items
from tomlkit.exceptions import ParseError, TOMLKitError
from tomlkit.parser import Parser

from rusmd.errors import RusmError

KeyPath = tuple[str | int, ...]

# Manifests are small; a multi-megabyte file is a mistake (or an attack on
# the parser's memory), not configuration.
MAX_MANIFEST_BYTES = 1 << 20


class TomlSyntaxError(RusmError):
    """The file is not valid TOML.

    Attributes:
        line: 1-based line of the error (0 when unknown).
        message: tomlkit's description, without its location suffix.
    """

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass
class KeyLines:
    """Where each key path starts, 1-based; unknown paths map to their parent."""

    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line_of(self, path: KeyPath) -> int:
        """Line of ``path``, else of its nearest known ancestor, else 0."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return 0


class _LocatingParser(Parser):
    """tomlkit's parser, stamping each parsed key with its source offset."""

    def _parse_key(self) -> items.Key:
        offset = self._idx
        key = super()._parse_key()
        _set_offset(key, offset)
        if isinstance(key, items.DottedKey):
            # `a.b.c = 1` is stored as nested tables keyed by the parts.
            for part in key:
                _stamp(part, offset)
        return key

    def _parse_table(
        self, parent_name: items.Key | None = None, parent: items.Table | None = None
    ) -> tuple[items.Key, items.Table | items.AoT]:
        offset = self._idx
        key, table = super()._parse_table(parent_name, parent)
        _stamp(key, offset)
        _set_offset(table, offset)
        if isinstance(table, items.AoT) and table.body:
            _stamp(table.body[0], offset)
        # `[a.b.c]` becomes super-tables a → b → c; their keys are built by
        # splitting the header, not parsed, so stamp them with the header's line.
        node: Any = table
        while isinstance(node, items.Table) and node.is_super_table():
            children = [(k, v) for k, v in node.value.body if k is not None]
            for child_key, _ in children:
                _stamp(child_key, offset)
            node = children[0][1] if len(children) == 1 else None
        return key, table


_OFFSET = "_rusm_offset"


def _set_offset(node: object, offset: int) -> None:
    setattr(node, _OFFSET, offset)


def _offset(node: object) -> int | None:
    value = getattr(node, _OFFSET, None)
    return value if isinstance(value, int) else None


def _stamp(node: object, offset: int) -> None:
    """Give ``node`` an offset unless a more precise one is already there."""
    if _offset(node) is None:
        _set_offset(node, offset)


def parse(text: str) -> tuple[dict[str, Any], KeyLines]:
    """Parse TOML text into plain values and a key-line index.

    Raises:
        TomlSyntaxError: The text is not valid TOML (or repeats a key).
    """
    try:
        document = _LocatingParser(text).parse()
    except ParseError as exc:
        message = str(exc).rsplit(" at line ", 1)[0]
        line = _repeated_key_line(text, message) or exc.line
        raise TomlSyntaxError(line, message) from None
    except TOMLKitError as exc:
        raise TomlSyntaxError(_repeated_key_line(text, str(exc)), str(exc)) from None
    line_starts = _line_starts(text)
    lines = KeyLines()
    _index(document.body, (), lines, line_starts, {})
    values: dict[str, Any] = document.unwrap()
    return values, lines


def _repeated_key_line(text: str, message: str) -> int:
    """Line of the second definition of the key a "already exists" error names."""
    named = re.search(r'Key "(.+)" already exists', message)
    if not named:
        return 0
    key = re.escape(named.group(1))
    definition = re.compile(rf"""^\s*(?:{key}|"{key}"|'{key}')\s*=|^\s*\[\s*[^\]]*\b{key}\s*\]""")
    seen = [n for n, line in enumerate(text.splitlines(), 1) if definition.search(line)]
    return seen[1] if len(seen) > 1 else (seen[0] if seen else 0)


def _line_starts(text: str) -> list[int]:
    starts = [0]
    starts.extend(i + 1 for i, ch in enumerate(text) if ch == "\n")
    return starts


def _line_at(line_starts: list[int], offset: int) -> int:
    low, high = 0, len(line_starts) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if line_starts[middle] <= offset:
            low = middle
        else:
            high = middle - 1
    return low + 1


def _index(
    body: list[tuple[items.Key | None, items.Item]],
    prefix: KeyPath,
    lines: KeyLines,
    line_starts: list[int],
    aot_counts: dict[KeyPath, int],
) -> None:
    for key, item in body:
        if key is None:
            continue
        path = (*prefix, *_key_parts(key))
        offset = _offset(key)
        if offset is not None:
            lines.lines.setdefault(path, _line_at(line_starts, offset))
        _index_item(item, path, lines, line_starts, aot_counts)


def _index_item(
    item: items.Item,
    path: KeyPath,
    lines: KeyLines,
    line_starts: list[int],
    aot_counts: dict[KeyPath, int],
) -> None:
    if isinstance(item, items.Table | items.InlineTable):
        _index(item.value.body, path, lines, line_starts, aot_counts)
    elif isinstance(item, items.AoT):
        for table in item.body:
            # `[[serve]]` entries may be split by other tables; keep counting.
            position = aot_counts.get(path, 0)
            aot_counts[path] = position + 1
            entry = (*path, position)
            header = _offset(table)
            if header is not None:
                lines.lines.setdefault(entry, _line_at(line_starts, header))
            _index(table.value.body, entry, lines, line_starts, aot_counts)
    elif isinstance(item, items.Array):
        for position, element in enumerate(item):
            if isinstance(element, items.InlineTable):
                _index(element.value.body, (*path, position), lines, line_starts, aot_counts)


def _key_parts(key: items.Key) -> tuple[str, ...]:
    if isinstance(key, items.DottedKey):
        return tuple(part.key for part in key)
    return (key.key,)
