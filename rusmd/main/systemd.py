"""systemd integration in pure Python: the notify protocol and socket activation.

Runs in: main. Only the main process may talk to systemd (the unit sets
``NotifyAccess=main``), and forked workers must inherit none of systemd's
variables, so both entry points here remove them from the environment they
read.

- ``Notifier`` sends ``sd_notify`` datagrams: ``READY=1`` once listeners are
  bound and the first workers are up, ``RELOADING=1`` + ``MONOTONIC_USEC``
  on SIGHUP, ``STOPPING=1`` on SIGTERM, ``WATCHDOG=1`` from the main loop
  every ``watchdog_interval_s`` after its own health checks pass.
- ``adopt_listen_fds`` takes the listening sockets systemd passed
  (``LISTEN_PID``/``LISTEN_FDS``/``LISTEN_FDNAMES``, fds from 3), and
  ``socket_address`` names them ``host:port`` to match ``[[serve]].listen``.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import MutableMapping

from rusmd.errors import RusmError

# sd_listen_fds(3): passed fds start right after stdin, stdout, stderr.
SD_LISTEN_FDS_START = 3

NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

# A name systemd gives a passed fd without FileDescriptorName=.
UNKNOWN_FD_NAME = "unknown"


class SystemdError(RusmError):
    """systemd's environment is malformed (a ``LISTEN_*`` value, a passed fd)."""


class Notifier:
    """Sends ``sd_notify(3)`` messages to ``$NOTIFY_SOCKET``.

    Every send opens a fresh datagram socket and closes it, so no
    notification fd stays open for a forked worker to inherit. A send never
    blocks the main loop and never raises: a full or vanished socket makes it
    return False.

    Args:
        address: The socket path, or an abstract name with a leading NUL;
            None when not run under systemd (every send is then a no-op).
        watchdog_usec: ``WatchdogSec=`` in microseconds, or None when the
            watchdog is off for this process.
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str], pid: int | None = None) -> Notifier:
        """Read and remove ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        ``@name`` is the abstract socket ``\\0name``. The watchdog applies
        only when ``WATCHDOG_PID`` is absent or names this process; a
        malformed ``WATCHDOG_USEC``/``WATCHDOG_PID`` (systemd never sets
        one) leaves the watchdog off rather than stopping the daemon.

        Args:
            environ: Usually ``os.environ``; the three variables are removed
                so forked workers never see them.
            pid: This process's pid; defaults to ``os.getpid()``.
        """
        own_pid = os.getpid() if pid is None else pid
        raw_address = environ.get("NOTIFY_SOCKET") or None
        raw_usec = environ.get("WATCHDOG_USEC")
        raw_pid = environ.get("WATCHDOG_PID")
        for name in NOTIFY_VARIABLES:
            environ.pop(name, None)
        address = raw_address
        if address is not None and address.startswith("@"):
            address = "\0" + address[1:]
        watchdog_usec = _positive_int(raw_usec)
        if raw_pid is not None and _positive_int(raw_pid) != own_pid:
            watchdog_usec = None
        return cls(address, watchdog_usec)

    @property
    def enabled(self) -> bool:
        """Whether there is a notify socket to send to."""
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send ``WATCHDOG=1``: half of ``WatchdogSec=``, or None."""
        if self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def send(self, message: str) -> bool:
        """Send one notification; True if the datagram was accepted.

        Never raises: no socket, a vanished path or a full receive queue all
        give False.
        """
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # MSG_DONTWAIT: a stalled systemd must not stall the main loop.
                sock.sendto(message.encode(), socket.MSG_DONTWAIT, self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: listeners bound and the initial workers up."""
        if status is None:
            return self.send("READY=1")
        return self.send(f"READY=1\nSTATUS={_one_line(status)}")

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC``, as ``Type=notify-reload`` requires.

        Follow it with ``ready()`` once the new manifest is in effect (or
        was rejected and the old one kept).
        """
        monotonic_usec = time.monotonic_ns() // 1000
        return self.send(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")

    def stopping(self) -> bool:
        """``STOPPING=1``: draining has begun."""
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: send from the main loop after its health checks pass."""
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """``STATUS=``: the one-line status ``systemctl status`` shows."""
        return self.send(f"STATUS={_one_line(text)}")

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC=``: ask for ``seconds`` more to start, reload or stop."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(int(seconds * 1_000_000), 0)}")


def _one_line(text: str) -> str:
    # A newline would start a new assignment inside the datagram.
    return text.replace("\r", " ").replace("\n", " ")


def _positive_int(value: str | None) -> int | None:
    if value is None or not _is_decimal(value):
        return None
    number = int(value)
    return number if number > 0 else None


def _is_decimal(value: str) -> bool:
    # str.isdigit alone accepts "²", which int() rejects.
    return value.isascii() and value.isdigit()


def adopt_listen_fds(
    environ: MutableMapping[str, str], pid: int, *, first_fd: int = SD_LISTEN_FDS_START
) -> list[tuple[socket.socket, str]]:
    """Take the sockets systemd passed by socket activation, with their names.

    Only when ``LISTEN_PID`` equals ``pid``; otherwise nothing is adopted and
    ``environ`` is left as it is. When it matches, ``LISTEN_PID``,
    ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` are removed (even if a value is
    malformed) so forked workers never see them, and each fd is made
    close-on-exec.

    Args:
        environ: Usually ``os.environ``.
        pid: This process's pid.
        first_fd: The first passed fd; 3 in production, other values let
            tests stage fds without taking over fd 3.

    Returns:
        ``(socket, name)`` per fd in order; the name comes from
        ``FileDescriptorName=`` via ``LISTEN_FDNAMES``, else ``unknown``.

    Raises:
        SystemdError: A malformed ``LISTEN_PID``/``LISTEN_FDS``, a
            ``LISTEN_FDNAMES`` whose count differs from ``LISTEN_FDS``, or a
            passed fd that is not an open socket.
    """
    raw_pid = environ.get("LISTEN_PID")
    if raw_pid is None:
        return []
    if not _is_decimal(raw_pid):
        raise SystemdError(f"LISTEN_PID={raw_pid!r}: not a pid")
    if int(raw_pid) != pid:
        return []
    raw_count = environ.get("LISTEN_FDS")
    raw_names = environ.get("LISTEN_FDNAMES")
    for name in LISTEN_VARIABLES:
        environ.pop(name, None)
    if raw_count is None:
        raise SystemdError(f"LISTEN_FDS: not set, though LISTEN_PID={raw_pid} is this process")
    if not _is_decimal(raw_count):
        raise SystemdError(f"LISTEN_FDS={raw_count!r}: not a count of file descriptors")
    count = int(raw_count)
    names = _fd_names(raw_names, count)
    fds = range(first_fd, first_fd + count)
    for fd in fds:
        _check_socket(fd)
    adopted = []
    for fd, name in zip(fds, names, strict=True):
        os.set_inheritable(fd, False)
        adopted.append((socket.socket(fileno=fd), name))
    return adopted


def _fd_names(raw_names: str | None, count: int) -> list[str]:
    if raw_names is None:
        return [UNKNOWN_FD_NAME] * count
    names = raw_names.split(":") if count else []
    if len(names) != count:
        raise SystemdError(
            f"LISTEN_FDNAMES={raw_names!r}: {len(names)} names for LISTEN_FDS={count}"
        )
    return [name or UNKNOWN_FD_NAME for name in names]


def _check_socket(fd: int) -> None:
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise SystemdError(f"LISTEN_FDS: fd {fd} is not open: {exc.strerror}") from exc
    if not stat.S_ISSOCK(mode):
        raise SystemdError(f"LISTEN_FDS: fd {fd} is not a socket")


def socket_address(sock: socket.socket) -> str:
    """The address ``sock`` is bound to, spelled like ``[[serve]].listen``.

    ``127.0.0.1:8080`` for IPv4, ``[::1]:8080`` for IPv6, the path (or
    ``@name`` for an abstract name) for a unix socket. Compare with a listen
    address whose host is a numeric IP: ``localhost`` is not resolved here.
    """
    name = sock.getsockname()
    if sock.family == socket.AF_INET:
        host, port = name
        return f"{host}:{port}"
    if sock.family == socket.AF_INET6:
        host, port = name[0], name[1]
        return f"[{host}]:{port}"
    if isinstance(name, bytes):
        # Linux returns an abstract name as bytes with a leading NUL.
        return "@" + name[1:].decode(errors="replace") if name[:1] == b"\0" else name.decode()
    return str(name)
