"""``rusmd check`` (and an unreachable ``rusmctl``) run as real subprocesses.

Runs in: any (each test starts ``python -m rusmd`` / ``python -m rusmctl``
with a controlled environment; nothing is served).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import wasmtime

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "etc" / "rusm.toml"
SEEDS = sorted((REPO / "tests" / "fixtures" / "manifests").glob("*.toml"))

EX_OK = 0
EX_USAGE = 2
EX_UNAVAILABLE = 69
EX_CONFIG = 78

# Validate the manifest alone: these manifests name components without artifacts.
CONFIG_ONLY = "--config-only"

# Keys the tests grant; removed from the inherited environment so that only
# what a test sets (or writes to .env) can provide them.
GRANTED_KEYS = ("API_TOKEN", "DB_URL", "NOWHERE_KEY", "CWD_ONLY_KEY", "DB_PASSWORD")

GRANTING_MANIFEST = """\
[capabilities.api-caps]
inherits = "network-client"
env = ["API_TOKEN", "DB_URL", "NOWHERE_KEY", "CWD_ONLY_KEY"]

[components.api]
capability = "api-caps"
"""


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*GRANTED_KEYS, "CACHE_DIRECTORY")}
    env.update(extra)
    return env


def run_command(
    module: str, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=child_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def rusmd_check(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_command("rusmd", "check", *args, cwd=cwd, env=env)


def check_json(*args: str, cwd: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = rusmd_check(*args, "--json", cwd=cwd, env=env)
    document: dict[str, Any] = json.loads(result.stdout)
    assert result.returncode == (EX_OK if document["ok"] else EX_CONFIG), result
    return document


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stderr.splitlines()


def line_of(text: str, needle: str) -> int:
    """1-based line of the only line of ``text`` containing ``needle``."""
    found = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(found) == 1, (needle, found)
    return found[0]


def write_manifest(directory: Path, text: str, name: str = "rusm.toml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("seed", SEEDS, ids=[s.stem for s in SEEDS])
def test_check_seed_fixture_is_valid_exits_0(tmp_path: Path, seed: Path) -> None:
    result = rusmd_check("--config", str(seed), CONFIG_ONLY, cwd=tmp_path)

    assert result.returncode == EX_OK, result.stderr
    assert f"{seed}: ok" in result.stdout
    assert result.stderr == ""


def test_check_seed_fixtures_exist() -> None:
    assert len(SEEDS) >= 6


def test_check_sample_manifest_names_every_listener_and_component(tmp_path: Path) -> None:
    declared = tomllib.loads(SAMPLE.read_text())
    addresses = [declared["node"]["listen"], *(s["listen"] for s in declared["serve"])]
    components = list(declared["components"])
    assert len(addresses) >= 2
    assert components

    result = rusmd_check("--config", str(SAMPLE), CONFIG_ONLY, cwd=tmp_path)

    assert result.returncode == EX_OK, result.stderr
    for address in addresses:
        assert address in result.stdout
    component_rows = [r for r in result.stdout.splitlines() if r.startswith("component")]
    assert [row.split()[1] for row in component_rows] == components


def test_check_default_config_is_rusm_toml_in_cwd(tmp_path: Path) -> None:
    write_manifest(tmp_path, '[log]\nlevel = "warn"\n')

    result = rusmd_check(cwd=tmp_path)

    assert result.returncode == EX_OK, result.stderr
    assert result.stdout.startswith("rusm.toml: ok")


def test_check_misspelled_component_key_exits_78_with_one_located_line(tmp_path: Path) -> None:
    text = (
        '[node]\nlisten = "127.0.0.1:4000"\n\n[components.api]\nresident = true\ncapabilty = "x"\n'
    )
    path = write_manifest(tmp_path, text)

    result = rusmd_check("--config", str(path), cwd=tmp_path)

    assert result.returncode == EX_CONFIG
    assert result.stdout == ""
    [line] = stderr_lines(result)
    assert line.startswith(f"{path}:{line_of(text, 'capabilty')}:")
    assert "components.api" in line
    assert "capabilty" in line
    assert "did you mean 'capability'" in line


def test_check_three_mistakes_in_three_tables_prints_three_lines_in_file_order(
    tmp_path: Path,
) -> None:
    # Deliberately not in the order the loader visits tables (node, log, components).
    text = (
        "# three mistakes\n"
        "[components.api]\n"
        'resident = "yes"\n'
        "\n"
        "[log]\n"
        'levle = "info"\n'
        "\n"
        "[node]\n"
        'profile = "fast"\n'
    )
    path = write_manifest(tmp_path, text)

    result = rusmd_check("--config", str(path), cwd=tmp_path)

    assert result.returncode == EX_CONFIG
    lines = stderr_lines(result)
    assert len(lines) == 3, lines
    expected = [
        (line_of(text, "resident"), "components.api", "'resident'"),
        (line_of(text, "levle"), "log", "'levle'"),
        (line_of(text, "profile"), "node", "'fast'"),
    ]
    for line, (number, table, offending) in zip(lines, expected, strict=True):
        assert line.startswith(f"{path}:{number}: {table}: "), line
        assert offending in line


def test_check_listen_and_profile_flags_override_the_file(tmp_path: Path) -> None:
    path = write_manifest(
        tmp_path, '[node]\nlisten = "127.0.0.1:4000"\nprofile = "light"\nticks_per_second = 30\n'
    )

    document = check_json(
        "--config", str(path), "--listen", "127.0.0.1:4999", "--profile", "max", cwd=tmp_path
    )

    node = document["manifest"]["node"]
    assert node["listen"] == "127.0.0.1:4999"
    assert node["profile"] == "max"
    assert node["ticks_per_second"] == 30
    cores = document["usable_cores"]
    assert document["workers"] == max(1, (cores + 1) // 2)


def test_check_without_flags_keeps_the_files_node_values(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, '[node]\nlisten = "127.0.0.1:4001"\nprofile = "light"\n')

    document = check_json("--config", str(path), cwd=tmp_path)

    assert document["manifest"]["node"]["listen"] == "127.0.0.1:4001"
    assert document["manifest"]["node"]["profile"] == "light"


@pytest.mark.parametrize("address", ["nope", "127.0.0.1:99999", "127.0.0.1:", "::1:8080"])
def test_check_bad_listen_flag_exits_78_naming_the_flag(tmp_path: Path, address: str) -> None:
    path = write_manifest(tmp_path, '[log]\nlevel = "info"\n')

    result = rusmd_check("--config", str(path), "--listen", address, cwd=tmp_path)

    assert result.returncode == EX_CONFIG
    [line] = stderr_lines(result)
    assert line.startswith("--listen: ")
    assert repr(address) in line


def test_check_listen_flag_clashing_with_a_listener_exits_78(tmp_path: Path) -> None:
    path = write_manifest(
        tmp_path, '[[serve]]\nprotocol = "ws"\nlisten = "127.0.0.1:8081"\nname = "chat"\n'
    )

    result = rusmd_check("--config", str(path), "--listen", "127.0.0.1:8081", cwd=tmp_path)

    assert result.returncode == EX_CONFIG
    [line] = stderr_lines(result)
    assert "127.0.0.1:8081" in line
    assert "[node].listen" in line


def test_check_dotenv_beside_manifest_fills_key_and_process_env_wins(tmp_path: Path) -> None:
    app = tmp_path / "app"
    path = write_manifest(app, GRANTING_MANIFEST)
    (app / ".env").write_text("API_TOKEN=dotenv-token-4f1c\nDB_URL=dotenv-db-9a7e\n")
    # A .env in the working directory is not the app's and must not be read.
    (tmp_path / ".env").write_text("CWD_ONLY_KEY=cwd-only-77d2\n")
    env = child_env(DB_URL="process-db-3b8d")

    document = check_json("--config", str(path), CONFIG_ONLY, cwd=tmp_path, env=env)

    assert document["env"] == {
        "API_TOKEN": ".env",
        "DB_URL": "process",
        "NOWHERE_KEY": "missing",
        "CWD_ONLY_KEY": "missing",
    }


def test_check_text_output_shows_env_origins(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, GRANTING_MANIFEST)
    (tmp_path / ".env").write_text("API_TOKEN=dotenv-token-4f1c\n")

    result = rusmd_check(
        "--config", str(path), CONFIG_ONLY, cwd=tmp_path, env=child_env(DB_URL="process-db-3b8d")
    )

    assert result.returncode == EX_OK, result.stderr
    assert "env API_TOKEN (.env)" in result.stdout
    assert "env DB_URL (process)" in result.stdout
    assert "env NOWHERE_KEY (missing)" in result.stdout
    [warning] = [w for w in result.stdout.splitlines() if "NOWHERE_KEY" in w and "warning" in w]
    assert "neither in the environment nor .env" in warning


@pytest.mark.parametrize("flags", [(), ("--json",)], ids=["text", "json"])
def test_check_secret_values_never_appear_in_output(tmp_path: Path, flags: tuple[str, ...]) -> None:
    path = write_manifest(tmp_path, GRANTING_MANIFEST)
    (tmp_path / ".env").write_text("API_TOKEN=dotenv-token-4f1c\nDB_URL=dotenv-db-9a7e\n")
    env = child_env(DB_URL="process-db-3b8d")

    result = rusmd_check("--config", str(path), CONFIG_ONLY, *flags, cwd=tmp_path, env=env)

    assert result.returncode == EX_OK, result.stderr
    assert "API_TOKEN" in result.stdout
    output = result.stdout + result.stderr
    for secret in ("dotenv-token-4f1c", "dotenv-db-9a7e", "process-db-3b8d"):
        assert secret not in output


@pytest.mark.parametrize("flags", [(), ("--json",)], ids=["text", "json"])
def test_check_unparsable_dotenv_line_is_warned_without_its_secret(
    tmp_path: Path, flags: tuple[str, ...]
) -> None:
    path = write_manifest(tmp_path, GRANTING_MANIFEST)
    dotenv = tmp_path / ".env"
    dotenv.write_text('API_TOKEN=ok\nDB_PASSWORD="hunter2-secret" oops\n')

    result = rusmd_check("--config", str(path), CONFIG_ONLY, *flags, cwd=tmp_path)

    assert result.returncode == EX_OK, result.stderr
    assert f"{dotenv}:2:" in result.stdout
    assert "hunter2-secret" not in result.stdout + result.stderr
    assert "DB_PASSWORD" in result.stdout


def test_check_missing_manifest_exits_78_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "rusm.toml"

    result = rusmd_check("--config", str(missing), cwd=tmp_path)

    assert result.returncode == EX_CONFIG
    [line] = stderr_lines(result)
    assert line.startswith(f"{missing}: ")
    assert "No such file" in line


def test_check_missing_default_manifest_exits_78_naming_rusm_toml(tmp_path: Path) -> None:
    result = rusmd_check(cwd=tmp_path)

    assert result.returncode == EX_CONFIG
    [line] = stderr_lines(result)
    assert line.startswith("rusm.toml: ")


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ('[node]\nlisten = "127.0.0.1:4000"\nprofile = "max\n[log]\n', 'profile = "max'),
        ("# comment\n[node]\nlisten =\n", "listen ="),
        ('[node]\nprofile = "max"\nprofile = "light"\n', '"light"'),
        ('[log]\nlevel = "info"\n\n[[serve]]\nprotocol = http\n', "protocol = http"),
    ],
    ids=["unterminated-string", "missing-value", "repeated-key", "bare-word-value"],
)
def test_check_invalid_toml_exits_78_with_the_line(tmp_path: Path, text: str, bad: str) -> None:
    path = write_manifest(tmp_path, text)

    result = rusmd_check("--config", str(path), cwd=tmp_path)

    assert result.returncode == EX_CONFIG
    [line] = stderr_lines(result)
    assert line.startswith(f"{path}:{line_of(text, bad)}: ")


def test_check_json_on_failure_prints_errors_document_on_stdout(tmp_path: Path) -> None:
    text = '[components.api]\ncapabilty = "x"\n\n[log]\nlevel = "loud"\n'
    path = write_manifest(tmp_path, text)

    result = rusmd_check("--config", str(path), "--json", cwd=tmp_path)

    assert result.returncode == EX_CONFIG
    assert result.stderr == ""
    document = json.loads(result.stdout)
    assert document["ok"] is False
    errors = document["errors"]
    assert [(e["file"], e["line"], e["path"]) for e in errors] == [
        (str(path), line_of(text, "capabilty"), "components.api"),
        (str(path), line_of(text, "loud"), "log"),
    ]
    assert "did you mean 'capability'" in errors[0]["message"]
    assert errors[0]["text"].startswith(f"{path}:{errors[0]['line']}: components.api: ")


def test_check_json_on_success_reports_workers_cores_and_warnings(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, GRANTING_MANIFEST)

    document = check_json("--config", str(path), CONFIG_ONLY, cwd=tmp_path)

    assert document["ok"] is True
    assert document["manifest"]["path"] == str(path)
    assert document["manifest"]["components"]["api"]["capability"] == "api-caps"
    assert 1 <= document["workers"] <= document["usable_cores"]
    assert document["usable_cores"] <= len(os.sched_getaffinity(0))
    assert any("NOWHERE_KEY" in w for w in document["warnings"])


def test_check_help_exits_0_and_describes_flags(tmp_path: Path) -> None:
    result = rusmd_check("--help", cwd=tmp_path)

    assert result.returncode == EX_OK
    for flag in ("--config", "--json", "--listen", "--profile", "--config-only"):
        assert flag in result.stdout


def test_check_unknown_profile_exits_2_with_usage(tmp_path: Path) -> None:
    write_manifest(tmp_path, '[log]\nlevel = "info"\n')

    result = rusmd_check("--profile", "fast", cwd=tmp_path)

    assert result.returncode == EX_USAGE
    assert result.stderr.startswith("usage: rusmd check")
    assert "'fast'" in result.stderr
    assert result.stdout == ""


def test_rusmctl_status_without_daemon_exits_69_naming_the_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "nope.sock"

    result = run_command("rusmctl", "status", "--socket", str(socket_path), cwd=tmp_path)

    assert result.returncode == EX_UNAVAILABLE
    assert str(socket_path) in result.stderr
    assert not socket_path.exists()


# ── artifacts: rusmd check resolves and compiles every component ────────

HELLO_WAT = '(module (func (export "run") (result i32) i32.const 42))'
COMPONENT_HEADER = b"\x00asm\x0d\x00\x01\x00"
ONE_COMPONENT = "[components.api]\n"


@pytest.fixture
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("app")
    write_manifest(directory, ONE_COMPONENT)
    (directory / "wasm").mkdir()
    return directory


def put_artifact(app_dir: Path, name: str, data: bytes) -> Path:
    path = app_dir / "wasm" / name
    path.write_bytes(data)
    return path


def test_check_compiles_a_component_then_finds_it_cached(app_dir: Path) -> None:
    put_artifact(app_dir, "api.wasm", wasmtime.wat2wasm(HELLO_WAT))

    first = rusmd_check(cwd=app_dir)
    second = rusmd_check(cwd=app_dir)

    assert first.returncode == EX_OK, first.stderr
    assert "artifact wasm/api.wasm compiled in " in first.stdout
    assert second.returncode == EX_OK, second.stderr
    assert "artifact wasm/api.wasm ok (cached)" in second.stdout
    assert len(list((app_dir / ".rusm" / "cache").glob("*.cwasm"))) == 1


def test_check_json_reports_each_components_artifact(app_dir: Path) -> None:
    put_artifact(app_dir, "api.wasm", wasmtime.wat2wasm(HELLO_WAT))

    first = check_json(cwd=app_dir)
    second = check_json(cwd=app_dir)

    assert first["ok"] is True
    status = first["artifacts"]["api"]
    assert (status["artifact"], status["ok"], status["cached"]) == ("wasm/api.wasm", True, False)
    assert status["text"].startswith("wasm/api.wasm compiled in ")
    assert Path(status["cwasm"]).is_file()
    assert second["artifacts"]["api"]["cached"] is True
    assert second["artifacts"]["api"]["text"] == "wasm/api.wasm ok (cached)"


def test_check_missing_artifact_exits_78_naming_the_files(app_dir: Path) -> None:
    result = rusmd_check(cwd=app_dir)

    assert result.returncode == EX_CONFIG
    assert result.stdout == ""
    [line] = stderr_lines(result)
    assert line == (
        "rusm.toml: components.api: no artifact "
        "(looked for wasm/api.qjsbc, wasm/api.js, wasm/api.wasm)"
    )


def test_check_config_only_skips_artifacts(app_dir: Path) -> None:
    result = rusmd_check(CONFIG_ONLY, cwd=app_dir)
    document = check_json(CONFIG_ONLY, cwd=app_dir)

    assert result.returncode == EX_OK, result.stderr
    assert "artifact" not in result.stdout
    assert document["ok"] is True
    assert "artifacts" not in document
    assert not (app_dir / ".rusm").exists()


def test_check_javascript_artifact_exits_78_with_the_js_runtime_message(app_dir: Path) -> None:
    put_artifact(app_dir, "api.js", b"export default {}")
    put_artifact(app_dir, "api.wasm", wasmtime.wat2wasm(HELLO_WAT))

    result = rusmd_check(cwd=app_dir)

    assert result.returncode == EX_CONFIG
    [line] = stderr_lines(result)
    assert line == (
        "rusm.toml: components.api: wasm/api.js is a JavaScript component; "
        "JavaScript components arrive with the JS runtime"
    )


def test_check_component_model_binary_exits_78_with_the_wasip2_message(app_dir: Path) -> None:
    put_artifact(app_dir, "api.wasm", COMPONENT_HEADER + b"\x00" * 32)

    result = rusmd_check(cwd=app_dir)

    assert result.returncode == EX_CONFIG
    [line] = stderr_lines(result)
    assert line == (
        "rusm.toml: components.api: wasm/api.wasm is a wasip2 component; rusm runs core "
        "wasm modules (wasip1) for now — build for wasm32-wasi (preview 1)"
    )


def test_check_invalid_module_exits_78_naming_the_file_and_wasmtimes_reason(
    app_dir: Path,
) -> None:
    path = put_artifact(app_dir, "api.wasm", b"\x00asm\x01\x00\x00\x00\x01\x05\x01\x60")

    result = rusmd_check(cwd=app_dir)

    assert result.returncode == EX_CONFIG
    [line] = stderr_lines(result)
    assert line.startswith(f"rusm.toml: components.api: {path}: ")
    assert "failed to parse WebAssembly module" in line


def test_check_json_failure_lists_the_component_and_keeps_the_good_ones(app_dir: Path) -> None:
    write_manifest(app_dir, "[components.api]\n[components.gone]\n")
    put_artifact(app_dir, "api.wasm", wasmtime.wat2wasm(HELLO_WAT))

    result = rusmd_check("--json", cwd=app_dir)

    assert result.returncode == EX_CONFIG
    document = json.loads(result.stdout)
    assert document["ok"] is False
    [error] = document["errors"]
    assert (error["path"], error["line"]) == ("components.gone", 0)
    assert error["message"].startswith("no artifact (looked for wasm/gone.qjsbc")
    assert document["artifacts"]["api"]["ok"] is True
    assert document["artifacts"]["gone"]["ok"] is False


def test_check_uses_systemds_cache_directory(app_dir: Path, tmp_path: Path) -> None:
    put_artifact(app_dir, "api.wasm", wasmtime.wat2wasm(HELLO_WAT))
    cache = tmp_path / "var-cache-rusmd"

    result = rusmd_check(cwd=app_dir, env=child_env(CACHE_DIRECTORY=str(cache)))

    assert result.returncode == EX_OK, result.stderr
    assert len(list(cache.glob("*.cwasm"))) == 1
    assert not (app_dir / ".rusm").exists()


def test_check_refuses_a_cache_directory_others_can_write(app_dir: Path, tmp_path: Path) -> None:
    put_artifact(app_dir, "api.wasm", wasmtime.wat2wasm(HELLO_WAT))
    cache = tmp_path / "shared-cache"
    cache.mkdir()
    cache.chmod(0o777)

    result = rusmd_check(cwd=app_dir, env=child_env(CACHE_DIRECTORY=str(cache)))

    assert result.returncode == EX_CONFIG
    [line] = stderr_lines(result)
    assert line.startswith(f"rusm.toml: components.api: compile cache {cache} ")
    assert "writable by group or others" in line
    assert list(cache.iterdir()) == []


ROUTED = """\
[[serve]]
protocol = "http"
listen = "127.0.0.1:18080"
[serve.routes]
"GET /" = "api#home"
"GET /gone" = "api#nosuch"

[components.api]
"""
HOME_WAT = '(module (func (export "home")))'


def test_check_route_naming_an_action_the_component_lacks_exits_78_with_its_line(
    app_dir: Path,
) -> None:
    write_manifest(app_dir, ROUTED)
    put_artifact(app_dir, "api.wasm", wasmtime.wat2wasm(HOME_WAT))

    result = rusmd_check(cwd=app_dir)

    assert result.returncode == EX_CONFIG
    [line] = stderr_lines(result)
    assert line == (
        "rusm.toml:6: serve[0].routes: 'GET /gone': component api exports no function 'nosuch'"
    )


def test_check_routes_whose_actions_are_all_exported_exit_0(app_dir: Path) -> None:
    write_manifest(app_dir, ROUTED.replace("api#nosuch", "api#home"))
    put_artifact(app_dir, "api.wasm", wasmtime.wat2wasm(HOME_WAT))

    result = rusmd_check(cwd=app_dir)

    assert result.returncode == EX_OK, result.stderr


# ── imports: rusmd check refuses what a worker would refuse at load ─────

SPAWNING_WAT = """\
(module
  (import "rusm" "spawn" (func $spawn (param i32 i32) (result i64)))
  (memory (export "memory") 1)
  (func (export "run") (result i32) i32.const 0))
"""
UNKNOWN_IMPORT_WAT = """\
(module
  (import "rusm" "teleport" (func (param i32)))
  (func (export "run") (result i32) i32.const 0))
"""
TRUSTED_API = '[components.other]\n\n[components.api]\ncapability = "trusted"\n'


def test_check_component_importing_an_ungranted_function_exits_78_naming_it(
    app_dir: Path,
) -> None:
    write_manifest(app_dir, "[components.other]\n\n[components.api]\n")
    put_artifact(app_dir, "api.wasm", wasmtime.wat2wasm(SPAWNING_WAT))
    put_artifact(app_dir, "other.wasm", wasmtime.wat2wasm(HELLO_WAT))

    result = rusmd_check(cwd=app_dir)

    assert result.returncode == EX_CONFIG
    assert result.stdout == ""
    [line] = stderr_lines(result)
    assert line == (
        "rusm.toml:3: components.api: capability denied: api imports rusm.spawn, "
        "which needs allow-spawn"
    )


def test_check_component_importing_an_unknown_function_exits_78_naming_it(
    app_dir: Path,
) -> None:
    put_artifact(app_dir, "api.wasm", wasmtime.wat2wasm(UNKNOWN_IMPORT_WAT))

    result = rusmd_check("--json", cwd=app_dir)

    assert result.returncode == EX_CONFIG
    document = json.loads(result.stdout)
    [error] = document["errors"]
    assert (error["path"], error["line"]) == ("components.api", 1)
    assert error["message"].startswith("component api imports unknown function rusm.teleport ")


def test_check_component_whose_imports_are_granted_exits_0(app_dir: Path) -> None:
    write_manifest(app_dir, TRUSTED_API)
    put_artifact(app_dir, "api.wasm", wasmtime.wat2wasm(SPAWNING_WAT))
    put_artifact(app_dir, "other.wasm", wasmtime.wat2wasm(HELLO_WAT))

    result = rusmd_check(cwd=app_dir)

    assert result.returncode == EX_OK, result.stderr
    assert "artifact wasm/api.wasm compiled in " in result.stdout
