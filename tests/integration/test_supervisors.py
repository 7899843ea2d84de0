"""Guest supervisors (``rusm.supervise``) on the real daemon, ported from OTP's suite.

Runs in: any (the test process; one ``rusmd`` per module, two workers).

``supervisor_SUITE`` checks every strategy against every restart type and
exit reason, that the restart intensity gives up after exactly N+1
crashes, and that giving up escalates to the parent. Here a "boss"
actor (``tests/guests/actor.c``) traps exits and calls ``supervise``
with three children c1, c2, c3 of the actor guest; the test makes c2
exit with a reason and reads the supervisor's children from ``rusmctl
info`` to see which were restarted (a new pid) and which were left alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rusmd.errors import EX_OK
from rusmd.supervision import ExitReason, RestartType, Strategy, should_restart
from tests.integration.actorkit import SETTLE_S, Actors, actor_wasm, write_actor_app
from tests.integration.conftest import App, Daemon, free_port, wait_for

__all__ = ["actor_wasm"]  # a fixture, used by name

BOSS = 'capability = "boss"'
CHILDREN = ("c1", "c2", "c3")


@pytest.fixture(scope="module")
def actors(tmp_path_factory: pytest.TempPathFactory, actor_wasm: Path) -> Iterator[Actors]:
    app = App(tmp_path_factory.mktemp("app"), free_port(), free_port())
    write_actor_app(app, actor_wasm, {"actor": BOSS, "child": BOSS})
    daemon = Daemon(app, app.directory / "rusmd.log")
    daemon.start()
    try:
        daemon.wait_ready()
        yield Actors(daemon)
    finally:
        daemon.kill_group()


def supervise(
    actors: Actors,
    strategy: str,
    restart: str,
    *,
    intensity: int = 10,
    period_s: float = 60,
    children: tuple[str, ...] = CHILDREN,
    trap: bool = True,
) -> tuple[int, int]:
    """A boss and its supervisor; (boss pid, supervisor pid) once every child runs."""
    boss = actors.spawn("actor")
    if trap:
        assert actors.result(boss, "actor", "trap_exit", "trap_exit 1") == "0"
    spec = {
        "strategy": strategy,
        "intensity": intensity,
        "period_s": period_s,
        "children": [{"component": "child", "id": c, "restart": restart} for c in children],
    }
    sup = int(actors.result(boss, "actor", "supervise", f"supervise {json.dumps(spec)}"))
    assert sup > 0, f"supervise returned {sup}"
    wait_for(
        lambda: all(c["state"] == "running" and c["pid"] for c in kids(actors, sup)) or None,
        SETTLE_S,
        "every child to run",
    )
    return boss, sup


def kids(actors: Actors, sup: int) -> list[dict[str, Any]]:
    result = actors.daemon.ctl("info", f"#{sup}", "--json")
    assert result.returncode == EX_OK, result.stderr
    children: list[dict[str, Any]] = json.loads(result.stdout)["process"]["children"]
    return children


def pids(actors: Actors, sup: int) -> dict[str, int | None]:
    return {c["id"]: c["pid"] for c in kids(actors, sup)}


def make_exit(actors: Actors, pid: int, reason: ExitReason) -> None:
    """End child ``pid`` with ``reason``, the way a guest or operator would."""
    if reason is ExitReason.NORMAL:
        actors.send(pid, "exit 0")
    elif reason is ExitReason.CRASHED:
        actors.send(pid, "crash")
    elif reason is ExitReason.SHUTDOWN:
        actors.send(pid, f"exit_signal {pid} shutdown")
    else:
        assert actors.daemon.ctl("kill", f"#{pid}").returncode == EX_OK
    assert actors.exit_line(pid, "child").startswith(f"exit child#{pid} {reason}")


def restarted_group(strategy: Strategy) -> set[str]:
    return {
        Strategy.ONE_FOR_ONE: {"c2"},
        Strategy.ONE_FOR_ALL: {"c1", "c2", "c3"},
        Strategy.REST_FOR_ONE: {"c2", "c3"},
    }[strategy]


@pytest.mark.parametrize("reason", [r for r in ExitReason if r is not ExitReason.NOPROC])
@pytest.mark.parametrize("restart", list(RestartType))
@pytest.mark.parametrize("strategy", list(Strategy))
def test_strategy_restart_type_and_exit_reason(
    actors: Actors, strategy: Strategy, restart: RestartType, reason: ExitReason
) -> None:
    boss, sup = supervise(actors, str(strategy), str(restart))
    before = pids(actors, sup)
    make_exit(actors, int(before["c2"] or 0), reason)
    if should_restart(restart, reason):
        group = restarted_group(strategy)
        after = wait_for(
            lambda: (
                (
                    (now := pids(actors, sup))
                    and all(now[c] and now[c] != before[c] for c in group)
                    and all(c["state"] == "running" for c in kids(actors, sup))
                    and now
                )
                or None
            ),
            SETTLE_S,
            f"{sorted(group)} to be restarted",
        )
        for child in set(CHILDREN) - group:
            assert after[child] == before[child], f"{child} must be left alone"
    else:
        # c2 is not restarted: stopped (transient) or forgotten (temporary).
        def c2_down() -> dict[str, int | None] | None:
            now = pids(actors, sup)
            return now if now.get("c2") is None else None

        after = wait_for(c2_down, SETTLE_S, "c2 to be left down")
        if restart is RestartType.TEMPORARY:
            assert "c2" not in after
        assert after["c1"] == before["c1"] and after["c3"] == before["c3"]
    assert actors.alive(sup)
    assert actors.daemon.ctl("kill", f"#{boss}").returncode == EX_OK


def test_intensity_gives_up_after_exactly_n_plus_1_crashes(actors: Actors) -> None:
    boss, sup = supervise(actors, "one_for_one", "permanent", intensity=2, children=("c1",))
    for crash in range(1, 3):
        old = pids(actors, sup)["c1"]
        make_exit(actors, int(old or 0), ExitReason.CRASHED)

        def restarted(old: int | None = old) -> int | None:
            new = pids(actors, sup)["c1"]
            return new if new and new != old else None

        wait_for(restarted, SETTLE_S, f"restart after crash {crash}")
        assert actors.alive(sup)
    last = int(pids(actors, sup)["c1"] or 0)
    make_exit(actors, last, ExitReason.CRASHED)
    line = actors.exit_line(sup, "supervisor")
    assert line.startswith(f"exit supervisor#{sup} shutdown"), line
    actors.line(boss, "actor", f"got exit from={sup} reason=shutdown")


def test_giving_up_stops_children_in_reverse_start_order(actors: Actors) -> None:
    _boss, sup = supervise(actors, "one_for_one", "permanent", intensity=0)
    before = pids(actors, sup)
    make_exit(actors, int(before["c1"] or 0), ExitReason.CRASHED)
    actors.exit_line(sup, "supervisor")
    exits = [
        r["text"].split()[1]
        for r in actors.daemon.log_records()
        if r["source"] == "rusm"
        and r["text"].startswith("exit child#")
        and r["text"].split()[2] == "shutdown"
        and int(r["text"].split()[1].split("#")[1]) in (before["c2"], before["c3"])
    ]
    assert exits == [f"child#{before['c3']}", f"child#{before['c2']}"]


def test_escalation_takes_down_a_caller_that_does_not_trap_exits(actors: Actors) -> None:
    boss, sup = supervise(
        actors, "one_for_one", "permanent", intensity=0, children=("c1",), trap=False
    )
    make_exit(actors, int(pids(actors, sup)["c1"] or 0), ExitReason.CRASHED)
    assert actors.exit_line(boss, "actor") == (
        f"exit actor#{boss} shutdown (linked to supervisor#{sup})"
    )


def test_supervisor_stops_its_children_when_its_parent_dies(actors: Actors) -> None:
    boss, sup = supervise(actors, "one_for_all", "permanent")
    children = pids(actors, sup)
    assert actors.daemon.ctl("kill", f"#{boss}").returncode == EX_OK
    assert actors.exit_line(sup, "supervisor").startswith(f"exit supervisor#{sup} killed")
    for pid in children.values():
        assert actors.exit_line(int(pid or 0), "child").startswith(f"exit child#{pid} shutdown")


def test_a_bad_spec_is_invalid_and_logged(actors: Actors) -> None:
    boss = actors.spawn("actor")
    assert (
        actors.result(boss, "actor", "supervise", 'supervise {"strategy": "one_for_two"}') == "-3"
    )
    assert (
        actors.result(
            boss, "actor", "supervise", 'supervise {"children": [{"component": "nobody"}]}'
        )
        == "-4"
    )
    assert any("supervise spec" in line for line in actors.lines())
