"""systemd's notify protocol and socket activation, against real sockets.

A datagram socket in tmp_path (or the abstract namespace) stands in for
systemd's ``NOTIFY_SOCKET``; listening TCP sockets staged on free fds stand
in for the fds systemd passes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rusmd.main.systemd import (
    Notifier,
    SystemdError,
    adopt_listen_fds,
    socket_address,
)

# recv on a datagram already queued returns at once; this only bounds a
# failing test.
RECV_TIMEOUT_S = 5.0
REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and its path, as systemd would create it."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(path)
        receiver.settimeout(RECV_TIMEOUT_S)
        yield receiver, path


def received(receiver: socket.socket) -> str:
    return receiver.recv(4096).decode()


def test_notifier_messages_arrive_in_the_order_sent(
    notify_socket: tuple[socket.socket, str],
) -> None:
    receiver, path = notify_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready()
    before_usec = time.monotonic_ns() // 1000
    assert notifier.reloading()
    after_usec = time.monotonic_ns() // 1000
    assert notifier.ready(status="serving 2 listeners")
    assert notifier.stopping()
    assert notifier.watchdog()
    assert received(receiver) == "READY=1"
    reloading = received(receiver).split("\n")
    assert reloading[0] == "RELOADING=1"
    name, _, value = reloading[1].partition("=")
    assert name == "MONOTONIC_USEC"
    assert before_usec <= int(value) <= after_usec
    assert received(receiver) == "READY=1\nSTATUS=serving 2 listeners"
    assert received(receiver) == "STOPPING=1"
    assert received(receiver) == "WATCHDOG=1"


def test_notifier_status_and_extend_timeout_use_sd_notify_spelling(
    notify_socket: tuple[socket.socket, str],
) -> None:
    receiver, path = notify_socket
    notifier = Notifier(path)
    assert notifier.status("draining\nREADY=1")
    assert notifier.extend_timeout(2.5)
    assert received(receiver) == "STATUS=draining READY=1"
    assert received(receiver) == "EXTEND_TIMEOUT_USEC=2500000"


def test_notifier_abstract_name_with_at_sign_reaches_the_abstract_socket() -> None:
    name = f"rusm-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(RECV_TIMEOUT_S)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert received(receiver) == "READY=1"


def test_notifier_from_environ_removes_systemd_variables_and_keeps_others() -> None:
    environ = {
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": "4242",
        "PATH": "/usr/bin",
    }
    notifier = Notifier.from_environ(environ, pid=4242)
    assert environ == {"PATH": "/usr/bin"}
    assert notifier.address == "/run/systemd/notify"
    assert notifier.watchdog_interval_s == 15.0


def test_notifier_without_notify_socket_sends_nothing_and_returns_false() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.watchdog_interval_s is None


def test_notifier_socket_path_that_vanished_returns_false(
    notify_socket: tuple[socket.socket, str],
) -> None:
    _, path = notify_socket
    notifier = Notifier(path)
    os.unlink(path)
    assert notifier.ready() is False
    assert Notifier("/nonexistent/rusm/notify.sock").stopping() is False


def test_notifier_watchdog_pid_of_our_process_or_absent_enables_watchdog() -> None:
    own = Notifier.from_environ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
    unnamed = Notifier.from_environ({"WATCHDOG_USEC": "2000000"})
    assert own.watchdog_interval_s == 1.0
    assert unnamed.watchdog_interval_s == 1.0


@pytest.mark.parametrize(
    "environ",
    [
        {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"},
        {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "not-a-pid"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "0"},
    ],
)
def test_notifier_watchdog_for_another_pid_or_malformed_is_off(environ: dict[str, str]) -> None:
    notifier = Notifier.from_environ(environ, pid=4242)
    assert notifier.watchdog_interval_s is None
    assert environ == {}


class StagedFds:
    """Listening TCP sockets dup'ed onto consecutive free fds, as systemd passes them.

    Attributes:
        first_fd: The first staged fd.
        originals: The sockets the staged fds are duplicates of.
        adopted: Sockets a test adopted; detached at teardown, since the
            fixture closes the staged fds itself.
    """

    def __init__(self, count: int) -> None:
        # The listeners first: opened after the run was chosen, they could
        # land inside it when the process already holds 100 fds.
        self.originals = [_listener() for _ in range(count)]
        self.first_fd = _free_fd_run(count)
        for offset, sock in enumerate(self.originals):
            os.dup2(sock.fileno(), self.first_fd + offset)
        self.adopted: list[tuple[socket.socket, str]] = []

    def close(self) -> None:
        for sock, _ in self.adopted:
            sock.detach()
        for offset, sock in enumerate(self.originals):
            sock.close()
            _close_quietly(self.first_fd + offset)


@pytest.fixture
def staged_fds() -> Iterator[StagedFds]:
    staged = StagedFds(2)
    yield staged
    staged.close()


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _free_fd_run(length: int) -> int:
    first_fd = 100
    while any(_is_open(fd) for fd in range(first_fd, first_fd + length)):
        first_fd += length
    return first_fd


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def test_adopt_listen_fds_for_our_pid_wraps_fds_with_names_and_unsets_env(
    staged_fds: StagedFds,
) -> None:
    first_fd = staged_fds.first_fd
    environ = {
        "LISTEN_PID": "4242",
        "LISTEN_FDS": "2",
        "LISTEN_FDNAMES": "http:admin",
        "HOME": "/var/lib/rusmd",
    }
    adopted = staged_fds.adopted = adopt_listen_fds(environ, 4242, first_fd=first_fd)
    assert environ == {"HOME": "/var/lib/rusmd"}
    assert [name for _, name in adopted] == ["http", "admin"]
    assert [sock.fileno() for sock, _ in adopted] == [first_fd, first_fd + 1]
    assert [socket_address(sock) for sock, _ in adopted] == [
        socket_address(sock) for sock in staged_fds.originals
    ]
    assert all(not sock.get_inheritable() for sock, _ in adopted)


def test_adopt_listen_fds_without_fdnames_names_every_fd_unknown(
    staged_fds: StagedFds,
) -> None:
    environ = {"LISTEN_PID": "7", "LISTEN_FDS": "2"}
    adopted = staged_fds.adopted = adopt_listen_fds(environ, 7, first_fd=staged_fds.first_fd)
    assert [name for _, name in adopted] == ["unknown", "unknown"]


@pytest.mark.parametrize("environ", [{"LISTEN_PID": "1", "LISTEN_FDS": "2"}, {"LISTEN_FDS": "2"}])
def test_adopt_listen_fds_for_another_pid_adopts_nothing_and_leaves_env(
    environ: dict[str, str],
) -> None:
    before = dict(environ)
    assert adopt_listen_fds(environ, 4242) == []
    assert environ == before


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "two"}, "LISTEN_FDS='two'"),
        ({"LISTEN_PID": "4242"}, "LISTEN_FDS: not set"),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "-1"}, "LISTEN_FDS='-1'"),
        ({"LISTEN_PID": "me", "LISTEN_FDS": "1"}, "LISTEN_PID='me'"),
        (
            {"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http"},
            "LISTEN_FDNAMES='http'",
        ),
    ],
)
def test_adopt_listen_fds_malformed_value_raises_naming_variable_and_value(
    environ: dict[str, str], named: str
) -> None:
    with pytest.raises(SystemdError, match=re.escape(named)):
        adopt_listen_fds(environ, 4242)


def test_adopt_listen_fds_passed_fd_not_a_socket_raises_naming_the_fd() -> None:
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(SystemdError, match=f"fd {read_end} is not a socket"):
            adopt_listen_fds({"LISTEN_PID": "9", "LISTEN_FDS": "1"}, 9, first_fd=read_end)
        assert _is_open(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_adopt_listen_fds_default_first_fd_is_3_in_a_fresh_process() -> None:
    with _listener() as listening:
        script = textwrap.dedent(
            f"""
            import json, os, sys
            if {listening.fileno()} != 3:
                os.dup2({listening.fileno()}, 3)
                os.close({listening.fileno()})
            os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="http")
            from rusmd.main.systemd import adopt_listen_fds, socket_address
            adopted = adopt_listen_fds(os.environ, os.getpid())
            print(json.dumps({{
                "adopted": [[s.fileno(), socket_address(s), n] for s, n in adopted],
                "left": sorted(k for k in os.environ if k.startswith("LISTEN_")),
            }}))
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            pass_fds=[listening.fileno()],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report == {"adopted": [[3, socket_address(listening), "http"]], "left": []}


def test_socket_address_spells_ipv4_ipv6_and_unix_like_serve_listen(tmp_path: Path) -> None:
    with _listener() as ipv4:
        assert socket_address(ipv4) == f"127.0.0.1:{ipv4.getsockname()[1]}"
    if socket.has_ipv6:
        try:
            ipv6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            ipv6.bind(("::1", 0))
        except OSError:
            pass  # no IPv6 loopback in this environment; the IPv4 case stands
        else:
            with ipv6:
                assert socket_address(ipv6) == f"[::1]:{ipv6.getsockname()[1]}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        unix.bind(str(tmp_path / "ctl.sock"))
        assert socket_address(unix) == str(tmp_path / "ctl.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as abstract:
        abstract.bind("\0rusm-test-" + uuid.uuid4().hex)
        assert socket_address(abstract).startswith("@rusm-test-")
