"""The README's operator commands, run as written against the example app.

Runs in: any (the test process; ``rusmd`` runs as a subprocess, started
by the README's own command line, and so do the README's ``rusmctl`` and
``python`` lines, in bash).

Every ``sh`` block of ``README.md`` is read from the file itself, so an
edited command is the command tested, and a command no check covers
fails the test. Each line runs as written in a scratch directory laid out
like the checkout: ``.venv`` is this venv, ``examples/hello`` the test's
copy of the example app (its guests built, its ports moved to free ones;
the README's ports are rewritten to match) and ``path/to`` the same app
for the ``rusmd check`` lines. ``curl`` lines are carried out with
http.client from the same parsed arguments (curl need not be installed).

Also here, what an operator meets on the first start: the ready line
whatever the log level (``STATUS=`` under systemd), and the manifest's
warnings in the daemon's log.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rusmd import __version__
from rusmd.errors import EX_OK
from tests.guests.build import ROOT
from tests.integration.conftest import (
    DAEMONS_KEY,
    SCRUBBED_VARIABLES,
    App,
    Daemon,
    wait_for,
)
from tests.integration.test_daemon import notification, notify_listener
from tests.integration.test_example import SETTLE_S, example_app, fetch, greetings

README = ROOT / "README.md"
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
COMMENT = re.compile(r"\s+# .*$")
# Ports the README names; each is moved to a free one (`example_app`).
README_ADDRESS = re.compile(r"127\.0\.0\.1:(\d+)")

START = ".venv/bin/rusmd --config examples/hello/rusm.toml"
# Commands the test does not run: `make run` binds the README's fixed
# ports in the real checkout, and `make test` is the suite itself.
NOT_RUN = {"make run", "make test"}


@dataclass
class Outcome:
    """What one README command did: a process's exit and output, or an HTTP answer."""

    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    status: int = 0
    content_type: str = ""
    body: bytes = b""


def readme_commands() -> list[str]:
    """Every command line of the README's ``sh`` blocks, comments removed, in order."""
    commands = []
    for block in SH_BLOCK.findall(README.read_text(encoding="utf-8")):
        for line in block.splitlines():
            command = COMMENT.sub("", line).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


@dataclass
class Checkout:
    """A scratch directory laid out like the checkout, around the test's example app."""

    directory: Path
    ports: dict[int, int]

    def moved(self, command: str) -> str:
        """``command`` with the README's ports replaced by the test's."""
        return README_ADDRESS.sub(lambda found: f"127.0.0.1:{self.ports[int(found[1])]}", command)

    def shell(self, command: str, aliases: list[str]) -> Outcome:
        """Run ``command`` in bash in the checkout, after the README's aliases so far."""
        script = "\n".join(["shopt -s expand_aliases", *aliases, self.moved(command)])
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=self.directory,
            env=scrubbed_environment(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return Outcome(result.returncode, result.stdout, result.stderr)

    def curl(self, command: str) -> Outcome:
        """A ``curl`` line carried out with http.client: ``-H``, ``-d``, ``-N`` and a URL."""
        argv = shlex.split(self.moved(command))
        headers: dict[str, str] = {}
        data: bytes | None = None
        url = ""
        words = iter(argv[1:])
        for word in words:
            if word == "-H":
                name, _, value = next(words).partition(":")
                headers[name.strip()] = value.strip()
            elif word == "-d":
                data = next(words).encode()
            elif word == "-N":
                pass  # no buffering: http.client reads the stream as it comes
            elif word.startswith("-"):
                raise AssertionError(f"README: curl option {word} has no equivalent in the test")
            else:
                url = word
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        method = "GET" if data is None else "POST"
        assert parts.port is not None, command
        status, content_type, body = fetch(parts.port, method, target, body=data, headers=headers)
        return Outcome(status=status, content_type=content_type, body=body)


def scrubbed_environment() -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if k not in SCRUBBED_VARIABLES}
    environment.update(NO_COLOR="1", PYTHONUNBUFFERED="1")
    return environment


class ReadmeDaemon(Daemon):
    """The daemon started by the README's own command line, in the checkout."""

    def __init__(self, app: App, log_path: Path, checkout: Checkout) -> None:
        super().__init__(app, log_path)
        self.checkout = checkout

    def start(self) -> Daemon:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["bash", "-c", f"exec {START}"],
                cwd=self.checkout.directory,
                env=scrubbed_environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self


@pytest.fixture
def checkout(app: App, tmp_path: Path) -> Checkout:
    """The example app on free ports, under a scratch checkout."""
    ports = example_app(app)
    directory = tmp_path / "checkout"
    (directory / "examples").mkdir(parents=True)
    (directory / "path").mkdir()
    (directory / ".venv").symlink_to(sys.prefix)
    (directory / "examples" / "hello").symlink_to(app.directory)
    (directory / "path" / "to").symlink_to(app.directory)
    return Checkout(directory, {**ports, 4000: app.node_port})


@pytest.fixture
def readme_daemon(
    request: pytest.FixtureRequest, app: App, checkout: Checkout, tmp_path: Path
) -> Iterator[Daemon]:
    """``rusmd`` as the README starts it, ready; killed at teardown, its log kept on failure."""
    daemon = ReadmeDaemon(app, tmp_path / "rusmd-readme.log", checkout)
    request.node.stash.setdefault(DAEMONS_KEY, []).append(daemon)
    daemon.start()
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.kill_group()


# ── the README's commands ───────────────────────────────────────────────


def greeted(daemon: Daemon, text: str) -> None:
    wait_for(lambda: text in greetings(daemon) or None, SETTLE_S, f"the greeter's {text!r}")


def readme_checks(daemon: Daemon) -> dict[str, Callable[[Outcome], None]]:
    """Each README command (as written, comment removed) → what must hold after it ran."""

    def greets_the_world(out: Outcome) -> None:
        sent_to_the_greeter(out)
        greeted(daemon, "hello, world! (greeting #1)")

    return {
        START: lambda _: None,  # started above by this very line
        ".venv/bin/rusmctl --socket examples/hello/.rusm/rusmd.sock status": shows_the_greeter,
        "alias rusmctl='.venv/bin/rusmctl --socket examples/hello/.rusm/rusmd.sock'": ok,
        "rusmctl send hello world": greets_the_world,
        "rusmctl list": lists_the_greeter,
        "rusmctl status": shows_the_greeter,
        "curl 127.0.0.1:8080/": lambda out: answered(out, 200, b"rusm example app\n", prefix=True),
        "curl 127.0.0.1:8080/hello/world": lambda out: answered(out, 200, b"hello, world!\n"),
        "curl 127.0.0.1:8080/count": lambda out: answered(out, 200, b"1\n"),
        "curl -H 'Content-Type: application/json' -d '{\"a\": 1}' 127.0.0.1:8080/echo": (
            lambda out: answered(out, 200, b'{"a": 1}', content_type="application/json")
        ),
        "curl -N '127.0.0.1:8081/ticks?n=3'": lambda out: answered(
            out, 200, b"".join(b"event: tick\ndata: %d\n\n" % n for n in (1, 2, 3))
        ),
        '.venv/bin/python -c "from websockets.sync.client import connect; ws = connect('
        "'ws://127.0.0.1:8082/'); ws.send('hi'); print(ws.recv()); ws.close()\"": (
            lambda out: printed(out, "hi\n")
        ),
        "curl 127.0.0.1:4000/metrics": lambda out: answered(
            out, 200, b"# HELP rusm_http_requests_total ", prefix=True
        ),
        ".venv/bin/rusmd check --config path/to/rusm.toml": checks_the_example,
        ".venv/bin/rusmd check --config path/to/rusm.toml --json": checks_the_example_as_json,
    }


def test_readme_commands_run_as_written_work(readme_daemon: Daemon, checkout: Checkout) -> None:
    daemon = readme_daemon
    greeted(daemon, "hello from a rusm guest")
    ready = [line for line in daemon.read_log().splitlines() if " ready: " in line]
    checks = readme_checks(daemon)
    commands = [command for command in readme_commands() if command not in NOT_RUN]
    assert sorted(set(commands)) == sorted(checks), "a README command without a check"

    aliases: list[str] = []
    for command in commands:
        if command.startswith("curl "):
            outcome = checkout.curl(command)
        elif command != START:
            outcome = checkout.shell(command, aliases)
        else:
            outcome = Outcome()
        if command.startswith("alias "):
            aliases.append(command)
        try:
            checks[command](outcome)
        except AssertionError as exc:
            raise AssertionError(f"README: {command!r}: {exc}\n{outcome}") from None

    assert len(ready) == 1, daemon.read_log()
    for protocol, port in (("http", 8080), ("sse", 8081), ("ws", 8082)):
        assert f"{protocol} 127.0.0.1:{checkout.ports[port]}" in ready[0]
    socket_path = checkout.directory / "examples" / "hello" / ".rusm" / "rusmd.sock"
    assert ready[0].endswith(f"; control {socket_path}")
    daemon.signal(signal.SIGINT)  # "Ctrl-C drains and exits 0"
    assert daemon.wait_exit() == EX_OK


def ok(out: Outcome) -> None:
    assert out.returncode == EX_OK, out.stderr


def printed(out: Outcome, text: str) -> None:
    ok(out)
    assert out.stdout == text


def checks_the_example(out: Outcome) -> None:
    ok(out)
    for component in ("hello", "web", "echo"):
        assert re.search(rf"\b{component}\b", out.stdout), out.stdout


def checks_the_example_as_json(out: Outcome) -> None:
    ok(out)
    document = json.loads(out.stdout)
    assert document["ok"] is True
    assert document["warnings"] == []
    assert sorted(document["manifest"]["components"]) == ["echo", "hello", "web"]


def sent_to_the_greeter(out: Outcome) -> None:
    ok(out)
    assert re.fullmatch(r"sent to hello#\d+\n", out.stdout), out.stdout


def lists_the_greeter(out: Outcome) -> None:
    ok(out)
    assert re.search(r"^hello#\d+\s+\d+\s+\S+\s.*\shello\s", out.stdout, re.MULTILINE), out.stdout


def shows_the_greeter(out: Outcome) -> None:
    ok(out)
    assert re.search(r"^hello\s+hello#\d+\s+\d+\s+running\s", out.stdout, re.MULTILINE)


def answered(
    out: Outcome, status: int, body: bytes, *, prefix: bool = False, content_type: str = ""
) -> None:
    assert out.status == status
    assert out.body.startswith(body) if prefix else out.body == body
    if content_type:
        assert out.content_type == content_type


# ── the first start ─────────────────────────────────────────────────────


def without_log_table(app: App) -> None:
    text = app.manifest.read_text()
    app.manifest.write_text(text.replace('[log]\nlevel = "debug"\n', ""))
    assert "[log]" not in app.manifest.read_text()


def test_daemon_without_a_log_table_prints_only_its_ready_line(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    without_log_table(app)
    daemon = start_daemon()

    lines = wait_for(lambda: daemon.read_log().splitlines(), SETTLE_S, "the ready line")

    assert len(lines) == 1, lines
    workers = daemon.status()["daemon"]["workers_target"]
    assert lines[0].endswith(
        f" rusm             info  rusmd {__version__} ready: {workers} worker(s), profile light; "
        f"serving http 127.0.0.1:{app.serve_port}; control {daemon.socket_path}"
    )
    assert daemon.stop() == EX_OK
    assert daemon.read_log().splitlines() == lines


def test_daemon_under_systemd_puts_its_ready_line_in_status_not_on_stderr(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    without_log_table(app)
    sock, path = notify_listener(app)
    with sock:
        daemon = start_daemon(env={"NOTIFY_SOCKET": str(path)})
        ready = notification(sock)

    assert ready["READY"] == "1"
    assert ready["STATUS"].startswith(f"rusmd {__version__} ready: ")
    assert ready["STATUS"].endswith(
        f"serving http 127.0.0.1:{app.serve_port}; control {daemon.socket_path}"
    )
    assert daemon.read_log() == ""


def test_daemon_log_warns_once_about_an_unknown_capability_as_check_does(
    app: App, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    text = app.manifest.read_text().replace('level = "debug"', 'level = "warn"')
    app.manifest.write_text(text + 'capability = "sandboxd"\n')
    check = subprocess.run(
        [sys.executable, "-m", "rusmd", "check", "--config-only", "--config", str(app.manifest)],
        cwd=tmp_path,
        env=scrubbed_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    [warning] = [line for line in check.stdout.splitlines() if line.startswith("warning: ")]
    assert "unknown capability 'sandboxd' (did you mean 'sandboxed'?)" in warning

    daemon = start_daemon()
    assert daemon.ctl("reload").returncode == EX_OK  # a reload is not a start

    logged = [r for r in daemon.log_records() if "unknown capability" in r["text"]]
    assert [(r["level"], r["text"]) for r in logged] == [
        ("warn", "config: " + warning.removeprefix("warning: "))
    ]
