"""Restart decisions: strategy x restart type x exit reason, as OTP's supervisor_SUITE.

The oracle is written out from OTP's supervisor documentation, not computed
by the code under test.
"""

from __future__ import annotations

import pytest

from rusmd.supervision import Action, ChildState, ExitReason, RestartType, Shutdown, Strategy
from tests.unit.supervision.harness import (
    all_running,
    carry_out,
    running,
    spec,
    start,
    states,
    stop,
)

# Which exit reasons restart a child, per restart type.
RESTARTING_REASONS = {
    RestartType.PERMANENT: set(ExitReason),
    RestartType.TRANSIENT: {ExitReason.KILLED, ExitReason.CRASHED, ExitReason.NOPROC},
    RestartType.TEMPORARY: set(),
}

# Children a, b, c; b exits. What each strategy does when b is restarted.
RESTART_ACTIONS: dict[Strategy, list[Action]] = {
    Strategy.ONE_FOR_ONE: start("b"),
    Strategy.ONE_FOR_ALL: [stop("c"), stop("a"), *start("a", "b", "c")],
    Strategy.REST_FOR_ONE: [stop("c"), *start("b", "c")],
}


@pytest.mark.parametrize("reason", list(ExitReason))
@pytest.mark.parametrize("restart", list(RestartType))
@pytest.mark.parametrize("strategy", list(Strategy))
def test_child_exit_gives_otp_actions_per_strategy_restart_type_and_reason(
    strategy: Strategy, restart: RestartType, reason: ExitReason
) -> None:
    supervisor = running(["a", spec("b", restart), "c"], strategy=strategy)

    actions = supervisor.child_exited("b", reason, now=1.0)

    if reason in RESTARTING_REASONS[restart]:
        assert actions == RESTART_ACTIONS[strategy]
        carry_out(supervisor, actions, now=1.0)
        assert states(supervisor) == all_running("a", "b", "c")
    elif restart is RestartType.TEMPORARY:
        assert actions == []
        assert states(supervisor) == all_running("a", "c")
    else:
        assert actions == []
        assert states(supervisor) == {**all_running("a", "c"), "b": ChildState.STOPPED}


def test_permanent_child_exiting_normally_is_restarted() -> None:
    supervisor = running(["a"])

    assert supervisor.child_exited("a", ExitReason.NORMAL, now=1.0) == start("a")
    assert states(supervisor) == {"a": ChildState.RESTARTING}


def test_transient_child_exiting_normally_is_not_restarted() -> None:
    supervisor = running([spec("a", "transient")])

    assert supervisor.child_exited("a", ExitReason.NORMAL, now=1.0) == []
    assert states(supervisor) == {"a": ChildState.STOPPED}


def test_transient_child_exiting_with_shutdown_is_not_restarted() -> None:
    supervisor = running([spec("a", "transient")])

    assert supervisor.child_exited("a", ExitReason.SHUTDOWN, now=1.0) == []


def test_transient_child_crashing_is_restarted() -> None:
    supervisor = running([spec("a", "transient")])

    assert supervisor.child_exited("a", ExitReason.CRASHED, now=1.0) == start("a")


def test_temporary_child_crashing_is_not_restarted_and_is_forgotten() -> None:
    supervisor = running(["a", spec("b", "temporary")])

    assert supervisor.child_exited("b", ExitReason.CRASHED, now=1.0) == []
    assert states(supervisor) == all_running("a")


def test_one_for_all_stops_in_reverse_start_order_then_starts_in_start_order() -> None:
    supervisor = running(["a", "b", "c", "d"], strategy=Strategy.ONE_FOR_ALL)

    actions = supervisor.child_exited("c", ExitReason.CRASHED, now=1.0)

    assert actions == [stop("d"), stop("b"), stop("a"), *start("a", "b", "c", "d")]


def test_rest_for_one_restarts_the_child_and_those_started_after_it() -> None:
    supervisor = running(["a", "b", "c", "d"], strategy=Strategy.REST_FOR_ONE)

    actions = supervisor.child_exited("b", ExitReason.CRASHED, now=1.0)

    assert actions == [stop("d"), stop("c"), *start("b", "c", "d")]
    assert states(supervisor)["a"] is ChildState.RUNNING


def test_rest_for_one_last_child_crashing_restarts_only_itself() -> None:
    supervisor = running(["a", "b", "c"], strategy=Strategy.REST_FOR_ONE)

    assert supervisor.child_exited("c", ExitReason.CRASHED, now=1.0) == start("c")


def test_stop_child_carries_each_siblings_own_shutdown() -> None:
    quick = Shutdown.timeout(0.5)
    supervisor = running(
        ["a", spec("b", shutdown=Shutdown.brutal_kill()), spec("c", shutdown=quick)],
        strategy=Strategy.ONE_FOR_ALL,
    )

    actions = supervisor.child_exited("a", ExitReason.CRASHED, now=1.0)

    assert actions == [stop("c", quick), stop("b", Shutdown.brutal_kill()), *start("a", "b", "c")]


@pytest.mark.parametrize("strategy", [Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE])
def test_temporary_bystander_is_stopped_and_not_restarted(strategy: Strategy) -> None:
    supervisor = running(["a", spec("b", "temporary"), "c"], strategy=strategy)

    actions = supervisor.child_exited("a", ExitReason.CRASHED, now=1.0)

    assert actions == [stop("c"), stop("b"), *start("a", "c")]
    assert states(supervisor)["b"] is ChildState.STOPPING
    carry_out(supervisor, actions, now=1.0)
    assert states(supervisor) == all_running("a", "c")


def test_one_for_all_does_not_restart_a_transient_sibling_that_exited_normally() -> None:
    supervisor = running(["a", spec("b", "transient"), "c"], strategy=Strategy.ONE_FOR_ALL)
    supervisor.child_exited("b", ExitReason.NORMAL, now=1.0)

    actions = supervisor.child_exited("a", ExitReason.CRASHED, now=2.0)

    assert actions == [stop("c"), *start("a", "c")]
    assert states(supervisor)["b"] is ChildState.STOPPED


@pytest.mark.parametrize("reason", [ExitReason.SHUTDOWN, ExitReason.KILLED, ExitReason.CRASHED])
def test_exits_of_children_being_stopped_are_not_counted_as_crashes(reason: ExitReason) -> None:
    # Intensity 1: one more counted crash would make the supervisor give up.
    supervisor = running(["a", "b", "c"], strategy=Strategy.ONE_FOR_ALL, intensity=1)
    supervisor.child_exited("a", ExitReason.CRASHED, now=1.0)

    assert supervisor.child_exited("c", reason, now=1.1) == []
    assert supervisor.child_exited("b", reason, now=1.2) == []

    assert not supervisor.terminated
    restarts = {info.id: info.restarts_in_window for info in supervisor.which_children(1.2)}
    assert restarts == {"a": 1, "b": 0, "c": 0}
    assert states(supervisor) == dict.fromkeys("abc", ChildState.RESTARTING)


def test_child_crash_reported_after_supervisor_asked_it_to_stop_is_not_restarted() -> None:
    supervisor = running(["a", "b"], strategy=Strategy.ONE_FOR_ALL)
    actions = supervisor.child_exited("a", ExitReason.CRASHED, now=1.0)
    assert actions == [stop("b"), *start("a", "b")]

    # b died on its own before the StopChild reached it: still the one exit owed.
    assert supervisor.child_exited("b", ExitReason.CRASHED, now=1.0) == []
    supervisor.child_started("a", now=1.1)
    supervisor.child_started("b", now=1.2)

    assert states(supervisor) == all_running("a", "b")


def test_failed_start_counts_as_a_crash() -> None:
    supervisor = running(["a", "b"], strategy=Strategy.REST_FOR_ONE)
    supervisor.child_exited("a", ExitReason.CRASHED, now=1.0)
    supervisor.child_exited("b", ExitReason.SHUTDOWN, now=1.0)

    actions = supervisor.child_start_failed("a", now=1.1)

    # b's StartChild may already be under way: it is stopped before starting again.
    assert actions == [stop("b"), *start("a", "b")]
    info = supervisor.which_children(1.1)[0]
    assert (info.last_exit_reason, info.restarts_in_window) == (ExitReason.CRASHED, 2)


def test_temporary_child_failing_to_start_is_forgotten() -> None:
    supervisor = running(["a"])
    assert supervisor.add_child(spec("t", "temporary"), now=1.0) == start("t")

    assert supervisor.child_start_failed("t", now=1.1) == []
    assert states(supervisor) == all_running("a")


def test_one_for_all_crash_while_a_sibling_is_still_starting_stops_and_starts_it() -> None:
    supervisor = running([], strategy=Strategy.ONE_FOR_ALL)
    for id in "abc":
        supervisor.add_child(spec(id), now=0.0)
    supervisor.child_started("a", now=0.1)

    actions = supervisor.child_start_failed("b", now=0.2)

    assert actions == [stop("c"), stop("a"), *start("a", "b", "c")]
    # c's first start comes up after all, then is stopped: both are acknowledged.
    supervisor.child_started("c", now=0.3)
    assert states(supervisor)["c"] is ChildState.RESTARTING
    carry_out(supervisor, actions, now=0.4)
    assert states(supervisor) == all_running("a", "b", "c")
    assert not supervisor.terminated


def test_repeated_exit_report_is_ignored() -> None:
    supervisor = running([spec("a", "transient")])
    supervisor.child_exited("a", ExitReason.NORMAL, now=1.0)

    assert supervisor.child_exited("a", ExitReason.CRASHED, now=1.1) == []
    assert states(supervisor) == {"a": ChildState.STOPPED}
