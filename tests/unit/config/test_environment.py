"""Tests for env layering: the process environment first, then ``<app dir>/.env``.

Runs in: any (files under tmp_path; ``os.environ`` is never touched).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rusmd.config.environment import MAX_DOTENV_BYTES, EnvOrigin, load_environment


def write_dotenv(app_dir: Path, *lines: str) -> Path:
    path = app_dir / ".env"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_environment_key_in_process_and_dotenv_process_value_wins(tmp_path: Path) -> None:
    write_dotenv(tmp_path, "API_TOKEN=from-dotenv")

    environment = load_environment(tmp_path, process={"API_TOKEN": "from-process"})

    assert environment.get("API_TOKEN") == "from-process"
    assert environment.origin("API_TOKEN") is EnvOrigin.PROCESS
    assert environment.resolve(("API_TOKEN",)) == [("API_TOKEN", "from-process")]


def test_environment_key_only_in_dotenv_is_filled_from_dotenv(tmp_path: Path) -> None:
    write_dotenv(tmp_path, "API_BASE_URL=https://api.example")

    environment = load_environment(tmp_path, process={"HOME": "/root"})

    assert environment.get("API_BASE_URL") == "https://api.example"
    assert environment.origin("API_BASE_URL") is EnvOrigin.DOTENV
    assert environment.resolve(("API_BASE_URL",)) == [("API_BASE_URL", "https://api.example")]


def test_environment_empty_process_value_still_wins_over_dotenv(tmp_path: Path) -> None:
    write_dotenv(tmp_path, "FEATURE_FLAG=on")

    environment = load_environment(tmp_path, process={"FEATURE_FLAG": ""})

    assert environment.get("FEATURE_FLAG") == ""
    assert environment.origin("FEATURE_FLAG") is EnvOrigin.PROCESS
    assert environment.resolve(("FEATURE_FLAG",)) == [("FEATURE_FLAG", "")]


def test_environment_resolve_key_set_nowhere_is_omitted_in_grant_order(tmp_path: Path) -> None:
    write_dotenv(tmp_path, "FROM_FILE=b")

    environment = load_environment(tmp_path, process={"FROM_PROCESS": "a"})

    assert environment.resolve(("FROM_PROCESS", "NOWHERE", "FROM_FILE")) == [
        ("FROM_PROCESS", "a"),
        ("FROM_FILE", "b"),
    ]
    assert environment.get("NOWHERE") is None


@pytest.mark.parametrize(
    ("key", "origin"),
    [
        ("ONLY_PROCESS", EnvOrigin.PROCESS),
        ("BOTH", EnvOrigin.PROCESS),
        ("ONLY_DOTENV", EnvOrigin.DOTENV),
        ("NEITHER", EnvOrigin.MISSING),
    ],
)
def test_environment_origin_each_layer_names_the_layer(
    tmp_path: Path, key: str, origin: EnvOrigin
) -> None:
    write_dotenv(tmp_path, "BOTH=file", "ONLY_DOTENV=file")

    environment = load_environment(tmp_path, process={"ONLY_PROCESS": "p", "BOTH": "p"})

    assert environment.origin(key) is origin


def test_environment_origin_values_are_the_check_json_spelling() -> None:
    assert [o.value for o in EnvOrigin] == ["process", ".env", "missing"]


def test_environment_without_dotenv_loads_process_only_with_no_problems(tmp_path: Path) -> None:
    environment = load_environment(tmp_path, process={"API_TOKEN": "p"})

    assert environment.problems == ()
    assert dict(environment.dotenv) == {}
    assert environment.dotenv_path == ""
    assert environment.get("API_TOKEN") == "p"
    assert environment.origin("OTHER") is EnvOrigin.MISSING


def test_environment_dotenv_is_read_from_the_app_dir_given(tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    write_dotenv(tmp_path, "IN_PARENT=1")
    path = write_dotenv(app_dir, "IN_APP_DIR=1")

    environment = load_environment(app_dir, process={})

    assert environment.dotenv_path == str(path)
    assert environment.origin("IN_APP_DIR") is EnvOrigin.DOTENV
    assert environment.origin("IN_PARENT") is EnvOrigin.MISSING


@pytest.mark.parametrize(
    "bad_line",
    [
        "this is not valid",
        "=no-key",
        'QUOTED="closed" trailing-words',
    ],
)
def test_environment_unparsable_dotenv_line_reported_with_line_and_path(
    tmp_path: Path, bad_line: str
) -> None:
    path = write_dotenv(tmp_path, "# settings", "BEFORE=1", bad_line, "AFTER=2")

    environment = load_environment(tmp_path, process={})

    assert len(environment.problems) == 1
    problem = environment.problems[0]
    assert problem.file == str(path)
    assert problem.line == 3
    assert str(problem).startswith(f"{path}:3: ")
    assert environment.get("BEFORE") == "1"
    assert environment.get("AFTER") == "2"


def test_environment_unparsable_lines_after_multiline_value_keep_true_line_numbers(
    tmp_path: Path,
) -> None:
    write_dotenv(tmp_path, 'CERT="-----BEGIN', "abc", '-----END"', "not valid", "OK=1", "=bad")

    environment = load_environment(tmp_path, process={})

    assert [p.line for p in environment.problems] == [4, 6]
    assert environment.get("CERT") == "-----BEGIN\nabc\n-----END"
    assert environment.get("OK") == "1"


@pytest.mark.parametrize(
    ("line", "key", "value"),
    [
        ("export API_TOKEN=abc123", "API_TOKEN", "abc123"),
        ('GREETING="hello world"', "GREETING", "hello world"),
        ("SINGLE='hello world'", "SINGLE", "hello world"),
        ('HASH_IN_QUOTES="a # b"', "HASH_IN_QUOTES", "a # b"),
        ("UNQUOTED=value # a comment", "UNQUOTED", "value"),
        ('ESCAPED="line1\\nline2"', "ESCAPED", "line1\nline2"),
        ("RAW_SINGLE='line1\\nline2'", "RAW_SINGLE", "line1\\nline2"),
        ("NO_INTERPOLATION=${HOME}/x", "NO_INTERPOLATION", "${HOME}/x"),
        ("EMPTY=", "EMPTY", ""),
        ('export  SPACED = "padded"  ', "SPACED", "padded"),
    ],
)
def test_environment_dotenv_syntax_gives_guest_the_dotenv_value(
    tmp_path: Path, line: str, key: str, value: str
) -> None:
    write_dotenv(tmp_path, line)

    environment = load_environment(tmp_path, process={"HOME": "/root"})

    assert environment.problems == ()
    assert environment.resolve((key,)) == [(key, value)]


def test_environment_oversized_dotenv_is_reported_and_not_loaded(
    tmp_path: Path,
) -> None:
    path = tmp_path / ".env"
    filler = "# padding\n" * (MAX_DOTENV_BYTES // 10 + 1)
    path.write_text(f"FIRST=1\n{filler}LAST=2\n")

    environment = load_environment(tmp_path, process={})

    assert any(p.file == str(path) and "larger than" in p.message for p in environment.problems)
    # A cut-off file could hand a guest half a value, so none of it loads.
    assert environment.origin("FIRST") is EnvOrigin.MISSING
    assert environment.origin("LAST") is EnvOrigin.MISSING
