"""Wasm processes on the real daemon: limits, capabilities, lifecycle, rusmctl.

Runs in: any (the test process; ``rusmd`` runs as a subprocess with one
worker, so every process in a test shares that worker).

The guests are the WAT files in ``tests/guests``, compiled into the app's
``wasm/`` directory by the test. The sandbox tests are here: a
memory-limit breach crashes only that process while a neighbour on the
same worker keeps running, and a preopen of a missing path fails only
that process, before it runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from rusmd.errors import EX_NOSUCH, EX_OK, EX_REFUSED
from tests.guests.pathological import pathological_module
from tests.integration.conftest import App, Daemon

GUESTS = Path(__file__).resolve().parent.parent / "guests"
# Long enough for a loaded two-core machine to spawn, run and log.
SETTLE_S = 20.0


def write_app(app: App, components: str, *, extra: str = "", guests: list[str]) -> None:
    """A manifest with ``components`` and the named guests compiled into wasm/."""
    wasm = app.directory / "wasm"
    wasm.mkdir(exist_ok=True)
    for guest in guests:
        source, _, name = guest.partition(":")
        target = name or source
        (wasm / f"{target}.wasm").write_bytes(
            wasmtime.wat2wasm((GUESTS / f"{source}.wat").read_text())
        )
    app.manifest.write_text(
        f'[node]\nlisten = "127.0.0.1:{app.node_port}"\n[log]\nlevel = "debug"\n{extra}{components}'
    )


def texts(daemon: Daemon) -> list[str]:
    return [f"{r['source']} {r['level']} {r['text']}" for r in daemon.log_records()]


def lines_with(daemon: Daemon, needle: str) -> Callable[[], list[str]]:
    return lambda: [line for line in texts(daemon) if needle in line]


def spawn(daemon: Daemon, name: str) -> dict[str, Any]:
    result = daemon.ctl("spawn", name, "--json")
    assert result.returncode == EX_OK, result.stderr
    spawned: dict[str, Any] = json.loads(result.stdout)
    return spawned


def processes(daemon: Daemon) -> dict[int, dict[str, Any]]:
    reply = daemon.request("list")
    assert reply["ok"], reply
    return {row["pid"]: row for row in reply["result"]["processes"]}


@pytest.fixture
def one_worker(start_daemon: Callable[..., Daemon]) -> Callable[..., Daemon]:
    """Start the daemon with exactly one worker (profile light on 2 cores)."""

    def start(**options: Any) -> Daemon:
        return start_daemon(cpus=2, **options)

    return start


# ── lifecycle and logging ───────────────────────────────────────────────


def test_spawn_runs_the_guest_and_logs_spawn_guest_line_and_exit(
    app: App, one_worker: Callable[..., Daemon]
) -> None:
    write_app(app, "[components.hello]\n", guests=["hello"])
    daemon = one_worker()

    spawned = spawn(daemon, "hello")

    label = spawned["label"]
    assert label == f"hello#{spawned['pid']}"
    exit_line = daemon.wait_for(lines_with(daemon, f"exit {label}"), SETTLE_S, "the exit line")
    assert exit_line == [f"rusm info exit {label} normal"]
    lines = texts(daemon)
    assert f"rusm debug spawn {label} mem=64M" in lines
    assert f"{label} info hello from a guest" in lines
    assert lines.index(f"rusm debug spawn {label} mem=64M") < lines.index(
        f"{label} info hello from a guest"
    )


def test_pids_name_their_worker_and_are_never_reused(
    app: App, one_worker: Callable[..., Daemon]
) -> None:
    write_app(app, "[components.hello]\n", guests=["hello"])
    daemon = one_worker()

    first = [spawn(daemon, "hello")["pid"] for _ in range(3)]
    worker = daemon.workers()[0]
    daemon.ctl("kill", str(worker["pid"]))
    daemon.wait_for(
        lambda: (
            daemon.workers().get(0, {}).get("pid") not in (None, worker["pid"])
            and daemon.workers()[0]["state"] == "ready"
        ),
        SETTLE_S,
        "the worker to be replaced",
    )
    after = [spawn(daemon, "hello")["pid"] for _ in range(3)]

    assert all(pid % 1000 == 0 for pid in first + after)
    assert len(set(first + after)) == 6
    assert min(after) > max(first)


def test_log_level_off_shows_no_lifecycle_or_guest_lines(
    app: App, one_worker: Callable[..., Daemon]
) -> None:
    write_app(app, "[components.hello]\n", guests=["hello"])
    app.manifest.write_text(app.manifest.read_text().replace('level = "debug"', 'level = "off"'))
    daemon = one_worker()

    pid = spawn(daemon, "hello")["pid"]
    daemon.wait_for(lambda: pid not in processes(daemon), SETTLE_S, "the process to exit")

    assert not [line for line in texts(daemon) if "hello#" in line]


def test_level_error_shows_crashes_but_not_spawns_or_clean_exits(
    app: App, one_worker: Callable[..., Daemon]
) -> None:
    write_app(
        app,
        "[components.hello]\n[components.exits]\n",
        guests=["hello", "exits"],
    )
    app.manifest.write_text(app.manifest.read_text().replace('level = "debug"', 'level = "error"'))
    daemon = one_worker()

    ok = spawn(daemon, "hello")["label"]
    bad = spawn(daemon, "exits")["label"]
    daemon.wait_for(lines_with(daemon, f"exit {bad} crashed"), SETTLE_S, "the crash line")

    lines = texts(daemon)
    assert f"rusm error exit {bad} crashed (exit code 3)" in lines
    assert not [line for line in lines if ok in line]
    assert not [line for line in lines if " spawn " in line]


# ── the sandbox: memory and preopens ───────────────────────────────────


def test_memory_limit_breach_crashes_only_that_process_while_a_neighbour_runs(
    app: App, one_worker: Callable[..., Daemon]
) -> None:
    write_app(
        app,
        "[capabilities.small]\nmax-memory-mb = 2\n"
        '[components.grow]\ncapability = "small"\n[components.sleeper]\n',
        guests=["grow", "sleeper"],
    )
    daemon = one_worker()
    neighbour = spawn(daemon, "sleeper")
    daemon.wait_for(
        lines_with(daemon, f"{neighbour['label']} info sleeper started"),
        SETTLE_S,
        "the neighbour to start",
    )
    worker_pid = daemon.workers()[0]["pid"]

    grower = spawn(daemon, "grow")

    crash = daemon.wait_for(
        lines_with(daemon, f"exit {grower['label']} crashed"), SETTLE_S, "the crash"
    )
    assert "trap: wasm `unreachable` instruction executed" in crash[0]
    assert "memory at its 2 MiB limit" in crash[0]
    # The guest backtrace follows, attributed to the process.
    backtrace = [
        line for line in texts(daemon) if line.startswith(f"{grower['label']} error   at ")
    ]
    assert backtrace and "module!" in backtrace[0]
    assert grower["worker"] == neighbour["worker"] == 0
    alive = processes(daemon)
    assert neighbour["pid"] in alive
    assert alive[neighbour["pid"]]["state"] in ("running", "sleeping")
    assert daemon.workers()[0]["pid"] == worker_pid
    # And the neighbour still does what it does: a kill finds it in its sleep.
    assert daemon.ctl("kill", neighbour["label"]).returncode == EX_OK
    daemon.wait_for(
        lines_with(daemon, f"rusm warn exit {neighbour['label']} killed"), SETTLE_S, "the kill"
    )


def test_preopen_of_a_missing_path_fails_only_that_process_before_it_runs(
    app: App, one_worker: Callable[..., Daemon]
) -> None:
    write_app(
        app,
        '[capabilities.data]\npreopen = [{ host = "./missing", guest = "/data" }]\n'
        '[components.files]\ncapability = "data"\n[components.hello]\n',
        guests=["files", "hello"],
    )
    daemon = one_worker()

    broken = spawn(daemon, "files")
    fine = spawn(daemon, "hello")

    crash = daemon.wait_for(lines_with(daemon, f"exit {broken['label']}"), SETTLE_S, "the exit")
    assert crash == [
        f"rusm error exit {broken['label']} crashed (preopen /data: host directory "
        f"{app.directory / 'missing'} does not exist)"
    ]
    daemon.wait_for(lines_with(daemon, f"exit {fine['label']} normal"), SETTLE_S, "hello's exit")
    assert not [line for line in texts(daemon) if f"{broken['label']} info" in line]


def test_guest_reads_a_read_only_preopen_cannot_write_it_or_leave_it(
    app: App, one_worker: Callable[..., Daemon]
) -> None:
    data = app.directory / "data"
    data.mkdir()
    (data / "in.txt").write_text("granted contents")
    (app.directory / "outside.txt").write_text("secret")
    write_app(
        app,
        '[capabilities.data]\npreopen = [{ host = "./data", guest = "/data" }]\n'
        '[components.files]\ncapability = "data"\n',
        guests=["files"],
    )
    daemon = one_worker()

    label = spawn(daemon, "files")["label"]

    daemon.wait_for(lines_with(daemon, f"exit {label} normal"), SETTLE_S, "the exit")
    said = [line.split(" info ", 1)[1] for line in texts(daemon) if line.startswith(f"{label} ")]
    assert said == ["read: granted contents", "write: denied", "escape: denied"]
    assert not (data / "out.txt").exists()


def test_a_writable_preopen_lets_the_guest_create_files(
    app: App, one_worker: Callable[..., Daemon]
) -> None:
    data = app.directory / "data"
    data.mkdir()
    (data / "in.txt").write_text("x")
    write_app(
        app,
        '[capabilities.data]\npreopen = [{ host = "./data", guest = "/data", read-only = false }]\n'
        '[components.files]\ncapability = "data"\n',
        guests=["files"],
    )
    daemon = one_worker()

    label = spawn(daemon, "files")["label"]

    daemon.wait_for(lines_with(daemon, f"exit {label} normal"), SETTLE_S, "the exit")
    assert f"{label} info write: ok" in texts(daemon)
    assert (data / "out.txt").exists()


# ── env ─────────────────────────────────────────────────────────────────


def test_guest_sees_granted_env_keys_from_env_and_dotenv_and_nothing_else(
    app: App, one_worker: Callable[..., Daemon]
) -> None:
    (app.directory / ".env").write_text("FROM_DOTENV=dotenv-value\nUNGRANTED_DOTENV=no\n")
    write_app(
        app,
        '[capabilities.envy]\nenv = ["FROM_PROCESS", "FROM_DOTENV", "NOT_SET_ANYWHERE"]\n'
        '[components.env]\ncapability = "envy"\n',
        guests=["env"],
    )
    daemon = one_worker(env={"FROM_PROCESS": "process-value", "UNGRANTED_SECRET": "hunter2"})

    label = spawn(daemon, "env")["label"]

    daemon.wait_for(lines_with(daemon, f"exit {label} normal"), SETTLE_S, "the exit")
    said = " ".join(line for line in texts(daemon) if line.startswith(f"{label} "))
    assert "FROM_PROCESS=process-value" in said
    assert "FROM_DOTENV=dotenv-value" in said
    assert "UNGRANTED" not in said
    assert "hunter2" not in said
    assert "NOT_SET_ANYWHERE" not in said
    assert f"rusm debug spawn {label} env=3 mem=64M" in texts(daemon)


# ── capabilities ────────────────────────────────────────────────────────


def test_raw_stdout_reaches_the_daemons_stdout_only_with_allow_stdio(
    app: App, one_worker: Callable[..., Daemon]
) -> None:
    write_app(
        app,
        "[capabilities.loud]\nallow-stdio = true\n"
        '[components.quiet]\n[components.loud]\ncapability = "loud"\n',
        guests=["stdout:quiet", "stdout:loud"],
    )
    daemon = one_worker()

    quiet = spawn(daemon, "quiet")["label"]
    daemon.wait_for(lines_with(daemon, f"exit {quiet} normal"), SETTLE_S, "the quiet exit")
    assert "raw stdout from a guest" not in daemon.read_log()
    loud = spawn(daemon, "loud")["label"]
    daemon.wait_for(lines_with(daemon, f"exit {loud} normal"), SETTLE_S, "the loud exit")

    daemon.wait_for(
        lambda: "raw stdout from a guest" in daemon.read_log(), SETTLE_S, "the raw line"
    )
    assert daemon.read_log().count("raw stdout from a guest") == 1
    assert f"rusm debug spawn {loud} stdio mem=64M" in texts(daemon)


def test_an_ungranted_import_is_denied_at_spawn_with_the_message(
    app: App, one_worker: Callable[..., Daemon]
) -> None:
    write_app(app, "[components.spawner]\n[components.hello]\n", guests=["spawner", "hello"])
    daemon = one_worker()

    result = daemon.ctl("spawn", "spawner")

    assert result.returncode == EX_REFUSED
    assert "capability denied: spawner imports rusm.spawn, which needs allow-spawn" in result.stderr
    assert processes(daemon) == {}
    assert not [line for line in texts(daemon) if "spawn spawner#" in line]
    status = daemon.status()
    states = {c["name"]: c for c in status["components"]}
    assert states["spawner"]["state"] == "ready"  # it compiled; linking is what refuses it


def test_a_granted_spawn_runs_the_child_under_its_own_profile(
    app: App, one_worker: Callable[..., Daemon]
) -> None:
    write_app(
        app,
        "[capabilities.parent]\nallow-spawn = true\nmax-memory-mb = 32\n"
        '[components.spawner]\ncapability = "parent"\n[components.hello]\n',
        guests=["spawner", "hello"],
    )
    daemon = one_worker()

    parent = spawn(daemon, "spawner")["label"]

    child = daemon.wait_for(lines_with(daemon, "rusm debug spawn hello#"), SETTLE_S, "the child")
    assert f"rusm debug spawn {parent} spawn mem=32M" in texts(daemon)
    assert child[0].endswith(" mem=64M")  # hello's own profile, not the parent's


def test_a_full_worker_refuses_spawns_with_limit_naming_worker_and_setting(
    app: App, one_worker: Callable[..., Daemon]
) -> None:
    write_app(
        app,
        "[capabilities.parent]\nallow-spawn = true\n"
        '[components.limiter]\ncapability = "parent"\n[components.sleeper]\n',
        guests=["limiter", "sleeper"],
    )
    text = app.manifest.read_text()
    app.manifest.write_text(text.replace("[log]", "max-processes = 2\n[log]", 1))
    daemon = one_worker()
    worker_pid = daemon.workers()[0]["pid"]
    first = spawn(daemon, "sleeper")["label"]
    spawn(daemon, "sleeper")

    refused = daemon.ctl("spawn", "sleeper")

    assert refused.returncode == EX_REFUSED
    assert "worker 0 is at its process limit (2; [node].max-processes sizes it)" in (refused.stderr)
    assert daemon.ctl("kill", first).returncode == EX_OK
    daemon.wait_for(lines_with(daemon, f"exit {first} killed"), SETTLE_S, "the kill")
    limiter = spawn(daemon, "limiter")["label"]
    daemon.wait_for(lines_with(daemon, f"exit {limiter} normal"), SETTLE_S, "the limiter")
    assert f"{limiter} info spawn refused: limit" in texts(daemon)
    assert sorted(row["component"] for row in processes(daemon).values()) == ["sleeper"]
    assert spawn(daemon, "sleeper")["label"].startswith("sleeper#")
    assert daemon.workers()[0]["pid"] == worker_pid


# ── CPU ─────────────────────────────────────────────────────────────────


def test_an_infinite_loop_is_killed_at_its_cpu_budget_and_the_worker_keeps_serving(
    app: App, one_worker: Callable[..., Daemon]
) -> None:
    write_app(
        app,
        '[capabilities.quick]\nmax-cpu-ms = 200\n[components.spin]\ncapability = "quick"\n'
        "[components.hello]\n",
        guests=["spin", "hello"],
    )
    daemon = one_worker()
    worker_pid = daemon.workers()[0]["pid"]

    label = spawn(daemon, "spin")["label"]

    crash = daemon.wait_for(lines_with(daemon, f"exit {label}"), SETTLE_S, "the cpu kill")
    assert crash == [f"rusm error exit {label} crashed (cpu limit: ran over its 200 ms budget)"]
    after = spawn(daemon, "hello")["label"]
    daemon.wait_for(lines_with(daemon, f"exit {after} normal"), SETTLE_S, "the next process")
    assert daemon.workers()[0]["pid"] == worker_pid


# ── rusmctl on processes ────────────────────────────────────────────────


def test_rusmctl_list_info_and_kill_work_on_wasm_processes(
    app: App, one_worker: Callable[..., Daemon]
) -> None:
    write_app(app, "[components.sleeper]\n", guests=["sleeper"])
    daemon = one_worker()
    spawned = spawn(daemon, "sleeper")
    label, pid = spawned["label"], spawned["pid"]

    listed = daemon.ctl("list")
    assert listed.returncode == EX_OK
    row = next(line for line in listed.stdout.splitlines() if line.startswith(label))
    assert row.split()[1] == "0"
    assert row.split()[3].endswith("M")
    rows = json.loads(daemon.ctl("list", "--json").stdout)["processes"]
    assert [(r["pid"], r["component"], r["worker"]) for r in rows] == [(pid, "sleeper", 0)]
    assert rows[0]["memory_bytes"] == 65536

    info = json.loads(daemon.ctl("info", label, "--json").stdout)["process"]
    assert info["pid"] == pid
    assert info["capability"] == "sandboxed"
    assert info["max_memory_bytes"] == 64 << 20
    assert info["entry"] == "run"

    killed = daemon.ctl("kill", f"#{pid}")
    assert killed.returncode == EX_OK, killed.stderr
    assert killed.stdout.strip() == f"killed {label}"
    daemon.wait_for(lines_with(daemon, f"rusm warn exit {label} killed"), SETTLE_S, "the kill")
    again = daemon.ctl("kill", label)
    assert again.returncode == EX_NOSUCH
    assert f"no process {label}" in again.stderr


def test_rusmctl_spawn_of_an_unknown_component_names_the_registered_ones(
    app: App, one_worker: Callable[..., Daemon]
) -> None:
    write_app(app, "[components.hello]\n", guests=["hello"])
    daemon = one_worker()

    result = daemon.ctl("spawn", "nope")

    assert result.returncode == EX_NOSUCH
    assert "no component named 'nope' (registered: hello)" in result.stderr


def test_a_resident_component_is_spawned_at_boot(
    app: App, one_worker: Callable[..., Daemon]
) -> None:
    write_app(app, "[components.sleeper]\nresident = true\n", guests=["sleeper"])
    daemon = one_worker()

    rows = daemon.wait_for(lambda: processes(daemon), SETTLE_S, "the resident to run")

    assert [row["component"] for row in rows.values()] == ["sleeper"]


def test_a_component_without_an_artifact_fails_alone(
    app: App, one_worker: Callable[..., Daemon]
) -> None:
    write_app(app, "[components.hello]\n[components.ghost]\n", guests=["hello"])
    daemon = one_worker()

    result = daemon.ctl("spawn", "ghost")

    assert result.returncode == EX_REFUSED
    assert "component ghost: no artifact" in result.stderr
    assert spawn(daemon, "hello")["component"] == "hello"
    states = {c["name"]: c["state"] for c in daemon.status()["components"]}
    assert states == {"hello": "ready", "ghost": "failed"}


# ── the compile cache ───────────────────────────────────────────────────


def test_second_start_hits_the_cache_and_a_truncated_entry_is_rebuilt(
    app: App, one_worker: Callable[..., Daemon]
) -> None:
    write_app(app, "[components.hello]\n", guests=["hello"])
    first = one_worker()
    assert first.wait_for(lines_with(first, "compile hello: compiled in"), SETTLE_S, "compile")
    assert first.stop() == 0

    second = one_worker()
    second.wait_for(lines_with(second, "compile hello: cache hit"), SETTLE_S, "the cache hit")
    assert not [line for line in texts(second) if "compile hello: compiled in" in line]
    assert second.stop() == 0

    cache = app.directory / ".rusm" / "cache"
    (entry,) = cache.glob("*.cwasm")
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    third = one_worker()
    third.wait_for(lines_with(third, "compile hello: compiled in"), SETTLE_S, "the rebuild")
    label = spawn(third, "hello")["label"]
    third.wait_for(lines_with(third, f"exit {label} normal"), SETTLE_S, "hello to run")


def test_a_100_mb_function_section_does_not_stall_rusmctl_status(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    write_app(app, "[components.hello]\n[components.huge]\n", guests=["hello"])
    huge = pathological_module(functions=15)  # about 7 MB each: wasmtime caps one function
    assert len(huge) > 100_000_000
    (app.directory / "wasm" / "huge.wasm").write_bytes(huge)
    text = app.manifest.read_text().replace(
        f'listen = "127.0.0.1:{app.node_port}"\n',
        f'listen = "127.0.0.1:{app.node_port}"\ncompile-timeout-s = 600\n',
    )
    app.manifest.write_text(text)
    daemon = start_daemon(cpus=2, wait=False)

    def compiling() -> dict[str, Any] | None:
        try:
            status = daemon.status()
        except (OSError, EOFError):
            return None
        states = {c["name"]: c["state"] for c in status["components"]}
        return status if states.get("huge") == "compiling" else None

    status = daemon.wait_for(compiling, 60.0, "huge.wasm to be compiling")
    assert status["daemon"]["state"] == "starting"
    answered = 0
    for _ in range(20):
        reply = daemon.request("status")
        assert reply["ok"]
        answered += 1
    assert answered == 20
    assert daemon.stop() == 0


def test_a_pid_nobody_has_is_no_such_process(app: App, one_worker: Callable[..., Daemon]) -> None:
    """A bare number that is nobody's: no worker by that OS pid, no such wasm pid."""
    write_app(app, "[components.hello]\n", guests=["hello"])
    daemon = one_worker()

    result = daemon.ctl("info", "5000")

    assert result.returncode == EX_NOSUCH
    assert "process with pid 5000" in result.stderr


def test_sigterm_stops_a_guest_busy_in_wasm_within_the_drain(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    # A guest that never calls the host can only be stopped at an epoch
    # tick: the ticker must keep running while the worker drains.
    write_app(
        app,
        "[capabilities.long]\nmax-cpu-ms = 3600000\n"
        '[components.spin]\ncapability = "long"\nresident = true\n',
        guests=["spin"],
    )
    daemon = start_daemon()
    daemon.wait_for(lambda: processes(daemon), SETTLE_S, "the spinner to run")
    assert daemon.stop() == 0
    log = daemon.read_log()
    assert "did not drain in time" not in log
    assert re.search(r"exit spin#\d+ shutdown", log), log[-2000:]
