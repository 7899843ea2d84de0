"""Dynamic children (add_child, remove_child) and reports about unknown children."""

from __future__ import annotations

import pytest

from rusmd.supervision import (
    ChildState,
    ExitReason,
    Strategy,
    SupervisionSpecError,
    Supervisor,
    SupervisorFlags,
    UnknownChildError,
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


def test_add_child_to_a_running_supervisor_starts_it_last_in_start_order() -> None:
    supervisor = running(["a", "b"])

    assert supervisor.add_child(spec("w"), now=1.0) == start("w")
    supervisor.child_started("w", now=1.1)

    assert list(states(supervisor)) == ["a", "b", "w"]
    assert supervisor.stop(now=2.0) == [stop("w"), stop("b"), stop("a")]


def test_add_child_before_start_is_started_by_start() -> None:
    supervisor = Supervisor(SupervisorFlags(), [spec("a")])

    assert supervisor.add_child(spec("b"), now=0.0) == []
    assert supervisor.start(now=0.0) == start("a", "b")


def test_add_child_with_an_existing_id_raises_and_keeps_the_original() -> None:
    supervisor = running(["a"])

    with pytest.raises(SupervisionSpecError) as caught:
        supervisor.add_child(spec("a", "temporary"), now=1.0)

    assert str(caught.value) == "child specs: id: must be unique, got 'a'"
    assert states(supervisor) == all_running("a")
    assert crash(supervisor, "a", now=2.0) == start("a")


def test_duplicate_ids_in_the_static_specs_raise() -> None:
    with pytest.raises(SupervisionSpecError, match="child specs: id: must be unique, got 'a'"):
        Supervisor(SupervisorFlags(), [spec("a"), spec("b"), spec("a")])


def test_added_child_is_restarted_with_the_children_before_it_under_rest_for_one() -> None:
    supervisor = running(["a", "b"], strategy=Strategy.REST_FOR_ONE)
    carry_out(supervisor, supervisor.add_child(spec("w"), now=1.0), now=1.0)

    assert crash(supervisor, "b", now=2.0) == [stop("w"), *start("b", "w")]


def test_remove_child_stops_it_then_forgets_it() -> None:
    supervisor = running(["a", "b", "c"], strategy=Strategy.ONE_FOR_ALL)

    assert supervisor.remove_child("b", now=1.0) == [stop("b")]
    assert states(supervisor)["b"] is ChildState.STOPPING

    # The exit it was asked for is neither a crash nor a reason to restart anyone.
    assert supervisor.child_exited("b", ExitReason.SHUTDOWN, now=1.1) == []
    assert states(supervisor) == all_running("a", "c")


def test_remove_child_that_crashes_while_stopping_is_still_forgotten() -> None:
    supervisor = running(["a", "b"], intensity=0)
    supervisor.remove_child("b", now=1.0)

    assert supervisor.child_exited("b", ExitReason.CRASHED, now=1.1) == []
    assert states(supervisor) == all_running("a")
    assert not supervisor.terminated


def test_remove_child_being_restarted_stops_it_before_forgetting_it() -> None:
    supervisor = running(["a", "b"], strategy=Strategy.ONE_FOR_ALL)
    supervisor.child_exited("a", ExitReason.CRASHED, now=1.0)

    assert supervisor.remove_child("b", now=1.0) == [stop("b")]
    supervisor.child_started("b", now=1.1)
    assert supervisor.child_exited("b", ExitReason.SHUTDOWN, now=1.2) == []
    assert "b" in states(supervisor)
    assert supervisor.child_exited("b", ExitReason.SHUTDOWN, now=1.3) == []
    assert list(states(supervisor)) == ["a"]


def test_remove_stopped_child_forgets_it_at_once() -> None:
    supervisor = running([spec("a", "transient"), "b"])
    supervisor.child_exited("a", ExitReason.NORMAL, now=1.0)

    assert supervisor.remove_child("a", now=2.0) == []
    assert states(supervisor) == all_running("b")


def test_removed_child_id_can_be_added_again_once_it_has_stopped() -> None:
    supervisor = running(["a", "b"])
    supervisor.remove_child("a", now=1.0)
    with pytest.raises(SupervisionSpecError, match="must be unique"):
        supervisor.add_child(spec("a"), now=1.0)
    supervisor.child_exited("a", ExitReason.SHUTDOWN, now=1.1)

    assert supervisor.add_child(spec("a"), now=1.2) == start("a")
    assert list(states(supervisor)) == ["b", "a"]


def test_worker_pool_resizes_live() -> None:
    pool = running([], intensity=3)
    for n in range(1, 5):
        assert pool.add_child(spec(f"w{n}"), now=0.0) == start(f"w{n}")
        pool.child_started(f"w{n}", now=0.1)

    shrink = [*pool.remove_child("w4", now=1.0), *pool.remove_child("w3", now=1.0)]
    carry_out(pool, shrink, now=1.0)

    assert shrink == [stop("w4"), stop("w3")]
    assert states(pool) == all_running("w1", "w2")


def test_remove_unknown_child_raises_and_changes_nothing() -> None:
    supervisor = running(["a"])

    with pytest.raises(UnknownChildError, match="child 'zz': no such child"):
        supervisor.remove_child("zz", now=1.0)

    assert states(supervisor) == all_running("a")


@pytest.mark.parametrize(
    "report",
    [
        lambda s: s.child_started("zz", 1.0),
        lambda s: s.child_start_failed("zz", 1.0),
        lambda s: s.child_exited("zz", ExitReason.CRASHED, 1.0),
    ],
    ids=["child_started", "child_start_failed", "child_exited"],
)
def test_report_about_an_unknown_child_raises(report: object) -> None:
    supervisor = running(["a"])
    assert callable(report)

    with pytest.raises(UnknownChildError, match="child 'zz': no such child"):
        report(supervisor)

    assert states(supervisor) == all_running("a")


def test_report_about_a_forgotten_temporary_child_raises() -> None:
    supervisor = running(["a", spec("t", "temporary")])
    supervisor.child_exited("t", ExitReason.NORMAL, now=1.0)

    with pytest.raises(UnknownChildError, match="child 't'"):
        supervisor.child_exited("t", ExitReason.NORMAL, now=1.1)
