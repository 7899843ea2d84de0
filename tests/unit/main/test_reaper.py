"""The main process's reaper and the one wording of a child's exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from rusmd.main.reaper import Reaper, describe_exit, wait_status
from tests.unit.main.harness import FakeOs, exited, killed_by

Seen = list[tuple[str, int, int]]


def test_reaper_hands_each_exit_to_the_owner_of_its_pid() -> None:
    fake = FakeOs()
    reaper = Reaper(waitpid=fake.waitpid)
    seen: Seen = []
    reaper.claim(10, lambda pid, status: seen.append(("pool", pid, status)))
    reaper.claim(11, lambda pid, status: seen.append(("compile", pid, status)))
    fake.exits.extend([(11, exited(2)), (10, killed_by(signal.SIGKILL))])

    reaper.reap()

    assert seen == [("compile", 11, exited(2)), ("pool", 10, killed_by(signal.SIGKILL))]
    assert not reaper.claimed(10) and not reaper.claimed(11)
    assert not fake.exits


def test_reaper_drops_the_exit_of_a_pid_nobody_claimed() -> None:
    fake = FakeOs()
    reaper = Reaper(waitpid=fake.waitpid)
    seen: Seen = []
    fake.exits.append((12, exited(0)))
    reaper.reap()

    reaper.claim(12, lambda pid, status: seen.append(("late", pid, status)))
    reaper.reap()

    # Not kept for a later claim: a reaped pid may belong to the next fork.
    assert seen == []
    assert reaper.claimed(12)


def test_reaper_released_pid_is_not_handed_on() -> None:
    fake = FakeOs()
    reaper = Reaper(waitpid=fake.waitpid)
    seen: Seen = []
    reaper.claim(13, lambda pid, status: seen.append(("compile", pid, status)))

    reaper.release(13)
    fake.exits.append((13, exited(0)))
    reaper.reap()

    assert seen == []


def test_reaper_claim_of_a_reused_pid_replaces_the_earlier_owner() -> None:
    fake = FakeOs()
    reaper = Reaper(waitpid=fake.waitpid)
    seen: Seen = []
    reaper.claim(14, lambda pid, status: seen.append(("compile", pid, status)))

    reaper.claim(14, lambda pid, status: seen.append(("pool", pid, status)))
    fake.exits.append((14, exited(1)))
    reaper.reap()

    assert seen == [("pool", 14, exited(1))]


def test_reaper_without_children_returns_quietly() -> None:
    def no_children(pid: int, options: int) -> tuple[int, int]:
        raise ChildProcessError

    Reaper(waitpid=no_children).reap()


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (exited(0), "exit status 0"),
        (exited(3), "exit status 3"),
        (killed_by(signal.SIGKILL), "killed by SIGKILL"),
        (killed_by(signal.SIGSEGV) | 0x80, "killed by SIGSEGV"),  # with a core dump
        (killed_by(40), "killed by signal 40"),
    ],
)
def test_describe_exit_names_the_code_or_the_signal(status: int, text: str) -> None:
    assert describe_exit(status) == text


@pytest.mark.parametrize(
    ("info", "status"),
    [
        (os.waitid_result((1, 0, signal.SIGCHLD, 3, os.CLD_EXITED)), exited(3)),
        (
            os.waitid_result((1, 0, signal.SIGCHLD, signal.SIGKILL, os.CLD_KILLED)),
            killed_by(signal.SIGKILL),
        ),
        (
            os.waitid_result((1, 0, signal.SIGCHLD, signal.SIGSEGV, os.CLD_DUMPED)),
            killed_by(signal.SIGSEGV) | 0x80,
        ),
    ],
)
def test_wait_status_of_a_waitid_result_is_what_waitpid_gives(
    info: os.waitid_result, status: int
) -> None:
    assert wait_status(info) == status
    assert describe_exit(wait_status(info)) == describe_exit(status)


def test_wait_status_of_a_real_child_matches_its_waitpid_status() -> None:
    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"])
    pidfd = os.pidfd_open(child.pid)
    try:
        # WNOWAIT leaves the child for waitpid to collect, the status compared.
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOWAIT)
        _, status = os.waitpid(child.pid, 0)
    finally:
        os.close(pidfd)
        child.returncode = 7  # collected above; Popen must not wait again
    assert info is not None
    assert wait_status(info) == status == exited(7)
