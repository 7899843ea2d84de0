"""``rusmctl`` against the real daemon: every verb, human and ``--json``, exit codes.

Runs in: any (the daemon through the ``Daemon`` harness in ``conftest.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rusmd.control.protocol import COMMANDS
from rusmd.errors import EX_NOSUCH, EX_OK, EX_REFUSED, EX_USAGE
from tests.integration.conftest import (
    SCRUBBED_VARIABLES,
    App,
    Daemon,
    all_ready,
    run_rusmctl,
)
from tests.integration.test_wasm_processes import write_app

# Long enough for a loaded two-core machine to boot-spawn a resident.
SETTLE_S = 20.0
# Records a follower reads looking for the profile change: its two forks,
# the change, and the few start-up lines that may still come before.
MAX_FOLLOWED_RECORDS = 10


def test_status_json_has_workers_with_the_stable_fields(daemon: Daemon) -> None:
    result = daemon.ctl("status", "--json")

    assert result.returncode == EX_OK, result.stderr
    document = json.loads(result.stdout)
    assert document["daemon"]["pid"] == daemon.pid
    for worker in document["workers"]:
        for key in ("pid", "state", "restarts", "restarts_in_window", "last_exit", "cpu_percent"):
            assert key in worker
        assert worker["rss_bytes"] > 0


def test_status_human_output_is_a_table_of_workers(daemon: Daemon) -> None:
    result = daemon.ctl("status")

    assert result.returncode == EX_OK, result.stderr
    assert f"pid {daemon.pid} running" in result.stdout
    assert "SLOT" in result.stdout and "RSS" in result.stdout
    for slot, worker in daemon.workers().items():
        assert any(
            line.split()[:2] == [str(slot), str(worker["pid"])]
            for line in result.stdout.splitlines()
        )


def test_list_json_has_a_processes_array(daemon: Daemon) -> None:
    result = daemon.ctl("list", "--json")

    assert result.returncode == EX_OK, result.stderr
    assert json.loads(result.stdout)["processes"] == []
    assert daemon.ctl("list").stdout.strip() == "no wasm processes"


def test_info_of_a_worker_pid_shows_it_and_unknown_pid_exits_3(daemon: Daemon) -> None:
    slot, worker = next(iter(daemon.workers().items()))

    shown = daemon.ctl("info", str(worker["pid"]), "--json")
    missing = daemon.ctl("info", "999999999")

    assert shown.returncode == EX_OK, shown.stderr
    assert json.loads(shown.stdout)["worker"]["slot"] == slot
    assert missing.returncode == EX_NOSUCH
    assert "no worker or process with pid 999999999" in missing.stderr


def test_kill_of_a_worker_pid_gets_it_replaced(daemon: Daemon) -> None:
    slot, worker = next(iter(daemon.workers().items()))

    result = daemon.ctl("kill", str(worker["pid"]))

    assert result.returncode == EX_OK, result.stderr
    assert result.stdout == f"killed worker {slot} (pid {worker['pid']}); it is being replaced\n"
    replaced = daemon.wait_for(
        lambda: (
            (w := daemon.workers().get(slot))
            and w["state"] == "ready"
            and w["pid"] != worker["pid"]
            and w
        ),
        15,
        f"slot {slot} replaced",
    )
    assert "killed" in replaced["last_exit"]


def test_kill_with_a_malformed_pid_exits_2_and_kills_nothing(daemon: Daemon) -> None:
    before = {slot: w["pid"] for slot, w in daemon.workers().items()}

    result = daemon.ctl("kill", "api#x")

    assert result.returncode == EX_USAGE
    assert (
        "pid must be a number, #pid, component#pid or a registered name, not 'api#x'"
        in result.stderr
    )
    assert {slot: w["pid"] for slot, w in daemon.workers().items()} == before


@pytest.mark.parametrize(("verb", "extra"), [("info", ()), ("kill", ()), ("send", ("hi",))])
def test_a_name_nobody_registered_exits_3_and_disturbs_nothing(
    verb: str, extra: tuple[str, ...], daemon: Daemon
) -> None:
    before = {slot: w["pid"] for slot, w in daemon.workers().items()}

    result = daemon.ctl(verb, "nosuch", *extra)

    assert result.returncode == EX_NOSUCH, result.stderr
    assert "no process registered as 'nosuch'" in result.stderr
    assert result.stdout == ""
    assert {slot: w["pid"] for slot, w in daemon.workers().items()} == before


def test_killed_worker_exit_is_logged_at_warn(daemon: Daemon) -> None:
    slot, worker = next(iter(daemon.workers().items()))

    assert daemon.ctl("kill", str(worker["pid"])).returncode == EX_OK
    records = daemon.wait_for(
        lambda: [
            r
            for r in daemon.log_records()
            if r["text"].startswith(f"exit worker {slot} pid={worker['pid']} killed")
        ],
        15,
        "the exit line of the killed worker",
    )
    assert records[0]["level"] == "warn"


def test_restart_worker_replaces_it_and_unknown_target_exits_3(daemon: Daemon) -> None:
    before = daemon.workers()[0]["pid"]

    result = daemon.ctl("restart", "worker.0")
    unknown = daemon.ctl("restart", "worker.99")

    assert result.returncode == EX_OK, result.stderr
    assert result.stdout == "restarting worker 0\n"
    daemon.wait_for(
        lambda: all_ready(daemon.status()) and daemon.workers()[0]["pid"] != before,
        15,
        "worker 0 replaced",
    )
    assert "restarted by operator" in daemon.workers()[0]["last_exit"]
    assert unknown.returncode == EX_NOSUCH


def test_logs_returns_past_records_in_order(daemon: Daemon) -> None:
    result = daemon.ctl("logs", "-n", "1000")

    assert result.returncode == EX_OK, result.stderr
    lines = result.stdout.splitlines()
    ready = [i for i, line in enumerate(lines) if " worker 0 ready pid=" in line]
    announced = [i for i, line in enumerate(lines) if "rusmd 0.1.0 ready" in line]
    assert ready and announced and ready[0] < announced[0]


def test_logs_follow_streams_new_records(daemon: Daemon) -> None:
    environment = {k: v for k, v in os.environ.items() if k not in SCRUBBED_VARIABLES}
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rusmctl",
            "logs",
            "-f",
            "-n",
            "0",
            "--json",
            "--socket",
            str(daemon.socket_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
    )
    try:
        assert follower.stdout is not None
        # The first line is the reply to the request itself (no past records).
        header = json.loads(follower.stdout.readline())
        assert header == {"records": [], "follow": True}
        assert daemon.ctl("profile", "max").returncode == EX_OK
        # The profile change logs the new workers' forks and the change itself;
        # the node endpoint's start-up line can come first (it starts beside
        # the workers), so read up to the change.
        streamed: list[dict[str, Any]] = []
        while len(streamed) < MAX_FOLLOWED_RECORDS and not any(
            record["text"].startswith("profile max") for record in streamed
        ):
            streamed.append(json.loads(follower.stdout.readline()))
        assert all(record["source"] == "rusm" for record in streamed)
        assert sum(" forked " in record["text"] for record in streamed) == 2, streamed
        assert any(record["text"].startswith("profile max") for record in streamed)
    finally:
        follower.kill()
        follower.wait()
    # The daemon dropped the follower and still answers.
    assert daemon.ctl("status").returncode == EX_OK


def test_stop_drains_and_the_daemon_exits_0(daemon: Daemon) -> None:
    result = daemon.ctl("stop")

    assert result.returncode == EX_OK, result.stderr
    assert "draining" in result.stdout
    assert daemon.wait_exit() == 0


@pytest.mark.parametrize("verb", sorted(COMMANDS))
def test_every_verb_has_help_and_json(verb: str, daemon: Daemon) -> None:
    result = daemon.ctl(verb, "--help")

    assert result.returncode == EX_OK
    assert "--json" in result.stdout
    assert COMMANDS[verb].summary.split(";")[0][:30] in result.stdout.replace("\n", " ")


def test_unknown_verb_is_a_usage_error(daemon: Daemon) -> None:
    result = daemon.ctl("explode")

    assert result.returncode == EX_USAGE
    assert "invalid choice" in result.stderr


# ── global options, human output, names ────────────────────────────────


def test_global_options_before_the_verb_work_as_after_it(daemon: Daemon, tmp_path: Path) -> None:
    socket_path = str(daemon.socket_path)

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        # Run elsewhere than the app dir: only --socket can find the daemon.
        return run_rusmctl(*args, cwd=tmp_path)

    before = ctl("--socket", socket_path, "--json", "status")
    mixed = ctl("--json", "status", "--socket", socket_path)
    human = ctl("--socket", socket_path, "status")
    kv_refused = ctl("--socket", socket_path, "--json", "kv", "get", "users", "alice")

    assert before.returncode == EX_OK, before.stderr
    assert json.loads(before.stdout)["daemon"]["pid"] == daemon.pid
    assert mixed.returncode == EX_OK, mixed.stderr
    assert json.loads(mixed.stdout)["daemon"]["pid"] == daemon.pid
    assert human.returncode == EX_OK, human.stderr
    assert f"pid {daemon.pid} running" in human.stdout
    assert kv_refused.returncode == EX_REFUSED
    assert json.loads(kv_refused.stdout)["error"].startswith("no store configured")


def test_restart_workers_without_json_prints_a_sentence(daemon: Daemon) -> None:
    slots = sorted(daemon.workers())

    result = daemon.ctl("restart", "workers")

    assert result.returncode == EX_OK, result.stderr
    if len(slots) == 1:
        assert result.stdout == "restarting worker 0\n"
    else:
        shown = ", ".join(str(slot) for slot in slots)
        assert result.stdout == f"restarting workers {shown}, one at a time\n"


def resident_app(app: App, start_daemon: Callable[..., Daemon]) -> tuple[Daemon, dict[str, Any]]:
    """One worker and a resident ``sleeper``, registered under its name; its status row."""
    write_app(app, "[components.sleeper]\nresident = true\n", guests=["sleeper"])
    daemon = start_daemon(cpus=2)
    resident = daemon.wait_for(
        lambda: next((r for r in daemon.status()["residents"] if r["state"] == "running"), None),
        SETTLE_S,
        "the resident sleeper to run",
    )
    return daemon, resident


def test_a_registered_name_works_wherever_a_pid_does(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    daemon, resident = resident_app(app, start_daemon)
    label = resident["label"]

    info = daemon.ctl("info", "sleeper", "--json")
    sent = daemon.ctl("send", "sleeper", "hi")
    killed = daemon.ctl("kill", "sleeper")

    assert info.returncode == EX_OK, info.stderr
    assert json.loads(info.stdout)["process"]["label"] == label
    assert sent.returncode == EX_OK, sent.stderr
    assert sent.stdout == f"sent to {label}\n"
    assert killed.returncode == EX_OK, killed.stderr
    assert killed.stdout == f"killed {label}\n"
    back = daemon.wait_for(
        lambda: next(
            (
                r
                for r in daemon.status()["residents"]
                if r["state"] == "running" and r["pid"] != resident["pid"]
            ),
            None,
        ),
        SETTLE_S,
        "the resident to be restarted under its name",
    )
    again = daemon.ctl("info", "sleeper", "--json")
    assert json.loads(again.stdout)["process"]["pid"] == back["pid"]


def looks_like_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return any(line.lstrip().startswith(("{", "[")) for line in text.splitlines())
    return True


def test_every_verb_without_json_prints_text_never_json(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    daemon, resident = resident_app(app, start_daemon)
    worker_pid = daemon.workers()[0]["pid"]
    outputs: dict[str, list[str]] = {}

    def run(*args: str) -> None:
        result = daemon.ctl(*args)
        assert result.returncode == EX_OK, (args, result.stderr)
        outputs.setdefault(args[0], []).append(result.stdout)

    def rolled(old_pid: int) -> Callable[[], bool]:
        return lambda: all_ready(daemon.status()) and daemon.workers()[0]["pid"] != old_pid

    run("status")
    run("list")
    run("info", "sleeper")
    run("info", str(worker_pid))
    run("send", "sleeper", "hi")
    run("spawn", "sleeper")
    spawned = outputs["spawn"][0].split()[1]
    run("kill", spawned)
    run("profile")
    run("logs", "-n", "5")
    run("stats")
    run("restart", "worker.0")
    daemon.wait_for(rolled(worker_pid), SETTLE_S, "worker 0 restarted")
    restarted_pid = daemon.workers()[0]["pid"]
    run("kill", str(restarted_pid))
    daemon.wait_for(rolled(restarted_pid), SETTLE_S, "worker 0 replaced")
    replaced_pid = daemon.workers()[0]["pid"]
    run("upgrade")
    assert daemon.workers()[0]["pid"] == replaced_pid, "an upgrade replaces no worker"
    run("reload")
    daemon.wait_for(rolled(replaced_pid), SETTLE_S, "the reload's roll")
    run("stop")

    # kv get prints a value's raw bytes by design (test_kv_cli covers kv's text).
    assert set(outputs) == set(COMMANDS) - {"kv"}
    for verb, texts in outputs.items():
        for text in texts:
            assert text.strip(), f"{verb} printed nothing"
            assert not looks_like_json(text), f"{verb} printed JSON:\n{text}"
    assert outputs["info"][0].startswith(f"{resident['label']}\n")
    assert outputs["info"][1].startswith(f"worker 0 (pid {worker_pid})\n")
    assert daemon.wait_exit() == EX_OK
