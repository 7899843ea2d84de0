"""``rusmd dev``: serve the app; on every saved change rebuild and upgrade it in place.

Runs in: the ``rusmd dev`` parent process, never the daemon. The daemon
is this process's child (``python -m rusmd``, in a session of its own),
driven over its control socket as ``rusmctl`` drives it. The watcher
(``watchfiles``) runs a notify thread, and the daemon's main process must
stay fork-clean (no threads, no event loop: it forks workers), so the
watching and building live in this separate parent; a compiler that
hangs or crashes cannot touch the daemon either.

What a change does:

- a source under ``components/<name>/`` (or ``components/<name>.c``):
  ``rusmd build`` for that component (``rusmd.guest.builder``); on success
  the control command ``upgrade``, which recompiles the changed module and
  hands it to the running workers (listeners, connections, worker pids and
  the other components' processes stay; the next request runs the new
  code); a resident component that changed is then killed by name, so its
  supervisor restarts it on the new code (which counts as one restart
  toward its ``intensity``). A failed build prints the compiler's
  messages (``components/<name>/<file>.c:LINE:COL: error: …``) and sends
  nothing: the previous module keeps serving.
- a module under ``wasm/`` written by something else (``make``, another
  compiler): ``upgrade``. The modules this process just built are not
  upgraded twice.
- ``rusm.toml``: ``reload`` (the manifest is re-read and the workers roll).

``rusmd dev`` exits with the daemon's exit code; SIGINT (Ctrl-C) or
SIGTERM stops the daemon (a SIGTERM: it drains) and then this process.
The daemon has a session of its own so that Ctrl-C reaches only this
process and the daemon gets one signal, not two (a second one would skip
its drain); a ``rusmd dev`` killed with SIGKILL therefore leaves the
daemon running (``rusmctl stop`` ends it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import watchfiles

from rusmd.control.protocol import MAX_REPLY_BYTES, FrameReader, encode_frame
from rusmd.guest.builder import BuildError, BuildResult, build_app, find_components, report_line

# One control request: the daemon answers upgrade once its compile child is
# done, which for a few small modules takes well under this.
REQUEST_TIMEOUT_S = 60.0
# How long an upgrade is retried while the daemon is starting (its control
# socket is not open yet) or compiling (start-up, a reload): past this the
# change is reported as not loaded rather than retried forever.
UPGRADE_RETRY_S = 60.0
RETRY_INTERVAL_S = 0.2
# watchfiles groups the events of one save (editors write, rename, chmod):
# it yields once nothing new came for STEP_MS, or after DEBOUNCE_MS at most.
STEP_MS = 50
DEBOUNCE_MS = 400
# The watch loop wakes this often with no change, to notice a daemon that exited.
WAKE_MS = 500
# SIGTERM drains the daemon's workers; past this it is killed.
STOP_TIMEOUT_S = 30.0


class ControlUnavailable(Exception):
    """The daemon's control socket does not answer (not open yet, or gone)."""


def control_request(socket_path: Path, command: str, **args: Any) -> dict[str, Any]:
    """One request, one reply, over a fresh connection to the daemon.

    Raises:
        ControlUnavailable: The socket cannot be reached or closed early.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(REQUEST_TIMEOUT_S)
            conn.connect(str(socket_path))
            conn.sendall(encode_frame({"command": command, "args": args}))
            reader = FrameReader(MAX_REPLY_BYTES)
            while True:
                data = conn.recv(65536)
                if not data:
                    raise ControlUnavailable(f"{socket_path}: the daemon hung up")
                frames = reader.feed(data)
                if frames:
                    return frames[0]
    except OSError as exc:
        raise ControlUnavailable(f"{socket_path}: {exc.strerror or exc}") from None


@dataclass
class Changes:
    """What one batch of file events touched.

    Attributes:
        sources: Components whose sources changed (to build).
        modules: Modules under ``wasm/`` that changed (to upgrade).
        manifest: True when ``rusm.toml`` changed (to reload).
    """

    sources: set[str] = field(default_factory=set)
    modules: set[Path] = field(default_factory=set)
    manifest: bool = False


def classify(app_dir: Path, config: Path, paths: Sequence[str]) -> Changes:
    """Sort changed paths into sources, modules and the manifest; the rest is ignored."""
    changes = Changes()
    for raw in paths:
        path = Path(raw)
        if path == config:
            changes.manifest = True
            continue
        try:
            parts = path.relative_to(app_dir).parts
        except ValueError:
            continue
        if len(parts) == 2 and parts[0] == "wasm" and path.suffix == ".wasm":
            if not parts[1].startswith("."):  # the builder's scratch files
                changes.modules.add(path)
        elif len(parts) == 3 and parts[0] == "components" and path.suffix in (".c", ".h"):
            changes.sources.add(parts[1])
        elif len(parts) == 2 and parts[0] == "components" and path.suffix == ".c":
            changes.sources.add(path.stem)
    return changes


class DevSession:
    """The daemon child, the builds, and the control requests of one ``rusmd dev``."""

    def __init__(
        self,
        app_dir: Path,
        config: Path,
        socket_path: Path,
        daemon_args: Sequence[str],
        residents: frozenset[str],
    ) -> None:
        self.app_dir = app_dir
        self.config = config
        self.socket_path = socket_path
        self.daemon_args = list(daemon_args)
        self.residents = residents
        self.child: subprocess.Popen[bytes] | None = None
        # Modules this session wrote (path → mtime_ns): their own file events
        # are not a reason to upgrade again.
        self.built: dict[Path, int] = {}

    def say(self, text: str) -> None:
        """One ``dev:`` line on stderr, beside the daemon's log."""
        print(f"dev: {text}", file=sys.stderr, flush=True)

    def build(self, names: frozenset[str] | None) -> list[BuildResult]:
        """Build ``names`` (None: every component); print what the compiler said."""
        try:
            results = build_app(self.app_dir, names=names)
        except BuildError as exc:
            self.say(str(exc))
            return []
        for result in results:
            if result.messages:
                print(result.messages, file=sys.stderr, flush=True)
            if result.ok and result.built:
                output = self.app_dir / result.output
                self.built[output] = output.stat().st_mtime_ns
            self.say(report_line(result) + ("" if result.ok else "; the previous module serves"))
        return results

    def start_daemon(self) -> None:
        """Start ``python -m rusmd`` for the app, in a session of its own."""
        command = [sys.executable, "-m", "rusmd", "--config", str(self.config)]
        command += ["--socket", str(self.socket_path), *self.daemon_args]
        self.child = subprocess.Popen(command, cwd=self.app_dir, start_new_session=True)

    def daemon_exit_code(self) -> int | None:
        """The daemon's exit code once it has exited, else None."""
        return None if self.child is None else self.child.poll()

    def stop_daemon(self) -> int:
        """SIGTERM the daemon (it drains), SIGKILL its group past the timeout."""
        child = self.child
        if child is None:
            return 0
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        return child.returncode

    def on_changes(self, changes: Changes) -> None:
        """Act on one batch of changes: build, then upgrade or reload."""
        if changes.manifest:
            self.request("reload", retry=True)
            return
        upgrade = False
        if changes.sources:
            results = self.build(frozenset(changes.sources) & self.component_names())
            upgrade = any(result.ok and result.built for result in results)
        for module in changes.modules:
            try:
                mtime_ns = module.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            upgrade = upgrade or self.built.get(module) != mtime_ns
        if upgrade:
            self.upgrade()

    def component_names(self) -> frozenset[str]:
        """The components ``rusmd build`` finds now."""
        try:
            return frozenset(component.name for component in find_components(self.app_dir))
        except BuildError:
            return frozenset()

    def upgrade(self) -> None:
        """``upgrade``, retried while the daemon starts or compiles; restart changed residents."""
        reply = self.request("upgrade", retry=True)
        if reply is None:
            return
        result = reply["result"]
        for name, error in sorted(result["failed"].items()):
            self.say(f"{name}: not loaded, the running version stays: {error}")
        if result["changed"]:
            self.say(f"upgraded {', '.join(result['changed'])}")
        for name in sorted(set(result["changed"]) & self.residents):
            if self.request("kill", pid=name) is not None:
                self.say(f"restarting resident {name} on its new code")

    def request(self, command: str, *, retry: bool = False, **args: Any) -> dict[str, Any] | None:
        """Send one control command; print a refusal and return None.

        With ``retry``, a daemon that cannot take it yet (its control socket
        is not open, it is still starting, or a compile runs) is asked again
        until ``UPGRADE_RETRY_S`` passes or it exits.
        """
        deadline = time.monotonic() + UPGRADE_RETRY_S
        while True:
            reachable = True
            try:
                reply = control_request(self.socket_path, command, **args)
            except ControlUnavailable as exc:
                reachable, reply = False, {"ok": False, "error": str(exc)}
            if reply.get("ok"):
                break
            why = str(reply.get("error"))
            busy = not reachable or "retry" in why or "still starting" in why
            gone = self.daemon_exit_code() is not None
            if not retry or not busy or gone or time.monotonic() > deadline:
                self.say(f"{command} refused: {why}")
                return None
            time.sleep(RETRY_INTERVAL_S)
        if command == "reload":
            self.say(str(reply["result"].get("message", "reloaded")))
        return reply


def watch_filter(app_dir: Path, config: Path) -> watchfiles.BaseFilter:
    """watchfiles' default filter (editor swap files, VCS dirs), narrowed to what dev acts on."""

    class _Filter(watchfiles.DefaultFilter):
        def __call__(self, change: watchfiles.Change, path: str) -> bool:
            if not super().__call__(change, path):
                return False
            relevant = classify(app_dir, config, [path])
            return bool(relevant.sources or relevant.modules or relevant.manifest)

    return _Filter()


def run_dev(session: DevSession) -> int:
    """Build, start the daemon, then watch until it exits or a signal stops dev."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    session.build(None)
    (session.app_dir / "wasm").mkdir(exist_ok=True)
    session.start_daemon()
    session.say(f"watching {session.app_dir / 'components'} and {session.app_dir / 'wasm'}")
    try:
        for batch in watchfiles.watch(
            session.app_dir,
            watch_filter=watch_filter(session.app_dir, session.config),
            step=STEP_MS,
            debounce=DEBOUNCE_MS,
            rust_timeout=WAKE_MS,
            yield_on_timeout=True,
            stop_event=stop,
        ):
            code = session.daemon_exit_code()
            if code is not None:
                session.say(f"the daemon exited with {code}")
                return code
            if batch:
                paths = [path for _change, path in batch]
                session.on_changes(classify(session.app_dir, session.config, paths))
    except KeyboardInterrupt:
        pass
    return session.stop_daemon()
