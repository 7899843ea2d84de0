"""The settings reference, ``docs/settings.md``, rendered from the declarations.

Runs in: any (a tool run from the checkout; nothing in the daemon imports it):

    .venv/bin/python -m rusmd.config.reference > docs/settings.md

A unit test fails while the committed page differs from what this renders.
"""

from __future__ import annotations

import sys

from rusmd.config.settings import ROOT, SECTIONS, Kind, Section, Setting

REGENERATE = ".venv/bin/python -m rusmd.config.reference > docs/settings.md"

_PREAMBLE = f"""\
# Manifest settings

<!-- Generated from rusmd/config/settings.py by `{REGENERATE}`; do not edit. -->

Every table and key `rusm.toml` accepts, with its type, default and accepted
values. This page is generated from the declarations in
`rusmd/config/settings.py`, the same ones the loader checks a manifest
against, so do not edit it by hand: change a declaration, then regenerate
the page from the checkout with

    {REGENERATE}

(`tests/unit/config/test_reference.py` fails while it is out of date).
`etc/rusm.toml` is an annotated sample that sets every key.

An unknown table or key is an error naming the nearest valid one, and
`rusmd check --config rusm.toml` reports every problem in the file at once
(exit 78). Values layer as built-in defaults → the file → flags
(`--listen`, `--profile`). Relative paths resolve against the app dir, the
manifest's directory. A key of type *seconds* takes an integer or a float
(`timeout-s = 2` or `2.5`).
"""

_KIND_LABEL = {
    Kind.STRING: "string",
    Kind.BOOLEAN: "boolean",
    Kind.INTEGER: "integer",
    Kind.SECONDS: "seconds",
    Kind.CHOICE: "string",
    Kind.STRING_ARRAY: "array of strings",
    Kind.TABLE: "table",
    Kind.TABLE_ARRAY: "array of tables",
}


def render() -> str:
    """The whole page, Markdown, ending in one newline."""
    parts = [_PREAMBLE]
    for section in SECTIONS:
        parts.append(_section(section))
    return "\n".join(parts)


def bounds(setting: Setting) -> str:
    """A ranged setting's bounds as the docs write them (``1–100000``, ``0.1–3600``); else ""."""
    if setting.range is None:
        return ""
    low, high = setting.range
    if setting.kind is Kind.SECONDS:
        return f"{low:g}–{high:g}"
    return f"{int(low)}–{int(high)}"


def literal(value: object) -> str:
    """A default as TOML writes it (``"balanced"``, ``true``, ``10.0``); "none" for none."""
    if value is None or value == ():
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _section(section: Section) -> str:
    if section is ROOT:
        lines = ["## The top level", "", section.help, ""]
        lines.append("| table | type | what |")
        lines.append("|---|---|---|")
        lines.extend(_row(f"`{s.name}`", _KIND_LABEL[s.kind], s.help) for s in section.settings)
    else:
        lines = [f"## `{section.header}`", "", section.help, ""]
        lines.append("| key | type | default | accepts | what |")
        lines.append("|---|---|---|---|---|")
        lines.extend(
            _row(f"`{s.name}`", _KIND_LABEL[s.kind], _default(s), _accepts(s), s.help)
            for s in section.settings
        )
    return "\n".join(lines) + "\n"


def _default(setting: Setting) -> str:
    if setting.required:
        return "required"
    if setting.inherited:
        return f"from `inherits` (`sandboxed`: `{literal(setting.default)}`)"
    shown = literal(setting.default)
    return shown if shown == "none" else f"`{shown}`"


def _accepts(setting: Setting) -> str:
    if setting.choices is not None:
        return ", ".join(f"`{member.value}`" for member in setting.choices)
    return f"{bounds(setting)}{setting.range_note}"


def _row(*cells: str) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def main() -> None:
    """Write the page to stdout."""
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
