"""Restart intensity, giving up, escalation and an orderly stop."""

from __future__ import annotations

import pytest

from rusmd.supervision import (
    ChildSpec,
    ChildState,
    Escalate,
    ExitReason,
    Shutdown,
    StartChild,
    Strategy,
    Supervisor,
    SupervisorFlags,
    SupervisorStateError,
)
from tests.unit.supervision.harness import (
    all_running,
    carry_out,
    crash,
    running,
    spec,
    start,
    states,
    stop,
)

GIVE_UP = Escalate(ExitReason.SHUTDOWN)


def test_intensity_allows_n_restarts_within_the_period() -> None:
    supervisor = running(["a", "b", "c"], intensity=3, period_s=5.0)

    for now in (1.0, 1.1, 1.2):
        assert crash(supervisor, "a", now) == start("a")

    assert not supervisor.terminated


def test_intensity_gives_up_after_exactly_n_plus_1_crashes_within_the_period() -> None:
    supervisor = running(["a", "b", "c"], intensity=3, period_s=5.0)
    for now in (1.0, 1.1, 1.2):
        crash(supervisor, "a", now)

    actions = crash(supervisor, "a", now=1.3)

    assert actions == [stop("c"), stop("b"), GIVE_UP]
    assert supervisor.terminated


def test_intensity_window_slides_crashes_spread_beyond_the_period_never_give_up() -> None:
    supervisor = running(["a"], intensity=3, period_s=5.0)

    # Every 2 s: at most two earlier restarts are ever within the last 5 s.
    for n in range(20):
        assert crash(supervisor, "a", now=2.0 * n) == start("a")

    assert not supervisor.terminated


def test_multiple_restarts_one_per_2_1_s_with_intensity_1_period_1_survive() -> None:
    supervisor = running(["a"], intensity=1, period_s=1.0)

    for n in range(10):
        assert crash(supervisor, "a", now=2.1 * n) == start("a")


def test_intensity_restart_exactly_one_period_ago_no_longer_counts() -> None:
    supervisor = running(["a"], intensity=1, period_s=5.0)
    crash(supervisor, "a", now=10.0)

    assert crash(supervisor, "a", now=15.0) == start("a")


def test_intensity_restart_just_under_one_period_ago_still_counts() -> None:
    supervisor = running(["a"], intensity=1, period_s=5.0)
    crash(supervisor, "a", now=10.0)

    assert crash(supervisor, "a", now=14.999) == [GIVE_UP]


def test_intensity_zero_gives_up_on_the_first_crash() -> None:
    supervisor = running(["a", "b"], intensity=0)

    assert crash(supervisor, "b", now=1.0) == [stop("a"), GIVE_UP]


def test_intensity_is_shared_by_all_children_of_a_supervisor() -> None:
    supervisor = running(["a", "b", "c"], intensity=1)
    crash(supervisor, "a", now=1.0)

    assert crash(supervisor, "c", now=2.0) == [stop("b"), stop("a"), GIVE_UP]


def test_transient_child_exiting_normally_does_not_count_towards_intensity() -> None:
    supervisor = running([spec("a", "transient"), "b"], intensity=0)

    assert supervisor.child_exited("a", ExitReason.NORMAL, now=1.0) == []
    assert not supervisor.terminated


def test_one_for_all_escalation() -> None:
    supervisor = running(["a", "b", "c"], strategy=Strategy.ONE_FOR_ALL, intensity=0)

    assert crash(supervisor, "a", now=1.0) == [stop("c"), stop("b"), GIVE_UP]


def test_rest_for_one_escalation() -> None:
    supervisor = running(["a", "b", "c"], strategy=Strategy.REST_FOR_ONE, intensity=0)

    assert crash(supervisor, "c", now=1.0) == [stop("b"), stop("a"), GIVE_UP]


@pytest.mark.parametrize("reason", [ExitReason.KILLED, ExitReason.CRASHED, ExitReason.NOPROC])
def test_escalation_reason_is_shutdown_whatever_the_crash(reason: ExitReason) -> None:
    supervisor = running(["a"], intensity=0)

    assert supervisor.child_exited("a", reason, now=1.0) == [Escalate(ExitReason.SHUTDOWN)]


def test_restart_loop_of_failing_starts_escalates_after_intensity_plus_1_attempts() -> None:
    supervisor = running(["a", "b"], intensity=2)
    attempts = 0

    actions = supervisor.child_exited("b", ExitReason.CRASHED, now=1.0)
    while actions == start("b"):
        assert states(supervisor)["b"] is ChildState.RESTARTING
        attempts += 1
        actions = supervisor.child_start_failed("b", now=1.0 + attempts / 10)

    assert attempts == 2
    assert actions == [stop("a"), GIVE_UP]


def test_supervisor_that_gave_up_acknowledges_stops_and_ignores_the_rest() -> None:
    supervisor = running(["a", "b", "c"], intensity=0)
    crash(supervisor, "a", now=1.0)

    assert supervisor.child_exited("c", ExitReason.SHUTDOWN, now=1.1) == []
    assert supervisor.child_exited("b", ExitReason.KILLED, now=1.2) == []
    assert supervisor.stop(now=1.3) == []
    assert supervisor.tick(now=1.4) == []
    assert states(supervisor) == dict.fromkeys("abc", ChildState.STOPPED)
    with pytest.raises(SupervisorStateError, match="supervisor: add_child 'd': the supervisor"):
        supervisor.add_child(spec("d"), now=1.5)


def test_stop_stops_running_children_in_reverse_start_order_with_their_shutdown() -> None:
    brutal, quick = Shutdown.brutal_kill(), Shutdown.timeout(2.0)
    supervisor = running(["a", spec("b", shutdown=quick), spec("c", shutdown=brutal)])

    actions = supervisor.stop(now=1.0)

    assert actions == [stop("c", brutal), stop("b", quick), stop("a")]
    assert states(supervisor) == dict.fromkeys("abc", ChildState.STOPPING)
    assert supervisor.terminated


def test_stop_children_end_stopped_with_the_reason_they_exited_with() -> None:
    supervisor = running(["a", "b"])
    supervisor.stop(now=1.0)

    assert supervisor.child_exited("b", ExitReason.KILLED, now=6.0) == []
    assert supervisor.child_exited("a", ExitReason.SHUTDOWN, now=6.1) == []

    infos = supervisor.which_children(now=7.0)
    assert [(i.id, i.state, i.last_exit_reason) for i in infos] == [
        ("a", ChildState.STOPPED, ExitReason.SHUTDOWN),
        ("b", ChildState.STOPPED, ExitReason.KILLED),
    ]


def test_stop_skips_children_that_are_not_running() -> None:
    supervisor = running([spec("a", "transient"), "b", spec("c", "temporary")])
    supervisor.child_exited("a", ExitReason.NORMAL, now=1.0)

    actions = supervisor.stop(now=2.0)
    carry_out(supervisor, actions, now=2.0)

    assert actions == [stop("c"), stop("b")]
    assert states(supervisor) == {"a": ChildState.STOPPED, "b": ChildState.STOPPED}


def test_stop_twice_stops_nothing_more() -> None:
    supervisor = running(["a"])
    supervisor.stop(now=1.0)

    assert supervisor.stop(now=1.1) == []


def test_start_returns_start_child_in_spec_order_with_the_start_payload() -> None:
    supervisor = Supervisor(SupervisorFlags(), [ChildSpec("x", start=["run", "x"]), spec("y")])

    assert supervisor.start(now=0.0) == [StartChild("x", ["run", "x"]), StartChild("y")]
    assert states(supervisor) == {"x": ChildState.STARTING, "y": ChildState.STARTING}
    with pytest.raises(SupervisorStateError, match="already started"):
        supervisor.start(now=0.1)


def test_restarted_child_reports_restarts_in_window_and_last_exit_reason() -> None:
    supervisor = running(["a", "b"])
    crash(supervisor, "a", now=1.0)
    supervisor.child_exited("a", ExitReason.KILLED, now=2.0)

    infos = {info.id: info for info in supervisor.which_children(now=2.5)}
    assert (infos["a"].state, infos["a"].restarts_in_window) == (ChildState.RESTARTING, 2)
    assert infos["a"].last_exit_reason is ExitReason.KILLED
    assert (infos["b"].restarts_in_window, infos["b"].last_exit_reason) == (0, None)
    assert supervisor.which_children(now=6.5)[0].restarts_in_window == 1
    assert states(supervisor) == {"a": ChildState.RESTARTING, **all_running("b")}
