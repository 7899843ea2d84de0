"""``etc/rusm.toml``, the annotated sample: it loads cleanly and shows every declared key.

The sample's promise (its first line) is to cover every key; these tests
hold it to the declarations in ``rusmd.config.settings``, so a new key
cannot be declared without being shown there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rusmd.config import load_manifest
from rusmd.config.document import parse
from rusmd.config.reference import bounds
from rusmd.config.settings import (
    CAPABILITY,
    COMPONENT,
    LOG,
    NODE,
    PREOPEN,
    ROOT,
    SECTIONS,
    SERVE,
    Section,
)

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "etc" / "rusm.toml"


def keys_set(section: Section, values: dict[str, Any]) -> set[str]:
    """Every key the sample sets in the tables of ``section``'s shape."""
    capabilities = list(values.get("capabilities", {}).values())
    tables: list[dict[str, Any]] = {
        ROOT.header: [values],
        NODE.header: [values.get("node", {})],
        LOG.header: [values.get("log", {})],
        SERVE.header: values.get("serve", []),
        CAPABILITY.header: capabilities,
        PREOPEN.header: [mount for c in capabilities for mount in c.get("preopen", [])],
        COMPONENT.header: list(values.get("components", {}).values()),
    }[section.header]
    return {key for table in tables for key in table}


def test_sample_manifest_in_etc_loads_every_key() -> None:
    manifest = load_manifest(SAMPLE)
    text = SAMPLE.read_text()
    every_key = {key for section in SECTIONS for key in section.names()}
    for key in sorted(every_key):
        assert key in text, f"etc/rusm.toml does not show {key}"
    assert len(manifest.serve) == 2
    assert manifest.components["sessions"].resident


def test_sample_loads_without_errors_or_warnings() -> None:
    assert load_manifest(SAMPLE).warnings == ()


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: s.header)
def test_sample_sets_every_declared_key_and_no_other(section: Section) -> None:
    values, _ = parse(SAMPLE.read_text())
    assert keys_set(section, values) == set(section.names())


def test_sample_shows_the_listener_limits_with_their_defaults() -> None:
    values, _ = parse(SAMPLE.read_text())
    first = values["serve"][0]
    assert {s.name: first[s.name] for s in SERVE.limits()} == {
        s.name: s.default for s in SERVE.limits()
    }


@pytest.mark.parametrize(
    "setting",
    [s for section in SECTIONS for s in section.settings if s.range or s.choices],
    ids=lambda s: s.name,
)
def test_sample_states_the_declared_range_or_choices_beside_the_key(setting: Any) -> None:
    """The range (``1–100000``) or every choice is on the key's line or the comment above it."""
    lines = SAMPLE.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.split("=")[0].strip() == setting.name)
    start = at
    while start > 0 and lines[start - 1].lstrip().startswith("#"):
        start -= 1
    shown = " ".join(lines[start : at + 1])
    expected = [bounds(setting)] if setting.range else [m.value for m in setting.choices]
    for text in expected:
        assert text in shown, f"etc/rusm.toml line {at + 1}: {setting.name} does not show {text}"
