"""What the kernel allows the listeners: the open-files limit and the backlog cap.

Runs in: any (``resource`` is replaced by a fake holding the limits; no
process limit of the test run is changed, no socket is bound).

The workers inherit the main process's open-files limit and each holds
a descriptor per connection, so the main process raises its soft limit
to the hard one when ``max-connections`` needs more, and warns when even
that is short. A backlog cap (``net.core.somaxconn``) below a listener's
``max-connections`` is warned about: a burst past the queue waits for
the clients' 1 s / 3 s handshake retransmits.
"""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from rusmd.config.model import Protocol, Serve
from rusmd.main import listeners
from rusmd.main.listeners import (
    WORKER_FILES_RESERVE,
    backlog_warnings,
    files_needed,
    fit_open_files,
    open_files_warnings,
    read_somaxconn,
)

SERVE = (
    Serve(protocol=Protocol.HTTP, listen="127.0.0.1:8080", name="api", max_connections=4096),
    Serve(protocol=Protocol.WS, listen="127.0.0.1:8082", name="echo", max_connections=1000),
)
NEEDED = 4096 + 1000 + WORKER_FILES_RESERVE


class Limits:
    """RLIMIT_NOFILE as ``resource`` shows it; ``setrlimit`` obeys the kernel's one rule."""

    RLIMIT_NOFILE = resource.RLIMIT_NOFILE
    RLIM_INFINITY = resource.RLIM_INFINITY

    def __init__(self, soft: int, hard: int) -> None:
        self.soft = soft
        self.hard = hard

    def getrlimit(self, which: int) -> tuple[int, int]:
        return self.soft, self.hard

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        soft, hard = limits
        if hard > self.hard or (soft > hard and hard != self.RLIM_INFINITY):
            raise ValueError("not allowed to raise maximum limit")
        self.soft, self.hard = soft, hard


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> Limits:
    fake = Limits(1024, 524288)
    monkeypatch.setattr(listeners, "resource", fake)
    return fake


def test_files_needed_is_every_listener_full_and_the_reserve() -> None:
    assert files_needed(SERVE) == NEEDED


def test_soft_limit_under_what_the_listeners_need_is_raised_to_the_hard_limit(
    limits: Limits,
) -> None:
    line = fit_open_files(SERVE)

    assert (limits.soft, limits.hard) == (524288, 524288)
    assert line == "limits: open-files soft limit raised from 1024 to 524288 for the listeners"
    assert open_files_warnings(SERVE) == []


def test_soft_limit_that_already_fits_is_left_alone(limits: Limits) -> None:
    limits.soft = NEEDED

    assert fit_open_files(SERVE) is None
    assert limits.soft == NEEDED


def test_hard_limit_below_the_need_is_raised_to_and_warned_about(limits: Limits) -> None:
    limits.hard = 4096

    line = fit_open_files(SERVE)
    (warning,) = open_files_warnings(SERVE)

    assert limits.soft == 4096
    assert line == "limits: open-files soft limit raised from 1024 to 4096 for the listeners"
    assert warning.startswith(f"limits: the open-files limit 4096 is below the {NEEDED} ")
    assert "LimitNOFILE=" in warning


def test_unlimited_hard_limit_raises_the_soft_limit_to_the_need(limits: Limits) -> None:
    limits.hard = resource.RLIM_INFINITY

    fit_open_files(SERVE)

    assert limits.soft == NEEDED


def test_backlog_cap_below_a_listeners_max_connections_is_warned_about() -> None:
    warnings = backlog_warnings(SERVE, somaxconn=2048)

    assert warnings == [
        "serve[0] 127.0.0.1:8080: the kernel caps the listen backlog at 2048 "
        "(net.core.somaxconn), below max-connections 4096: a burst of more new connections "
        "than that waits 1 s or more; raise net.core.somaxconn"
    ]
    assert backlog_warnings(SERVE, somaxconn=4096) == []
    assert backlog_warnings(SERVE, somaxconn=None) == []


def test_somaxconn_is_read_from_its_file_or_unknown(tmp_path: Path) -> None:
    present = tmp_path / "somaxconn"
    present.write_text("4096\n")

    assert read_somaxconn(present) == 4096
    assert read_somaxconn(tmp_path / "absent") is None
