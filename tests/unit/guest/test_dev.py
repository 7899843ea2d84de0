"""``rusmd dev``'s sorting of file events: pure, no watcher, no daemon.

Runs in: tests.
"""

from __future__ import annotations

from pathlib import Path

from rusmd.guest.dev import classify

APP = Path("/srv/app")
CONFIG = APP / "rusm.toml"


def test_classify_sorts_sources_modules_and_the_manifest() -> None:
    changes = classify(
        APP,
        CONFIG,
        [
            "/srv/app/components/web/web.c",
            "/srv/app/components/web/util.h",
            "/srv/app/components/echo.c",
            "/srv/app/wasm/web.wasm",
            "/srv/app/rusm.toml",
        ],
    )
    assert changes.sources == {"web", "echo"}
    assert changes.modules == {APP / "wasm" / "web.wasm"}
    assert changes.manifest


def test_classify_ignores_scratch_files_caches_and_other_paths() -> None:
    changes = classify(
        APP,
        CONFIG,
        [
            "/srv/app/wasm/.web.wasm.building",
            "/srv/app/.rusm/cache/web.cwasm",
            "/srv/app/components/web/notes.txt",
            "/srv/app/components/web/deep/x.c",
            "/srv/app/README.md",
            "/elsewhere/components/web/web.c",
        ],
    )
    assert (changes.sources, changes.modules, changes.manifest) == (set(), set(), False)
