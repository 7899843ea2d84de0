"""The main process's one reaper: every child's exit, collected once, handed to its owner.

Runs in: main (and ``rusmd check``, through ``describe_exit``).

The main process has two kinds of children: workers (forked by the
worker pool) and compile children (started by a compile run). One
``waitpid(-1)`` loop collects them all, once per turn of the main loop
(SIGCHLD only wakes the loop), and hands each exit to whoever claimed
that pid. The rules that keep an exit from reaching the wrong owner:

- A pid is claimed at fork time, in the same synchronous step that made
  it. The reaper runs from the loop, never from a signal handler, so no
  exit is collected between a fork and its claim.
- An exit nobody claimed is dropped, not kept for a later claim: once a
  pid is reaped the kernel may give it to the next fork, and that child's
  claim would then receive the dead one's status.
- An owner that collects a child itself (a compile run waits on its
  pidfd) releases the pid at once, before a later fork can reuse it.
- A claim of a pid already claimed replaces the earlier one: the kernel
  reuses a pid only once its previous holder was reaped.

``describe_exit`` is the one wording of how a child ended, for every
owner's log lines and status rows: ``exit status 1``, ``killed by SIGKILL``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

# Called with (pid, raw wait status) when a claimed child has exited.
ExitHandler = Callable[[int, int], None]
WaitPid = Callable[[int, int], tuple[int, int]]


class Reaper:
    """Collects exited children and dispatches each exit to the pid's owner.

    Args:
        waitpid: ``os.waitpid``; injected by tests. Optional; defaults to
            ``os.waitpid``.
    """

    def __init__(self, waitpid: WaitPid = os.waitpid) -> None:
        self._waitpid = waitpid
        self._owners: dict[int, ExitHandler] = {}

    def claim(self, pid: int, on_exit: ExitHandler) -> None:
        """Send the exit of child ``pid`` to ``on_exit``; call right after the fork."""
        self._owners[pid] = on_exit

    def release(self, pid: int) -> None:
        """Forget ``pid``: its owner collected it itself (call before any later fork)."""
        self._owners.pop(pid, None)

    def claimed(self, pid: int) -> bool:
        """True while an exit of ``pid`` would be dispatched."""
        return pid in self._owners

    def reap(self) -> None:
        """Collect every exited child, in the kernel's order, and tell each owner."""
        while True:
            try:
                pid, status = self._waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return  # no children at all
            if pid == 0:
                return  # children, none exited
            owner = self._owners.pop(pid, None)
            if owner is not None:
                owner(pid, status)


def describe_exit(status: int) -> str:
    """How a child ended, from its raw wait status.

    Returns:
        ``exit status N`` for an exit, ``killed by SIGNAME`` for a signal
        (``killed by signal N`` for a number with no name).
    """
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return f"killed by {name}"
    return f"exit status {os.WEXITSTATUS(status)}"


def wait_status(info: os.waitid_result) -> int:
    """The raw wait status ``waitpid`` would have given for a ``waitid`` result."""
    if info.si_code == os.CLD_EXITED:
        return (info.si_status & 0xFF) << 8
    if info.si_code == os.CLD_DUMPED:
        return info.si_status | 0x80  # WCOREDUMP's bit
    return info.si_status
