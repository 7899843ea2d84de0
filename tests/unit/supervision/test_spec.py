"""The supervision vocabulary: defaults, wire spellings and bad values."""

from __future__ import annotations

import math

import pytest

from rusmd.errors import RusmError
from rusmd.supervision import (
    ChildSpec,
    ExitReason,
    QuarantinePolicy,
    RestartType,
    Shutdown,
    ShutdownKind,
    Strategy,
    SupervisionSpecError,
    SupervisorFlags,
    should_restart,
)


def test_supervisor_flags_defaults_are_three_restarts_in_five_seconds_one_for_one() -> None:
    flags = SupervisorFlags()

    assert flags.strategy is Strategy.ONE_FOR_ONE
    assert flags.intensity == 3
    assert flags.period_s == 5.0


def test_child_spec_defaults_are_permanent_with_a_five_second_shutdown() -> None:
    spec = ChildSpec("api")

    assert spec.restart is RestartType.PERMANENT
    assert spec.shutdown == Shutdown.timeout(5.0)
    assert spec.shutdown.kind is ShutdownKind.TIMEOUT
    assert spec.start is None


def test_quarantine_policy_defaults() -> None:
    policy = QuarantinePolicy()

    assert (policy.base_s, policy.factor, policy.max_s) == (1.0, 2.0, 300.0)


def test_enum_values_are_the_otp_wire_spelling() -> None:
    assert [s.value for s in Strategy] == ["one_for_one", "one_for_all", "rest_for_one"]
    assert [r.value for r in RestartType] == ["permanent", "transient", "temporary"]
    assert [r.value for r in ExitReason] == ["normal", "shutdown", "killed", "crashed", "noproc"]
    assert [k.value for k in ShutdownKind] == ["brutal_kill", "timeout"]


def test_flags_and_specs_accept_the_manifest_spelling() -> None:
    flags = SupervisorFlags(strategy="rest_for_one")  # type: ignore[arg-type]
    spec = ChildSpec("api", restart="transient")  # type: ignore[arg-type]

    assert flags.strategy is Strategy.REST_FOR_ONE
    assert spec.restart is RestartType.TRANSIENT


@pytest.mark.parametrize(
    ("reason", "abnormal"),
    [
        (ExitReason.NORMAL, False),
        (ExitReason.SHUTDOWN, False),
        (ExitReason.KILLED, True),
        (ExitReason.CRASHED, True),
        (ExitReason.NOPROC, True),
    ],
)
def test_exit_reason_normal_and_shutdown_are_the_only_normal_exits(
    reason: ExitReason, abnormal: bool
) -> None:
    assert reason.is_abnormal is abnormal


@pytest.mark.parametrize("reason", list(ExitReason))
def test_should_restart_follows_otp_restart_types(reason: ExitReason) -> None:
    assert should_restart(RestartType.PERMANENT, reason) is True
    assert should_restart(RestartType.TRANSIENT, reason) is (
        reason in {ExitReason.KILLED, ExitReason.CRASHED, ExitReason.NOPROC}
    )
    assert should_restart(RestartType.TEMPORARY, reason) is False


def test_shutdown_brutal_kill_has_no_timeout() -> None:
    assert Shutdown.brutal_kill() == Shutdown(ShutdownKind.BRUTAL_KILL, 9.0)
    assert Shutdown.brutal_kill().timeout_s == 0.0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: SupervisorFlags(intensity=-1),
            "supervisor flags: intensity: must be an integer >= 0, got -1",
        ),
        (
            lambda: SupervisorFlags(intensity=1.5),
            "supervisor flags: intensity: must be an integer >= 0, got 1.5",
        ),
        (
            lambda: SupervisorFlags(intensity=True),
            "supervisor flags: intensity: must be an integer >= 0, got True",
        ),
        (
            lambda: SupervisorFlags(period_s=0),
            "supervisor flags: period_s: must be a finite number > 0, got 0",
        ),
        (
            lambda: SupervisorFlags(period_s=-5.0),
            "supervisor flags: period_s: must be a finite number > 0, got -5.0",
        ),
        (
            lambda: SupervisorFlags(period_s=math.nan),
            "supervisor flags: period_s: must be a finite number > 0, got nan",
        ),
        (
            lambda: SupervisorFlags(period_s=math.inf),
            "supervisor flags: period_s: must be a finite number > 0, got inf",
        ),
        (
            lambda: SupervisorFlags(strategy="one_for_some"),
            "supervisor flags: strategy: must be one of one_for_one | one_for_all | "
            "rest_for_one, got 'one_for_some'",
        ),
        (
            lambda: SupervisorFlags(strategy="simple_one_for_one"),
            "supervisor flags: strategy: must be one of one_for_one | one_for_all | "
            "rest_for_one, got 'simple_one_for_one'",
        ),
        (lambda: ChildSpec(""), "child spec: id: must be a non-empty string, got ''"),
        (
            lambda: ChildSpec("api", restart="sometimes"),
            "child 'api': restart: must be one of permanent | transient | temporary, "
            "got 'sometimes'",
        ),
        (
            lambda: Shutdown.timeout(0),
            "shutdown: timeout_s: must be a finite number > 0, got 0",
        ),
        (
            lambda: Shutdown.timeout(math.inf),
            "shutdown: timeout_s: must be a finite number > 0, got inf",
        ),
        (
            lambda: Shutdown("infinity"),
            "shutdown: kind: must be one of brutal_kill | timeout, got 'infinity'",
        ),
        (
            lambda: QuarantinePolicy(base_s=0),
            "quarantine policy: base_s: must be a finite number > 0, got 0",
        ),
        (
            lambda: QuarantinePolicy(factor=0.5),
            "quarantine policy: factor: must be a finite number >= 1, got 0.5",
        ),
        (
            lambda: QuarantinePolicy(base_s=10.0, max_s=5.0),
            "quarantine policy: max_s: must be a finite number >= base_s (10.0), got 5.0",
        ),
    ],
)
def test_bad_spec_value_raises_error_naming_field_and_value(make: object, message: str) -> None:
    assert callable(make)
    with pytest.raises(SupervisionSpecError) as caught:
        make()

    assert str(caught.value) == message
    assert isinstance(caught.value, RusmError)


def test_bad_flags_error_carries_field_and_value_for_the_config_loader() -> None:
    with pytest.raises(SupervisionSpecError) as caught:
        SupervisorFlags(intensity=-2)

    assert (caught.value.where, caught.value.field, caught.value.value) == (
        "supervisor flags",
        "intensity",
        -2,
    )


def test_intensity_zero_is_valid() -> None:
    assert SupervisorFlags(intensity=0).intensity == 0


def test_quarantine_backoff_is_exponential_and_capped() -> None:
    policy = QuarantinePolicy(base_s=1.0, factor=2.0, max_s=10.0)

    assert [policy.backoff_s(level) for level in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_quarantine_backoff_after_days_of_crashes_stays_at_the_cap() -> None:
    policy = QuarantinePolicy()

    assert policy.backoff_s(100_000) == 300.0
