"""Root mode: quarantine with exponential backoff instead of escalating."""

from __future__ import annotations

import pytest

from rusmd.supervision import (
    ChildState,
    ExitReason,
    Quarantine,
    QuarantinePolicy,
    Strategy,
    Supervisor,
    SupervisorStateError,
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

POLICY = QuarantinePolicy(base_s=1.0, factor=2.0, max_s=5.0)


def root(*ids: str, strategy: Strategy = Strategy.ONE_FOR_ONE, intensity: int = 0) -> Supervisor:
    return running(list(ids), strategy=strategy, intensity=intensity, quarantine=POLICY)


def release(supervisor: Supervisor, id: str, now: float) -> None:
    """Let the quarantine of ``id`` end at ``now`` and the child come up."""
    assert supervisor.tick(now) == start(id)
    supervisor.child_started(id, now)


def test_root_child_exceeding_intensity_is_quarantined_instead_of_escalating() -> None:
    supervisor = root("a", "b", "c", strategy=Strategy.ONE_FOR_ALL, intensity=1)
    crash(supervisor, "a", now=1.0)

    actions = crash(supervisor, "a", now=2.0)

    assert actions == [Quarantine("a", until=3.0)]
    assert not supervisor.terminated
    assert states(supervisor) == {"a": ChildState.QUARANTINED, **all_running("b", "c")}
    assert supervisor.which_children(now=2.0)[0].quarantine_until == 3.0


def test_root_quarantine_backoff_is_exponential_per_consecutive_quarantine_and_capped() -> None:
    supervisor = root("a")
    untils = []

    now = 10.0
    for _ in range(5):
        [quarantine] = crash(supervisor, "a", now)
        assert isinstance(quarantine, Quarantine)
        untils.append(quarantine.until - now)
        now = quarantine.until
        release(supervisor, "a", now)
        now += 0.5

    assert untils == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_tick_releases_a_quarantine_only_once_it_has_ended() -> None:
    supervisor = root("a", "b")
    crash(supervisor, "a", now=10.0)

    assert supervisor.next_deadline() == 11.0
    assert supervisor.tick(now=10.999) == []
    assert supervisor.tick(now=11.0) == start("a")
    assert states(supervisor, now=11.0)["a"] is ChildState.RESTARTING
    assert supervisor.next_deadline() is None
    assert supervisor.tick(now=11.5) == []


def test_root_backoff_resets_after_the_child_stays_up_for_a_full_period() -> None:
    supervisor = running(["a"], intensity=0, period_s=5.0, quarantine=POLICY)
    crash(supervisor, "a", now=10.0)
    release(supervisor, "a", now=11.0)
    crash(supervisor, "a", now=11.5)
    release(supervisor, "a", now=13.5)

    assert supervisor.tick(now=18.5) == []
    assert crash(supervisor, "a", now=18.6) == [Quarantine("a", until=19.6)]


def test_root_backoff_keeps_growing_when_the_child_stays_up_less_than_a_period() -> None:
    supervisor = running(["a"], intensity=0, period_s=5.0, quarantine=POLICY)
    crash(supervisor, "a", now=10.0)
    release(supervisor, "a", now=11.0)
    crash(supervisor, "a", now=11.5)
    release(supervisor, "a", now=13.5)

    assert crash(supervisor, "a", now=18.4) == [Quarantine("a", until=22.4)]


def test_root_intensity_is_counted_per_child() -> None:
    supervisor = root("a", "b", intensity=1)
    crash(supervisor, "a", now=1.0)

    assert crash(supervisor, "b", now=1.5) == start("b")
    assert crash(supervisor, "a", now=2.0) == [Quarantine("a", until=3.0)]


def test_quarantine_release_is_not_counted_as_a_restart() -> None:
    supervisor = root("a", intensity=2)
    crash(supervisor, "a", now=1.0)
    crash(supervisor, "a", now=1.1)
    assert crash(supervisor, "a", now=1.2) == [Quarantine("a", until=2.2)]
    release(supervisor, "a", now=2.2)

    # Within the window only the restart at 1.1 remains.
    assert crash(supervisor, "a", now=6.05) == start("a")


def test_root_failed_start_counts_towards_quarantine() -> None:
    supervisor = root("a")
    crash(supervisor, "a", now=1.0)
    release(supervisor, "a", now=2.0)
    crash(supervisor, "a", now=2.5)
    assert supervisor.tick(now=4.5) == start("a")

    assert supervisor.child_start_failed("a", now=4.6) == [Quarantine("a", until=8.6)]


def test_one_for_all_restart_leaves_a_quarantined_sibling_alone() -> None:
    supervisor = root("a", "b", "c", strategy=Strategy.ONE_FOR_ALL, intensity=1)
    crash(supervisor, "a", now=1.0)
    crash(supervisor, "a", now=1.5)

    actions = crash(supervisor, "b", now=2.0)

    assert actions == [stop("c"), *start("b", "c")]
    assert states(supervisor, now=2.0)["a"] is ChildState.QUARANTINED


def test_lift_quarantine_starts_the_child_at_once() -> None:
    supervisor = root("a", "b")
    crash(supervisor, "a", now=10.0)

    assert supervisor.lift_quarantine("a", now=10.2) == start("a")
    info = supervisor.which_children(now=10.2)[0]
    assert (info.state, info.quarantine_until) == (ChildState.RESTARTING, None)
    assert supervisor.next_deadline() is None
    assert supervisor.tick(now=11.0) == []


def test_lift_quarantine_of_a_child_not_quarantined_raises() -> None:
    supervisor = root("a")

    with pytest.raises(SupervisorStateError) as caught:
        supervisor.lift_quarantine("a", now=1.0)

    assert str(caught.value) == "child 'a': lift_quarantine: not quarantined (state running)"
    assert states(supervisor) == all_running("a")


def test_lift_quarantine_of_an_unknown_child_raises() -> None:
    supervisor = root("a")

    with pytest.raises(UnknownChildError, match="child 'api': no such child"):
        supervisor.lift_quarantine("api", now=1.0)


def test_next_deadline_is_the_earliest_quarantine_end() -> None:
    supervisor = root("a", "b", "c")
    assert supervisor.next_deadline() is None
    crash(supervisor, "b", now=10.0)
    crash(supervisor, "a", now=10.2)

    assert supervisor.next_deadline() == 11.0
    assert supervisor.tick(now=11.0) == start("b")
    assert supervisor.next_deadline() == 11.2


def test_stop_ends_quarantines() -> None:
    supervisor = root("a", "b")
    crash(supervisor, "a", now=1.0)

    actions = supervisor.stop(now=1.5)
    carry_out(supervisor, actions, now=1.5)

    assert actions == [stop("b")]
    assert states(supervisor) == {"a": ChildState.STOPPED, "b": ChildState.STOPPED}
    assert supervisor.next_deadline() is None
    assert supervisor.tick(now=5.0) == []


def test_removing_a_quarantined_child_forgets_it() -> None:
    supervisor = root("a", "b")
    crash(supervisor, "a", now=1.0)

    assert supervisor.remove_child("a", now=1.5) == []
    assert states(supervisor) == all_running("b")
    assert supervisor.next_deadline() is None


def test_root_quarantine_last_exit_reason_is_the_crash() -> None:
    supervisor = root("a")

    supervisor.child_exited("a", ExitReason.KILLED, now=1.0)

    assert supervisor.which_children(now=1.0)[0].last_exit_reason is ExitReason.KILLED


def test_root_child_moved_again_and_again_is_never_quarantined() -> None:
    """A resident whose worker is replaced (reload after reload) is moved, not restarted."""
    supervisor = root("a", intensity=1)

    for now in (1.0, 1.5, 2.0, 2.5):
        assert supervisor.child_moved("a", now) == start("a")
        supervisor.child_started("a", now)

    assert states(supervisor) == all_running("a")
    assert crash(supervisor, "a", now=3.0) == start("a")  # the intensity is all still there


def test_transient_child_moved_comes_back_and_temporary_does_not() -> None:
    supervisor = running([spec("t", "transient"), spec("tmp", "temporary")])

    assert supervisor.child_moved("t", 1.0) == start("t")
    assert supervisor.child_moved("tmp", 1.0) == []
