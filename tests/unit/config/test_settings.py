"""The setting declarations: consistent, what the loader checks, what the model holds."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from rusmd.config import load_manifest
from rusmd.config.model import (
    Capability,
    Component,
    Log,
    Manifest,
    Node,
    Preopen,
    Protocol,
    Serve,
)
from rusmd.config.reference import bounds, literal
from rusmd.config.settings import (
    CAPABILITY,
    COMPONENT,
    LOG,
    NODE,
    PREOPEN,
    ROOT,
    SECTIONS,
    SERVE,
    Kind,
    Section,
    Setting,
)
from rusmd.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
ALL = [(section, s) for section in SECTIONS for s in section.settings]
RANGED = [(section, s) for section, s in ALL if s.range is not None]

# Each table shape, its model struct built with only what it requires, and
# the struct's fields that are not manifest keys.
MODELS: dict[str, tuple[msgspec.Struct, set[str]]] = {
    NODE.header: (Node(), set()),
    LOG.header: (Log(), set()),
    SERVE.header: (Serve(protocol=Protocol.HTTP, listen="127.0.0.1:8080"), set()),
    CAPABILITY.header: (Capability(name="x"), {"name"}),
    PREOPEN.header: (Preopen(host="h", guest="/g"), set()),
    COMPONENT.header: (Component(name="x"), {"name", "profile"}),
}
MODELLED = [section for section in SECTIONS if section.header in MODELS]

LISTENER = '[[serve]]\nprotocol = "http"\nlisten = "127.0.0.1:8080"\nname = "api"\n'


def ids(param: Any) -> str:
    if isinstance(param, Section):
        return param.header
    return param.name if isinstance(param, Setting) else str(param)


def manifest_with(section: Section, line: str) -> str:
    """A manifest whose ``section``-shaped table holds ``line``."""
    return {
        ROOT.header: f"{line}\n",
        NODE.header: f"[node]\n{line}\n",
        LOG.header: f"[log]\n{line}\n",
        SERVE.header: f"{LISTENER}{line}\n",
        CAPABILITY.header: f"[capabilities.x]\n{line}\n",
        PREOPEN.header: f'[capabilities.x]\npreopen = [{{ host = "a", guest = "/a", {line} }}]\n',
        COMPONENT.header: f"[components.x]\n{line}\n",
    }[section.header]


def model_of(section: Section, manifest: Manifest) -> Any:
    """The model object ``manifest_with(section, …)`` resolves to."""
    return {
        NODE.header: lambda: manifest.node,
        LOG.header: lambda: manifest.log,
        SERVE.header: lambda: manifest.serve[0],
        CAPABILITY.header: lambda: manifest.capabilities["x"],
        PREOPEN.header: lambda: manifest.capabilities["x"].preopen[0],
        COMPONENT.header: lambda: manifest.components["x"],
    }[section.header]()


def load_text(tmp_path: Path, text: str) -> Manifest:
    path = tmp_path / "rusm.toml"
    path.write_text(text)
    return load_manifest(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    return [p.message for p in caught.value.problems]


# ── the declarations themselves ───────────────────────────────────────────


@pytest.mark.parametrize(("section", "setting"), ALL, ids=ids)
def test_setting_declaration_is_consistent(section: Section, setting: Setting) -> None:
    numeric = setting.kind in (Kind.INTEGER, Kind.SECONDS)
    assert (setting.range is not None) == numeric
    assert (setting.choices is not None) == (setting.kind is Kind.CHOICE)
    assert setting.help.strip() and setting.help.endswith(".")
    if setting.required:
        assert setting.default is None
    if setting.range is not None and not setting.required:
        low, high = setting.range
        assert low <= setting.default <= high
        assert isinstance(setting.default, float if setting.kind is Kind.SECONDS else int)
    if setting.choices is not None and not setting.required:
        assert setting.default in set(setting.choices)
    if setting.inherited:
        assert section is CAPABILITY


@pytest.mark.parametrize("section", SECTIONS, ids=ids)
def test_keys_are_unique_within_a_table(section: Section) -> None:
    assert len(set(section.names())) == len(section.names())


def test_a_table_names_itself_when_asked_for_an_undeclared_key() -> None:
    with pytest.raises(KeyError, match=r"\[node\] declares no setting 'nope'"):
        NODE["nope"]


# ── the model holds what is declared ──────────────────────────────────────


@pytest.mark.parametrize("section", MODELLED, ids=ids)
def test_model_fields_are_the_declared_keys(section: Section) -> None:
    model, not_keys = MODELS[section.header]
    fields = {field.name for field in msgspec.structs.fields(type(model))}
    assert fields - not_keys == {setting.field for setting in section.settings}


@pytest.mark.parametrize("section", MODELLED, ids=ids)
def test_model_defaults_are_the_declared_defaults(section: Section) -> None:
    model, _ = MODELS[section.header]
    for setting in section.settings:
        if not setting.required:
            value = getattr(model, setting.field)
            assert value == setting.default, setting.name
            assert literal(value) == literal(setting.default), setting.name


def attribute_docs(cls: type) -> dict[str, str]:
    """A Google-style docstring's ``Attributes:`` entries, each joined onto one line."""
    doc = inspect.getdoc(cls) or ""
    entries: dict[str, str] = {}
    current = None
    for line in doc.split("Attributes:\n", 1)[1].splitlines():
        entry = re.match(r"^    (\w+): (.*)$", line)
        if entry:
            current = entry.group(1)
            entries[current] = entry.group(2)
        elif current and line.startswith("        "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("section", MODELLED, ids=ids)
def test_model_docstrings_state_the_declared_defaults(section: Section) -> None:
    model, _ = MODELS[section.header]
    documented = attribute_docs(type(model))
    for setting in section.settings:
        text = documented[setting.field]
        if setting.required:
            assert "Required." in text, setting.name
        elif setting.inherited:
            assert "Default from the base" in text, setting.name
        else:
            stated = re.search(r"defaults to (\S+)", text)
            assert stated, f"{type(model).__name__}.{setting.field} states no default"
            shown = stated.group(1).strip('`".,;')
            expected = "none" if setting.default in (None, ()) else str(setting.default)
            assert shown.lower() == expected.lower(), setting.name


# ── the loader checks what is declared ────────────────────────────────────


def misspelled(key: str) -> str:
    """``key`` with two neighbouring letters in its middle swapped."""
    i = len(key) // 2
    while key[i] == key[i + 1]:
        i += 1
    return key[:i] + key[i + 1] + key[i] + key[i + 2 :]


@pytest.mark.parametrize(("section", "setting"), ALL, ids=ids)
def test_misspelled_key_suggests_the_declared_one(
    tmp_path: Path, section: Section, setting: Setting
) -> None:
    typo = misspelled(setting.name)
    what = "table" if section is ROOT else "key"
    expected = f"unknown {what} '{typo}' (did you mean '{setting.name}'?)"
    assert expected in problems(tmp_path, manifest_with(section, f"{typo} = 1"))


@pytest.mark.parametrize(("section", "setting"), RANGED, ids=ids)
def test_ranged_setting_accepts_its_bounds(
    tmp_path: Path, section: Section, setting: Setting
) -> None:
    assert setting.range is not None
    for bound in setting.range:
        shown = repr(float(bound)) if setting.kind is Kind.SECONDS else str(int(bound))
        manifest = load_text(tmp_path, manifest_with(section, f"{setting.name} = {shown}"))
        assert getattr(model_of(section, manifest), setting.field) == bound


@pytest.mark.parametrize(("section", "setting"), RANGED, ids=ids)
def test_ranged_setting_past_its_bounds_is_the_declared_error(
    tmp_path: Path, section: Section, setting: Setting
) -> None:
    assert setting.range is not None
    low, high = setting.range
    for outside in (int(low) - 1, int(high) + 1):
        found = problems(tmp_path, manifest_with(section, f"{setting.name} = {outside}"))
        if setting.kind is Kind.SECONDS:
            expected = f"must be a number of seconds from {low:g} to {high:g}"
        else:
            expected = f"must be an integer from {int(low)} to {int(high)}{setting.range_note}"
        assert found == [f"'{setting.name}' {expected}, not integer {outside}"]


# ── the operator's guide agrees ───────────────────────────────────────────


def test_operations_guide_listener_limits_table_matches_the_declarations() -> None:
    """docs/operations.md repeats the listener limits; its defaults and ranges must agree."""
    guide = (REPO / "docs" / "operations.md").read_text()
    table = guide.split("| key under `[[serve]]` |", 1)[1].split("\n\n", 1)[0]
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in table.splitlines()[2:]
    ]
    shown = [(key.strip("`"), default, limits) for key, default, limits, *_ in rows]
    declared = [(s.name, literal(s.default), bounds(s)) for s in SERVE.limits()]
    assert shown == declared
