"""``docs/settings.md`` is what the declarations render, and says how to regenerate it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rusmd.config import reference
from rusmd.config.settings import SECTIONS

REPO = Path(__file__).resolve().parents[3]
PAGE = REPO / "docs" / "settings.md"


def test_committed_reference_is_what_the_declarations_render() -> None:
    assert PAGE.read_text() == reference.render(), (
        f"docs/settings.md is out of date; regenerate it: {reference.REGENERATE}"
    )


def test_reference_says_how_to_regenerate_it_near_the_top() -> None:
    top = PAGE.read_text().splitlines()[:15]
    assert any(reference.REGENERATE in line for line in top)


def test_regenerate_command_prints_the_reference() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rusmd.config.reference"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == reference.render()


def test_reference_has_a_row_for_every_declared_key() -> None:
    page = PAGE.read_text()
    for section in SECTIONS:
        body = page.split(f"## `{section.header}`", 1)[-1]
        for key in section.names():
            assert f"| `{key}` |" in body, f"{section.header} {key}"
