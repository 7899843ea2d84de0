"""The actor table's rules, on a table whose transport is a fake.

Runs in: any (the test process; no wasm, no daemon: the table is pure
bookkeeping under a lock, and its outside world is four callables that
these tests replace with lists).

Daemon-level behaviour (real guests, real workers, the mesh) is in
``tests/integration/test_actors.py``; this file pins the rules that are
awkward to reach from a guest: the mailbox bound, what always gets
through, what a timeout or a too-small buffer keeps, and what a dead
worker fires.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from rusmd.abi import ErrorCode, ExitReason, Kind
from rusmd.actors.records import Actor, Envelope, Stopped
from rusmd.actors.signals import Op
from rusmd.actors.table import ActorTable
from rusmd.channel import Message, NameClaim, NameDrop, NameReply, Names, Sig

SLOT = 3
# How long a test waits for another thread to reach a state; far above
# what it takes, so only a hang fails the test.
PARK_TIMEOUT_S = 5.0


class Fake:
    """The table's outside world, recorded."""

    def __init__(self) -> None:
        self.remote: list[Sig] = []
        self.main: list[Message] = []
        self.later: list[tuple[float, Callable[[], None]]] = []
        self.live_slots = {4}

    def table(self, limit: int = 5) -> ActorTable:
        def remote(slot: int, sig: Sig) -> bool:
            if slot not in self.live_slots:
                return False
            self.remote.append(sig)
            return True

        return ActorTable(
            SLOT,
            remote=remote,
            to_main=self.main.append,
            call_soon=lambda job, *args: job(*args),
            call_later=lambda delay, job: self.later.append((delay, job)),
            mailbox_limit=limit,
        )


@pytest.fixture
def fake() -> Fake:
    return Fake()


def pid(serial: int, slot: int = SLOT) -> int:
    return serial * 1000 + slot


def add(table: ActorTable, serial: int, stops: list[tuple[int, str, str]] | None = None) -> Actor:
    p = pid(serial)
    record = stops if stops is not None else []
    return table.add(p, f"t#{p}", lambda reason, detail: record.append((p, reason, detail)))


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + PARK_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {PARK_TIMEOUT_S:g}s: {what}"
        time.sleep(0.001)


def wait_parked(actor: Actor) -> None:
    """Return once a thread is parked on ``actor``'s condition."""
    wait_until(lambda: actor.waiting == 1, f"a thread parked on {actor.label}")


def take(table: ActorTable, actor: Actor) -> Envelope:
    code, envelope = table.receive(actor, 0, 1 << 20)
    assert code == ErrorCode.OK and envelope is not None
    return envelope


def test_a_full_mailbox_drops_and_counts_user_messages(fake: Fake) -> None:
    table = fake.table(limit=3)
    a, b = add(table, 1), add(table, 2)
    codes = [table.send(a.pid, b.pid, f"m{i}".encode()) for i in range(5)]
    assert codes == [ErrorCode.OK] * 3 + [ErrorCode.LIMIT] * 2
    assert b.dropped == 2
    assert [take(table, b).payload for _ in range(3)] == [b"m0", b"m1", b"m2"]
    # Room again once messages are taken.
    assert table.send(a.pid, b.pid, b"m5") == ErrorCode.OK


def test_exit_and_down_get_through_a_full_mailbox(fake: Fake) -> None:
    table = fake.table(limit=1)
    a, b, c = add(table, 1), add(table, 2), add(table, 3)
    b.trap_exit = True
    assert table.send(a.pid, b.pid, b"fill") == ErrorCode.OK
    table.link(b, a.pid)
    ref = table.monitor(b, c.pid)
    table.remove(a.pid, "crashed")
    table.remove(c.pid, "killed")
    kinds = [take(table, b) for _ in range(3)]
    assert [(e.kind, e.sender, e.reason) for e in kinds] == [
        (Kind.MESSAGE, a.pid, 0),
        (Kind.EXIT, a.pid, ExitReason.CRASHED.code),
        (Kind.DOWN, c.pid, ExitReason.KILLED.code),
    ]
    assert kinds[2].ref == ref


def test_a_timeout_loses_no_message_and_a_small_buffer_keeps_it(fake: Fake) -> None:
    table = fake.table()
    a, b = add(table, 1), add(table, 2)
    assert table.receive(b, 0.01, 100) == (ErrorCode.TIMEOUT, None)
    table.send(a.pid, b.pid, b"0123456789")
    code, envelope = table.receive(b, 0, 4)
    assert code == ErrorCode.TOOBIG and envelope is not None and len(envelope.payload) == 10
    assert take(table, b).payload == b"0123456789"


def test_take_never_waits_keeps_what_does_not_fit_and_sees_a_stop(fake: Fake) -> None:
    table = fake.table()
    a, b = add(table, 1), add(table, 2)
    assert table.take(b, 16) == (ErrorCode.TIMEOUT, None)  # empty: at once, no wait
    table.send(a.pid, b.pid, b"0123456789")
    code, envelope = table.take(b, 4)
    assert code == ErrorCode.TOOBIG and envelope is not None and len(b.mailbox) == 1
    code, envelope = table.take(b, 10)
    assert code == ErrorCode.OK and envelope is not None and envelope.payload == b"0123456789"
    assert not b.mailbox and b.user_messages == 0 and b.received == 1
    table.send(a.pid, b.pid, b"after")
    table.kill(b.pid, ExitReason.KILLED, "by a test")
    with pytest.raises(Stopped):
        table.take(b, 16)


def test_took_over_only_when_nothing_is_queued_it_fits_and_no_stop(fake: Fake) -> None:
    table = fake.table()
    a, b = add(table, 1), add(table, 2)
    assert table.took_over(b, 10, 10)
    assert b.received == 1 and table.delivered == 1 and not b.mailbox
    assert not table.took_over(b, 11, 10)  # over the waiting buffer: the mailbox says TOOBIG
    table.send(a.pid, b.pid, b"first")
    assert not table.took_over(b, 1, 10)  # behind a queued message: in order, through the mailbox
    take(table, b)
    table.kill(b.pid, ExitReason.KILLED, "by a test")
    assert not table.took_over(b, 1, 10)
    assert b.received == 2


def test_a_parked_receive_wakes_for_a_message_from_another_thread(fake: Fake) -> None:
    table = fake.table()
    a, b = add(table, 1), add(table, 2)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(table.receive(b, None, 100)))
    waiter.start()
    wait_parked(b)
    assert not got, "receive must park while the mailbox is empty"
    table.send(a.pid, b.pid, b"wake")
    waiter.join(5)
    assert got and got[0][0] == ErrorCode.OK and got[0][1].payload == b"wake"
    assert b.waiting == 0


def test_a_kill_wakes_a_parked_receive(fake: Fake) -> None:
    table = fake.table()
    stops: list[tuple[int, str, str]] = []
    b = add(table, 2, stops)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            table.receive(b, None, 100)
        except Stopped as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_parked(b)
    assert table.kill(b.pid, "killed", "by a test")
    waiter.join(5)
    assert [str(e) for e in errors] == ["killed"]
    assert stops == [(b.pid, "killed", "by a test")]


def test_links_cascade_unless_normal_and_kill_cannot_be_trapped(fake: Fake) -> None:
    table = fake.table()
    stops: list[tuple[int, str, str]] = []
    a, b, c = add(table, 1, stops), add(table, 2, stops), add(table, 3, stops)
    table.link(a, b.pid)
    table.link(a, c.pid)
    table.remove(b.pid, "normal")
    assert stops == []
    table.remove(c.pid, "shutdown")
    assert stops == [(a.pid, "shutdown", f"linked to t#{c.pid}")]
    d = add(table, 4, stops)
    d.trap_exit = True
    assert table.exit_signal(a, d.pid, ExitReason.KILLED.code) == ErrorCode.OK
    assert stops[-1] == (d.pid, "killed", f"killed by t#{a.pid}")


def test_demonitor_and_unlink_drop_what_they_already_queued(fake: Fake) -> None:
    table = fake.table()
    a, b, c = add(table, 1), add(table, 2), add(table, 3)
    a.trap_exit = True
    ref = table.monitor(a, b.pid)
    table.link(a, c.pid)
    table.remove(b.pid, "crashed")
    table.remove(c.pid, "crashed")
    assert len(a.mailbox) == 2
    assert table.demonitor(a, ref) == ErrorCode.OK
    assert table.unlink(a, c.pid) == ErrorCode.OK
    assert table.receive(a, 0, 100) == (ErrorCode.TIMEOUT, None)


def test_monitor_and_link_of_a_dead_pid(fake: Fake) -> None:
    table = fake.table()
    a = add(table, 1)
    a.trap_exit = True
    ref = table.monitor(a, pid(99))
    down = take(table, a)
    assert (down.kind, down.ref, down.sender, down.reason) == (
        Kind.DOWN,
        ref,
        pid(99),
        ExitReason.NOPROC.code,
    )
    assert table.link(a, pid(99)) == ErrorCode.NOPROC
    # A pid on a worker slot nobody runs: the link is answered with noproc.
    assert table.link(a, pid(5, slot=9)) == ErrorCode.OK
    exit_ = take(table, a)
    assert (exit_.kind, exit_.sender, exit_.reason) == (
        Kind.EXIT,
        pid(5, 9),
        ExitReason.NOPROC.code,
    )


def test_a_dead_worker_fires_links_and_monitors_with_its_reason(fake: Fake) -> None:
    table = fake.table()
    stops: list[tuple[int, str, str]] = []
    a, b = add(table, 1, stops), add(table, 2, stops)
    remote = pid(7, slot=4)
    table.link(a, remote)
    ref = table.monitor(b, remote)
    table.names_update(Names(set={"far": remote}, removed=[]))
    table.worker_down(4, "killed")
    assert stops == [(a.pid, "killed", f"linked to #{remote}")]
    down = take(table, b)
    assert (down.kind, down.ref, down.reason) == (Kind.DOWN, ref, ExitReason.KILLED.code)
    assert table.whereis("far") is None


def test_call_to_a_dead_local_pid_is_noproc_and_a_late_reply_is_dropped(fake: Fake) -> None:
    table = fake.table()
    a, b = add(table, 1), add(table, 2)
    assert table.call(a, pid(99), b"hi", 1.0) == (ErrorCode.NOPROC, b"")
    assert table.call(a, b.pid, b"hi", 0.01) == (ErrorCode.TIMEOUT, b"")
    request = take(table, b)
    assert request.kind == Kind.CALL
    table.reply(b, a.pid, request.ref, b"late")
    assert table.receive(a, 0, 100) == (ErrorCode.TIMEOUT, None)
    assert a.monitors == {} and b.watchers == {}


def test_call_ends_with_noproc_when_the_callee_dies(fake: Fake) -> None:
    table = fake.table()
    a, b = add(table, 1), add(table, 2)
    results: list[tuple[int, bytes]] = []
    caller = threading.Thread(target=lambda: results.append(table.call(a, b.pid, b"x", None)))
    caller.start()
    wait_parked(a)
    table.remove(b.pid, "crashed")
    caller.join(5)
    assert results == [(ErrorCode.NOPROC, b"")]


def test_a_cancelled_timer_never_fires(fake: Fake) -> None:
    table = fake.table()
    a = add(table, 1)
    kept = table.send_after(a, a.pid, 0.5, b"kept")
    gone = table.send_after(a, a.pid, 0.1, b"gone")
    assert table.cancel_timer(a, gone) == ErrorCode.OK
    assert table.cancel_timer(a, gone) == ErrorCode.NOTFOUND
    for _delay, job in fake.later:
        job()
    fired = take(table, a)
    assert (fired.kind, fired.ref, fired.payload) == (Kind.TIMER, kept, b"kept")
    assert table.receive(a, 0, 100) == (ErrorCode.TIMEOUT, None)


def test_messages_sent_count_sends_calls_and_fired_timers_once_where_sent(fake: Fake) -> None:
    table = fake.table(limit=2)
    a, b = add(table, 1), add(table, 2)
    table.send(a.pid, b.pid, b"one")
    table.send(a.pid, b.pid, b"two")
    assert table.send(a.pid, b.pid, b"full") == ErrorCode.LIMIT
    assert table.send(a.pid, pid(99), b"dead") == ErrorCode.NOPROC
    take(table, b)
    take(table, b)
    table.call_begin(a, b.pid, b"call")
    table.send_after(a, b.pid, 0.01, b"timer")
    assert table.sent_local == 5  # the timer is sent when it fires
    for _delay, job in fake.later:
        job()
    assert table.sent_local == 6
    # one, two, the call's request, the timer: 4 delivered; full and dead dropped
    assert (table.delivered, table.dropped) == (4, 2)
    # Links, monitors, a reply and a message to another worker are not counted here.
    table.link(a, b.pid)
    table.reply(b, a.pid, 1, b"r")
    table.send(a.pid, pid(8, slot=4), b"far")
    table.call_begin(b, pid(9, slot=4), b"far call")
    assert table.sent_local == 6 and table.sent_refused == 0
    assert [s.op for s in fake.remote] == [Op.SEND, Op.MONITOR, Op.CALL]


def test_names_are_released_on_exit_and_only_owners_unregister(fake: Fake) -> None:
    table = fake.table()
    a, b = add(table, 1), add(table, 2)
    table.names_update(Names(set={"svc": a.pid}, removed=[]))
    assert a.names == {"svc"}
    assert table.unregister(b, "svc") == ErrorCode.DENIED
    table.remove(a.pid, "normal")
    assert table.whereis("svc") is None
    assert NameDrop(pid=a.pid, names=["svc"]) in fake.main


def test_signals_to_another_worker_go_out_in_order(fake: Fake) -> None:
    table = fake.table()
    a = add(table, 1)
    far = pid(8, slot=4)
    for i in range(5):
        assert table.send(a.pid, far, bytes([i])) == ErrorCode.OK
    assert [s.payload for s in fake.remote if s.op == Op.SEND] == [bytes([i]) for i in range(5)]


def test_register_holds_when_the_broadcast_arrives_before_the_reply(fake: Fake) -> None:
    table = fake.table()
    a = add(table, 1)
    results: list[int] = []
    caller = threading.Thread(target=lambda: results.append(table.register(a, "svc")))
    caller.start()
    # The claim goes to main before the caller parks for the answer.
    wait_parked(a)
    claim = next((m for m in fake.main if isinstance(m, NameClaim)), None)
    assert claim is not None
    # Main broadcasts the change to every worker, then answers the claim.
    table.names_update(Names(set={"svc": a.pid}, removed=[]))
    table.name_reply(NameReply(req=claim.req, ok=True, holder=a.pid))
    caller.join(5)
    assert results == [ErrorCode.OK]
    assert table.whereis("svc") == a.pid and a.names == {"svc"}
    assert not [m for m in fake.main if isinstance(m, NameDrop)]


def test_a_batch_from_another_worker_is_delivered_in_order_waking_each_receiver_once(
    fake: Fake,
) -> None:
    table = fake.table(limit=100)
    a, b = add(table, 1), add(table, 2)
    wakes: list[int] = []
    a.waker = lambda: wakes.append(a.pid)
    b.waker = lambda: wakes.append(b.pid)
    far = pid(9, slot=4)
    batch = [Sig(Op.SEND, (a, b)[i % 2].pid, far, payload=bytes([i])) for i in range(10)]
    table.deliver_batch(batch)
    assert sorted(wakes) == sorted([a.pid, b.pid])
    assert [e.payload for e in a.mailbox] == [bytes([i]) for i in range(0, 10, 2)]
    assert [e.payload for e in b.mailbox] == [bytes([i]) for i in range(1, 10, 2)]
    # Outside a batch, every message wakes its receiver as before.
    table.send(far, a.pid, b"again")
    assert wakes.count(a.pid) == 2


def test_user_signals_to_a_backlogged_worker_get_limit_and_the_rest_still_go(
    fake: Fake,
) -> None:
    table = ActorTable(
        SLOT,
        remote=lambda _slot, sig: fake.remote.append(sig) is None,
        remote_backlogged=lambda slot: slot == 4,
        to_main=fake.main.append,
        call_soon=lambda job, *args: job(*args),
        call_later=lambda delay, job: fake.later.append((delay, job)),
    )
    a = add(table, 1)
    far = pid(8, slot=4)
    assert table.send(a.pid, far, b"x") == ErrorCode.LIMIT
    assert table.call(a, far, b"c", 1.0) == (ErrorCode.LIMIT, b"")
    assert table.link(a, far) == ErrorCode.OK
    assert table.dropped == 2
    assert table.sent_refused == 2 and table.sent_local == 0  # sent, then dropped
    # The call's monitor and its removal, and the link, still went out.
    assert [s.op for s in fake.remote] == [Op.MONITOR, Op.DEMONITOR, Op.LINK]
