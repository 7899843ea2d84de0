"""Turn a freshly forked child into a worker, then run it and never return.

Runs in: worker (called in the child right after ``fork``).

A forked child holds every descriptor and object of the main process.
Before anything else it: dies with its parent (PDEATHSIG), closes every
descriptor that is not its own (no sibling channels, no control socket,
no listener it does not serve), and resets the signal dispositions the
main process installed. It leaves with ``os._exit`` so no inherited
object is finalised twice.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import traceback
from typing import NoReturn

from rusmd.errors import EX_SOFTWARE
from rusmd.worker.boot import WorkerBoot

# prctl(2) option: the signal this process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def run_worker(boot: WorkerBoot) -> NoReturn:
    """The child side of fork: become a worker, run it, exit with its code."""
    code = EX_SOFTWARE
    try:
        _die_with_parent(boot.parent_pid)
        _reset_signals()
        _close_foreign_fds(boot.own_fds())
        # Imported only in the forked child: the runtime loads wasmtime, lmdb
        # and uvloop, which the main process (which imports this module) never may.
        from rusmd.worker.runtime import WorkerRuntime

        code = WorkerRuntime(boot).run()
    except BaseException:
        traceback.print_exc(file=sys.stderr)
    finally:
        try:
            sys.stderr.flush()
            sys.stdout.flush()
        finally:
            os._exit(code)


def _die_with_parent(parent_pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The parent may have died between fork and prctl: then no signal comes.
    if os.getppid() != parent_pid:
        os._exit(0)


def _reset_signals() -> None:
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    # Ctrl-C reaches the whole foreground group; the main process decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def _close_foreign_fds(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the listdir handle itself, already gone
