"""The worker's event loop: channel to main, heartbeats, the mesh, draining.

Runs in: worker.

One uvloop loop per worker. It reports ``Ready`` as soon as it runs,
then a ``Heartbeat`` every ``HEARTBEAT_INTERVAL_S``: the main process
kills a worker whose heartbeats stop (a wedged loop, SIGSTOP). ``Stop``
or SIGTERM start a drain: in-flight work finishes up to the timeout,
then the loop ends and the worker exits 0.

The mesh (``mesh``): one channel to every sibling worker; signals for
another worker's processes leave in one frame per peer per loop turn.

Wasm processes: the worker's ``WasmHost`` runs them on guest threads.
The main process sends the compiled components (``Components``), pid
serial leases (``PidLease``) and control queries (``Query``: spawn,
spawn_module, list, info, kill), which the loop answers with ``Answer``. Guest
threads log through the loop thread (``call_soon_threadsafe``), so the
channel is only ever written by the loop. Log lines never back up on it
without bound: past ``MAX_QUEUED_LOG_BYTES`` queued they are dropped and
counted, and a ``log: dropped N lines`` line follows once it drains.

The node store (``[node] store``) is opened here, after the fork, with
its group committer; if it cannot be opened the worker runs anyway, says
why at error, and kv calls get UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import uvloop

from rusmd.abi import ErrorCode, ExitReason
from rusmd.actors.table import ActorTable
from rusmd.channel import (
    Answer,
    Channel,
    ChannelClosed,
    ComponentImage,
    Components,
    Heartbeat,
    LeaseRequest,
    Loaded,
    Log,
    MeshPeer,
    Message,
    NameReply,
    Names,
    PidLease,
    Query,
    Ready,
    Sig,
    Stop,
    WorkerDown,
)
from rusmd.config.environment import load_environment
from rusmd.config.model import Capability, LogLevel
from rusmd.errors import EX_NOSUCH, EX_REFUSED, EX_UNAVAILABLE, EX_USAGE, SpawnError
from rusmd.log import RUNTIME_SOURCE, Logger, LogRecord
from rusmd.serving.server import Server
from rusmd.store.committer import GroupCommitter
from rusmd.store.kv import KvStore
from rusmd.wasm.host import WasmHost
from rusmd.worker.boot import WorkerBoot
from rusmd.worker.heap import HeapTrimmer, glibc_trim
from rusmd.worker.kv_queries import QueryError, run_kv
from rusmd.worker.mesh import Mesh, send_on_loop
from rusmd.worker.meters import worker_meters

# How often a worker proves its loop turns over; the main process allows
# several missed beats before it acts.
HEARTBEAT_INTERVAL_S = 1.0
# A drain ordered by SIGTERM alone (not by main) gets this long.
DEFAULT_DRAIN_S = 10.0
# Bytes queued on the channel to main past which log lines are dropped (and
# counted) instead of queued: a main process that reads slowly must not
# make a worker buffer its log without bound; the loop never waits for it.
MAX_QUEUED_LOG_BYTES = 1 << 20


class WorkerRuntime:
    """A worker's state and loop callbacks."""

    def __init__(self, boot: WorkerBoot) -> None:
        self.boot = boot
        self.slot = boot.slot
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.channel = Channel(boot.channel)
        self.done: asyncio.Future[int] = self.loop.create_future()
        self._draining = False
        level = boot.manifest.log.level if boot.manifest else LogLevel.OFF
        self.loop_thread = threading.get_ident()
        self.log = Logger(level, self._ship_log_any_thread, source="rusm")
        # Log lines dropped since the last report (the channel to main was full).
        self.logs_dropped = 0
        self.host: WasmHost | None = None
        self.heap = HeapTrimmer(glibc_trim())
        self.mesh = Mesh(
            self.slot,
            self.loop,
            schedule_flush=self._call_soon,
            # The table is made next: it sends through the mesh.
            deliver=self._deliver_signals,
            undeliverable=self._undeliverable,
            lost=lambda text: self.log.error(f"worker {self.slot}: {text}"),
        )
        self.actors = ActorTable(
            self.slot,
            remote=self.mesh.queue,
            remote_backlogged=self.mesh.backlogged,
            to_main=self._send_main_any_thread,
            call_soon=self._call_soon,
            call_later=self._call_later,
        )
        if boot.manifest is not None:
            environment = load_environment(Path(boot.manifest.app_dir))
            self.host = WasmHost(
                boot.manifest,
                boot.slot,
                self.log,
                environment,
                request_lease=self._request_lease,
                actors=self.actors,
                on_watched_exit=self._send_main_any_thread,
                loop=self.loop,
            )
            self.host.add_lease(*boot.lease)
            if boot.manifest.node.store is not None:
                self._open_store(self.host, boot.manifest.node.store)
            if boot.images is not None:
                self.host.load(boot.images)
        self.server: Server | None = None
        if self.host is not None and boot.manifest is not None and boot.manifest.serve:
            self.server = Server(
                boot.manifest.serve, boot.listeners, self.host, self.log, self.loop
            )

    def _open_store(self, host: WasmHost, path: str) -> None:
        try:
            host.store = KvStore(path)
        except (lmdb.Error, OSError) as exc:
            host.store_error = f"cannot open {path}: {exc}"
            self.log.error(f"worker {self.slot}: store {host.store_error}")
            return
        host.committer = GroupCommitter(host.store, self.log)
        if host.store.stale_readers_cleared:
            self.log.info(
                f"store {path}: cleared {host.store.stale_readers_cleared} stale reader slot(s)"
            )

    def run(self) -> int:
        """Run until drained; return the exit code."""
        self.loop.add_reader(self.channel.fileno(), self._on_main)
        self.loop.add_signal_handler(signal.SIGTERM, self.begin_stop, DEFAULT_DRAIN_S)
        for slot, sock in self.boot.mesh.items():
            self.mesh.add_peer(slot, sock, os.getpid())
        if self.server is not None:
            self.loop.run_until_complete(self.server.start())
        loaded = self.host is None or self.host.loaded
        self._send_main(Ready(slot=self.slot, pid=os.getpid(), loaded=loaded))
        self.loop.call_soon(self._heartbeat)
        try:
            return self.loop.run_until_complete(self.done)
        finally:
            self._close()

    def begin_stop(self, timeout_s: float) -> None:
        """Drain: stop taking work, let in-flight work finish, then exit 0."""
        if self.done.done() or self._draining:
            return
        self._draining = True
        self.log.debug(f"worker {self.slot} draining (up to {timeout_s:g}s)")
        waiting = asyncio.ensure_future(self._drain(timeout_s), loop=self.loop)
        waiting.add_done_callback(self._drained)

    async def _drain(self, timeout_s: float) -> None:
        """Listeners first (in-flight requests finish), then the processes."""
        deadline = self.loop.time() + timeout_s
        if self.server is not None:
            await self.server.drain(timeout_s)
        if self.host is None:
            return
        if not self.host.processes:
            self.host.shutdown(0)
            return
        # Processes end with reason shutdown; the loop keeps turning (logs,
        # heartbeats) while a thread waits for them.
        left = max(0.0, deadline - self.loop.time())
        await self.loop.run_in_executor(None, self.host.shutdown, left)

    def _drained(self, _waiting: object) -> None:
        if not self.done.done():
            self.done.set_result(0)

    def _heartbeat(self) -> None:
        if self.done.done():
            return
        processes = len(self.host.processes) if self.host else 0
        if self.host is not None:
            # Once a burst of processes is over, its heap pages go back.
            self.heap.check(sum(self.host.stats()["exits"].values()), processes)
            self.host.log_held_exits()
        self._send_main(Heartbeat(slot=self.slot, peers=self.mesh.verified, processes=processes))
        self.loop.call_later(HEARTBEAT_INTERVAL_S, self._heartbeat)

    def _on_main(self) -> None:
        try:
            messages = self.channel.read_ready()
        except ChannelClosed:
            # Main is gone or broke the protocol: nothing left to work for.
            self._forget(self.channel)
            if not self.done.done():
                self.done.set_result(0)
            return
        for message in messages:
            self._handle_main(message)

    def _handle_main(self, message: Message) -> None:
        if isinstance(message, Stop):
            self.begin_stop(message.timeout_s)
        elif isinstance(message, MeshPeer):
            fd = self.channel.take_fd()
            self.mesh.add_peer(message.slot, socket.socket(fileno=fd), os.getpid())
        elif isinstance(message, Components) and self.host is not None:
            self.host.load(message.images)
            if self.server is not None:
                self.server.components_loaded()  # requests that waited for them run now
            self._send_main(Loaded(slot=self.slot))
        elif isinstance(message, PidLease) and self.host is not None:
            self.host.add_lease(message.start, message.end)
        elif isinstance(message, Query):
            try:
                answer = self._answer(message)
            except Exception as exc:  # a host bug must not cost main its answer
                self.log.error(f"worker {self.slot}: query {message.op} failed: {exc!r}")
                answer = Answer(
                    id=message.id, ok=False, error=f"worker error: {exc}", code=EX_REFUSED
                )
            if answer is not None:  # None: answered later, from a thread
                self._send_main(answer)
        elif isinstance(message, NameReply):
            self.actors.name_reply(message)
        elif isinstance(message, Names):
            self.actors.names_update(message)
        elif isinstance(message, WorkerDown):
            self.actors.worker_down(message.slot, message.reason)

    def _answer(self, query: Query) -> Answer | None:
        """Run one control query against the wasm host."""
        host = self.host
        if host is None:
            return Answer(id=query.id, ok=False, error="this worker hosts no wasm", code=EX_REFUSED)
        args: dict[str, Any] = query.args
        if query.op == "spawn":
            try:
                pid = host.spawn(str(args.get("component", "")), watched=bool(args.get("resident")))
            except SpawnError as exc:
                code = EX_NOSUCH if exc.code is ErrorCode.NOTFOUND else EX_REFUSED
                return Answer(id=query.id, ok=False, error=str(exc), code=code)
            name = str(args.get("component"))
            return Answer(
                id=query.id,
                ok=True,
                result={
                    "pid": pid,
                    "component": name,
                    "label": f"{name}#{pid}",
                    "worker": self.slot,
                },
            )
        if query.op == "spawn_module":
            return self._spawn_module(host, query)
        if query.op == "list":
            return Answer(id=query.id, ok=True, result={"processes": host.list()})
        if query.op in ("info", "kill", "send"):
            pid = int(args.get("pid", -1))
            process = host.processes.get(pid)
            wanted = str(args.get("component") or "")
            if process is None or (wanted and process.component.name != wanted):
                return Answer(id=query.id, ok=False, error=_no_process(args), code=EX_NOSUCH)
            if query.op == "info":
                return Answer(id=query.id, ok=True, result={"process": host.info(pid) or {}})
            if query.op == "send":
                data = str(args.get("text", "")).encode()
                code = self.actors.send(0, pid, data)
                if code == ErrorCode.LIMIT:
                    return Answer(
                        id=query.id,
                        ok=False,
                        error=f"{process.label}: mailbox full, message dropped",
                        code=EX_REFUSED,
                    )
                return Answer(id=query.id, ok=True, result={"sent": pid, "label": process.label})
            host.kill(pid, ExitReason.KILLED, "killed by the operator")
            return Answer(id=query.id, ok=True, result={"killed": pid, "label": process.label})
        if query.op == "meters":
            return Answer(
                id=query.id,
                ok=True,
                result=worker_meters(self.slot, host, self.actors, self.server, self.mesh),
            )
        if query.op == "stats":
            stats = host.stats()
            if host.store is not None:
                stats["store"] = host.store.stats()
            elif host.store_error:
                stats["store"] = {"error": host.store_error}
            return Answer(id=query.id, ok=True, result=stats)
        if query.op == "kv":
            if host.store is None or host.committer is None:
                why = host.store_error or "no store configured ([node] store)"
                return Answer(id=query.id, ok=False, error=why, code=EX_UNAVAILABLE)
            store, committer = host.store, host.committer
            threading.Thread(
                target=self._kv_query, args=(query, store, committer), name="kv-query"
            ).start()
            return None
        return Answer(id=query.id, ok=False, error=f"unknown query {query.op!r}", code=EX_REFUSED)

    def _spawn_module(self, host: WasmHost, query: Query) -> Answer:
        """``rusmctl spawn --module``: main compiled the module; run it here."""
        args: dict[str, Any] = query.args
        name = str(args["name"])
        try:
            pid = host.spawn_module(
                name,
                msgspec.convert(args["image"], ComponentImage),
                profile=msgspec.convert(args["capability"], Capability),
                entry=str(args["entry"]),
                entry_args=[(str(kind), value) for kind, value in args["arguments"]],
                inbox=[bytes(data) for data in args["inbox"]],
            )
        except SpawnError as exc:
            code = EX_USAGE if exc.code is ErrorCode.INVALID else EX_REFUSED
            return Answer(id=query.id, ok=False, error=str(exc), code=code)
        result = {"pid": pid, "component": name, "label": f"{name}#{pid}", "worker": self.slot}
        return Answer(id=query.id, ok=True, result=result)

    def _kv_query(self, query: Query, store: KvStore, committer: GroupCommitter) -> None:
        try:
            answer = Answer(id=query.id, ok=True, result=run_kv(store, committer, query.args))
        except QueryError as exc:
            answer = Answer(id=query.id, ok=False, error=str(exc), code=exc.code)
        except Exception as exc:  # a bug must not cost main its answer
            self.log.error(f"worker {self.slot}: kv query failed: {exc!r}")
            answer = Answer(id=query.id, ok=False, error=f"worker error: {exc}", code=EX_REFUSED)
        self._send_main_any_thread(answer)

    def _deliver_signals(self, sigs: list[Sig]) -> None:
        self.actors.deliver_batch(sigs)

    def _undeliverable(self, sig: Sig) -> None:
        self.actors.undeliverable(sig)

    def _call_soon(self, job: Any, *args: Any) -> None:
        """Run ``job`` on the loop thread, later (any thread)."""
        if self.loop.is_closed():
            return
        if threading.get_ident() == self.loop_thread:
            self.loop.call_soon(job, *args)
        else:
            self.loop.call_soon_threadsafe(job, *args)

    def _call_later(self, delay_s: float, job: Any) -> None:
        """Run ``job`` on the loop thread after ``delay_s`` (any thread)."""
        if threading.get_ident() == self.loop_thread:
            self.loop.call_later(delay_s, job)
        else:
            self._call_soon(self.loop.call_later, delay_s, job)

    def _send_main_any_thread(self, message: Message) -> None:
        if threading.get_ident() == self.loop_thread:
            self._send_main(message)
        else:
            self._call_soon(self._send_main, message)

    def _forget(self, channel: Channel) -> None:
        if not channel.closed:
            self.loop.remove_reader(channel.fileno())
            self.loop.remove_writer(channel.fileno())
            channel.close()

    def _send_main(self, message: Message) -> None:
        self._send(self.channel, message)

    def _send(self, channel: Channel, message: Message) -> None:
        drained = self._main_drained if channel is self.channel else None
        send_on_loop(self.loop, channel, message, drained=drained)

    def _main_drained(self) -> None:
        """The channel to main took everything queued: say what logs were dropped."""
        if self.logs_dropped:
            self._ship_drop_count()

    def _ship_log(self, record: LogRecord) -> None:
        if self.channel.queued_bytes > MAX_QUEUED_LOG_BYTES:
            self.logs_dropped += 1
            return
        if self.logs_dropped:
            self._ship_drop_count()
        self._send_main(Log(record=record))

    def _ship_drop_count(self) -> None:
        """Main caught up after this worker dropped lines: one line says how many."""
        count, self.logs_dropped = self.logs_dropped, 0
        text = f"log: dropped {count} lines: worker {self.slot}'s channel to main was full"
        record = LogRecord(time.time(), RUNTIME_SOURCE, LogLevel.WARN.value, text)
        self._send_main(Log(record=record))

    def _ship_log_any_thread(self, record: LogRecord) -> None:
        if threading.get_ident() == self.loop_thread:
            self._ship_log(record)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._ship_log, record)

    def _request_lease(self) -> None:
        message = LeaseRequest(slot=self.slot)
        if threading.get_ident() == self.loop_thread:
            self._send_main(message)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._send_main, message)

    def _close(self) -> None:
        if self.host is not None and self.host.committer is not None:
            # Writes already queued are committed; the environment itself is
            # left to the exit (a guest thread may still be inside a read).
            self.host.committer.close()
        self.mesh.close()
        if not self.channel.closed:
            try:
                self.channel.sock.setblocking(True)
                self.channel.write_ready()
            except (ChannelClosed, OSError):
                pass
            self.channel.close()
        self.loop.close()


def _no_process(args: dict[str, Any]) -> str:
    if args.get("component"):
        return f"no process {args['component']}#{args.get('pid')}"
    return f"no process with pid {args.get('pid')}"
