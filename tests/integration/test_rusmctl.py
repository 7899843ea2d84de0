"""``rusmctl`` against the real daemon: every verb, human and ``--json``, exit codes.

Runs in: any (the daemon through the ``Daemon`` harness in ``conftest.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rusmd.control.protocol import COMMANDS, EX_NOSUCH, EX_OK, EX_USAGE
from tests.integration.conftest import SCRUBBED_VARIABLES, Daemon, all_ready


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


def test_kill_with_a_pid_that_is_not_a_number_exits_2_and_kills_nothing(daemon: Daemon) -> None:
    before = {slot: w["pid"] for slot, w in daemon.workers().items()}

    result = daemon.ctl("kill", "abc")

    assert result.returncode == EX_USAGE
    assert "pid must be a number or component#pid, not 'abc'" in result.stderr
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
        # The profile change logs the new workers' forks and the change itself.
        streamed = [json.loads(follower.stdout.readline()) for _ in range(3)]
        assert all(record["source"] == "rusm" for record in streamed)
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
