"""A worker's listeners: accept, route, run the handler, answer, log, drain.

Runs in: worker, on its I/O thread (uvloop).

Every worker accepts on the listen sockets the main process bound (the
kernel hands each connection to one of them; ``acceptor`` takes many in
one turn of the loop and answers one past ``max-connections``). Per
request on an http listener the route table picks ``component#action``
and the wasm host runs the action in a fresh instance: inline on this
thread when the module imports nothing that may wait, else as a process
on a guest thread whose exit comes back here. An sse route always runs
as a process for the stream's life; a ws listener runs its component's
entry as one process per connection.

What the client sees when things go wrong:

=============================================  =========================
handler traps, runs out of memory, bad pointer  502
returns without a response                      502
CPU budget (max-cpu-ms) or timeout-s passed      504
max-connections reached, process limit reached  503 with Retry-After
no route / path matches but the method doesn't  404 / 405 with Allow
=============================================  =========================

Each answered request is one access log line at info:
``rusm http GET /users/7 → 200`` (``sse``/``ws`` for those listeners).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rusmd.abi import ErrorCode, ExitReason
from rusmd.config.model import Protocol, Serve
from rusmd.config.routes import Match, MethodNotAllowed, NotFound, Route, RouteTable
from rusmd.errors import SpawnError
from rusmd.log import Logger
from rusmd.meter import RequestMeter
from rusmd.serving.acceptor import Acceptor, TurnedAway
from rusmd.serving.http import HttpConnection, Reject, simple_response
from rusmd.serving.ws import WsConnection
from rusmd.wasm.exchange import Exchange, Request
from rusmd.wasm.process import ExitReport, LoadedComponent

if TYPE_CHECKING:
    from rusmd.wasm.host import WasmHost

# How often deadlines (header/body/idle timeouts) and SSE heartbeats are
# checked: a timeout fires up to this much late.
SWEEP_INTERVAL_S = 0.25
# Resolved (method, path) pairs each listener remembers: the route walk
# (split, percent-decode, trie) is skipped for repeated paths; the bound
# keeps a client sending endless distinct paths from growing it.
RESOLVED_CACHE_SIZE = 4096
# The action a routes-less http listener's ``name`` component serves.
SINGLE_ACTION = "fetch"
_SSE = Protocol.SSE
_clock = time.perf_counter


def _action_status(report: ExitReport, exchange: Exchange) -> tuple[int, str]:
    """The status for a handler that ended without a complete response."""
    if exchange.timed_out:
        return 504, "ran past the listener's timeout-s"
    if report.detail.startswith("cpu limit"):
        return 504, report.detail
    if report.reason == ExitReason.SHUTDOWN:
        return 503, "the worker is stopping"
    if report.reason == ExitReason.NORMAL:
        if exchange.problem:
            return 502, f"returned without a valid response ({exchange.problem})"
        return 502, "returned without a response"
    return 502, f"{report.reason}: {report.detail}" if report.detail else report.reason


class ListenerRuntime:
    """One ``[[serve]]`` listener in this worker."""

    def __init__(
        self,
        config: Serve,
        index: int,
        host: WasmHost,
        log: Logger,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.config = config
        self.index = index
        self.host = host
        # Held here: ``dispatch`` runs an inline request on it, no lookup through the host.
        self.inline = host.inline
        self.log = log
        self.loop = loop
        self.protocol = config.protocol
        self.mode = Protocol.SSE if config.protocol is Protocol.SSE else Protocol.HTTP
        self.http = self.mode is Protocol.HTTP
        self.single = config.name
        self.call_soon = loop.call_soon_threadsafe
        self.routes = RouteTable(
            Route(r.method, r.path, r.component, r.action) for r in config.routes
        )
        self.connections: set[Any] = set()
        # Connections past max-connections, answered 503 and closing cleanly.
        self.turned_away: set[TurnedAway] = set()
        self.draining = False
        self.acceptor: Acceptor | None = None
        self.budget_ms = int(config.timeout_s * 1000)
        self.retry = f"retry-after: {config.retry_after_s}\r\n".encode()
        self._unavailable: set[str] = set()
        self._cannot_run: set[str] = set()  # why an action could not start, logged once each
        self._resolved: dict[
            tuple[str, str], tuple[str, str, dict[str, str]] | MethodNotAllowed | NotFound
        ] = {}
        self._unflushed: list[HttpConnection | WsConnection] = []
        # What arrived before this worker's components (requests, handshakes):
        # run once they load, or at the listener's timeout-s; in arrival order.
        self._loading: dict[int, tuple[Callable[[], None], asyncio.TimerHandle]] = {}
        self._next_wait = 0
        # What the node endpoint's /metrics and dashboard count for this listener.
        self.meter = RequestMeter()

    def start(self, sock: Any) -> None:
        """Accept on the inherited listen socket."""
        factory: Callable[[], asyncio.Protocol]
        if self.protocol is Protocol.WS:
            factory = lambda: WsConnection(self)  # noqa: E731
        else:
            factory = lambda: HttpConnection(self)  # noqa: E731
        self.acceptor = Acceptor(self.loop, sock, factory, self.log.warn)
        self.acceptor.start()

    # ── requests ────────────────────────────────────────────────────────

    def dispatch(self, conn: HttpConnection, request: Request) -> None:
        """Serve one request of ``conn`` (it calls back ``conn.answered``)."""
        conn.dispatched_at = _clock()
        if self.single is None:
            method, path = request.method, request.path
            target = self._resolved.get((method, path)) or self._resolve(method, path)
            if not isinstance(target, tuple):
                self._unrouted(conn, request, target)
                return
            name, action, params = target
            if params:
                request.params = params
        else:
            name, action = self.single, SINGLE_ACTION
        component = self.host.components.get(name)
        if component is None or component.error:
            if component is None and not self.host.loaded:
                self.when_loaded(lambda: self._after_load(conn, request, name))
                return
            self._not_loaded(conn, request, name, component)
            return
        inline = self.http and component.inline
        exchange = Exchange(
            request, conn, self.mode, inline, self.call_soon, request.method == "HEAD"
        )
        if conn.closing:
            exchange.closing = True
        exchange.component = name
        exchange.budget_ms = self.budget_ms
        conn.current = exchange
        if inline:
            try:
                report = self.inline.serve(component, action, exchange)
            except SpawnError as exc:  # no pid for it (the next lease is late)
                self._not_started(conn, exchange, exc)
                return
            self.complete(conn, exchange, report)
            return
        self._spawn(conn, exchange, name, action)

    def _resolve(
        self, method: str, path: str
    ) -> tuple[str, str, dict[str, str]] | MethodNotAllowed | NotFound:
        """Walk the route table for a pair not in the cache, and cache it.

        A match is kept as (component, action, params), what ``dispatch``
        takes from it.
        """
        found = self.routes.resolve(method, path)
        target: tuple[str, str, dict[str, str]] | MethodNotAllowed | NotFound
        if isinstance(found, Match):
            target = (found.route.component, found.route.action, found.params)
        else:
            target = found
        if len(self._resolved) >= RESOLVED_CACHE_SIZE:
            self._resolved.clear()
        self._resolved[method, path] = target
        return target

    def _unrouted(
        self, conn: HttpConnection, request: Request, found: MethodNotAllowed | NotFound
    ) -> None:
        """404, or 405 with the methods the path allows."""
        if isinstance(found, MethodNotAllowed):
            allow = b"allow: " + ", ".join(found.allowed).encode() + b"\r\n"
            self._plain(conn, request, 405, "method not allowed", allow)
        else:
            self._plain(conn, request, 404, "not found")

    def _spawn(self, conn: HttpConnection, exchange: Exchange, name: str, action: str) -> None:
        def exited(report: ExitReport) -> None:
            self.loop.call_soon_threadsafe(self.complete, conn, exchange, report)

        try:
            exchange.pid = self.host.spawn(
                name, entry=action, exchange=exchange, on_exit=exited, quiet=True
            )
        except SpawnError as exc:
            self._not_started(conn, exchange, exc)
            return
        if self.mode is Protocol.HTTP:
            exchange.timer = self.loop.call_later(
                self.config.timeout_s, self._out_of_time, exchange
            )

    def _not_started(self, conn: HttpConnection, exchange: Exchange, exc: SpawnError) -> None:
        """The handler could not start (a limit, a component unavailable): 503."""
        conn.current = None
        self.log.warn(f"{self.protocol} {exchange.request.method} {exchange.request.path}: {exc}")
        extra = self.retry if exc.code in (ErrorCode.LIMIT, ErrorCode.UNAVAILABLE) else b""
        self._plain(conn, exchange.request, 503, "service unavailable", extra)

    def _out_of_time(self, exchange: Exchange) -> None:
        if not exchange.done:
            exchange.timed_out = True
            self.host.kill(exchange.pid, ExitReason.KILLED, "ran past the listener's timeout-s")

    def complete(self, conn: HttpConnection, exchange: Exchange, report: ExitReport) -> None:
        """The handler ended: finish the response, log it, serve the next."""
        if exchange.timer is not None:
            exchange.timer.cancel()
        request = exchange.request
        ended_cleanly = report.reason == ExitReason.NORMAL or (
            report.reason == ExitReason.SHUTDOWN and self.mode is _SSE and exchange.started
        )
        if ended_cleanly and exchange.complete():
            status = exchange.status
        elif exchange.started or exchange.closed:
            exchange.done = True
            status = exchange.status
            if not exchange.closed:
                conn.closing = True  # the head went out: all we can do is cut it short
                self.log.error(
                    f"{self._who(exchange)}: {request.method} {request.path} cut short "
                    f"({report.reason}{': ' + report.detail if report.detail else ''})"
                )
        else:
            exchange.done = True
            status, why = _action_status(report, exchange)
            if (
                report.reason == ExitReason.NORMAL or exchange.timed_out
            ):  # else its exit line said why
                self.log.error(
                    f"{self._who(exchange)}: {request.method} {request.path} → {status}: {why}"
                )
            elif not exchange.pid and report.detail not in self._cannot_run:
                # It never started (an action the module does not export), so
                # no exit line says why: once per cause, not per request.
                self._cannot_run.add(report.detail)
                self.log.error(f"{self.protocol} {request.method} {request.path} → {status}: {why}")
            extra = self.retry if status == 503 else b""
            conn.send(
                simple_response(
                    status,
                    _PHRASES[status],
                    close=conn.closing,
                    extra=extra,
                    head_only=exchange.head_only,
                )
            )
        self.meter.record(request.method, status, _clock() - conn.dispatched_at)
        if self.log.info_on:  # the access line, as ``access`` writes it
            self.log.info(f"{self.protocol} {request.method} {request.path} → {status}")
        conn.answered()

    def defer(self, conn: HttpConnection | WsConnection) -> None:
        """Write ``conn``'s held-back output once this loop iteration's callbacks are done.

        Writing each response as soon as it is made costs the client a
        wake-up per response (measured: ~10 µs of system time per request on
        a server this busy); writing the iteration's responses back to back
        costs one. A response waits at most for the other requests that
        arrived in the same read, each a handler call.
        """
        if not self._unflushed:
            self.loop.call_soon(self.flush_writes)
        self._unflushed.append(conn)

    def flush_writes(self) -> None:
        """Write what ``defer`` held back (the loop runs it once its callbacks are done)."""
        unflushed, self._unflushed = self._unflushed, []
        for conn in unflushed:
            conn.flush()

    def _who(self, exchange: Exchange) -> str:
        return f"{exchange.component}#{exchange.pid}"

    def _plain(
        self, conn: HttpConnection, request: Request, status: int, text: str, extra: bytes = b""
    ) -> None:
        conn.send(
            simple_response(
                status,
                text,
                close=conn.closing,
                extra=extra,
                head_only=request.method == "HEAD",
            )
        )
        self.meter.record(request.method, status, _clock() - conn.dispatched_at)
        self.access(request.method, request.path, status)
        conn.answered()

    def when_loaded(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the components are loaded, or at ``timeout-s`` if sooner.

        For what arrives in a worker's first second, before the main
        process's compiled components: a request, a WebSocket handshake.
        """
        token = self._next_wait
        self._next_wait += 1
        timer = self.loop.call_later(self.config.timeout_s, self._waited_out, token)
        self._loading[token] = (callback, timer)

    def _waited_out(self, token: int) -> None:
        entry = self._loading.pop(token, None)
        if entry is not None:
            entry[0]()

    def components_loaded(self) -> None:
        """The worker's components are loaded: run what waited for them, in arrival order."""
        loading, self._loading = self._loading, {}
        for callback, timer in loading.values():
            timer.cancel()
            callback()

    def _after_load(self, conn: HttpConnection, request: Request, name: str) -> None:
        """A request that waited for the components: serve it, or 503 if they never came."""
        if conn.transport is None or conn.transport.is_closing():
            return  # the client left while it waited
        if self.host.loaded:
            self.dispatch(conn, request)
        else:
            self._not_loaded(conn, request, name, None)

    def _not_loaded(
        self, conn: HttpConnection, request: Request, name: str, component: LoadedComponent | None
    ) -> None:
        why = component.error if component is not None else f"component {name} is still loading"
        if name not in self._unavailable:
            self._unavailable.add(name)
            self.log.error(f"{self.protocol} {request.method} {request.path}: {why}")
        self._plain(conn, request, 503, "service unavailable", self.retry)

    def access(self, method: str, path: str, status: int) -> None:
        """The access log line (info)."""
        if self.log.info_on:
            self.log.info(f"{self.protocol} {method} {path} → {status}")

    def refused(self, conn: HttpConnection, reject: Reject) -> None:
        """A malformed, oversized or slow request was refused (logged at info)."""
        if self.log.info_on:
            self.log.info(f"{self.protocol} refused → {reject.status} ({reject.why})")

    def overloaded(self, transport: Any) -> None:
        """A connection past max-connections (or during a drain): 503 and close.

        The 503 goes out at once; the close is clean (``TurnedAway``).
        """
        answer = simple_response(503, "service unavailable", close=True, extra=self.retry)
        TurnedAway(self.turned_away, time.monotonic()).take(transport, answer)
        if self.log.info_on:
            self.log.info(f"{self.protocol} connection → 503 (max-connections)")

    def client_left(self, exchange: Any) -> None:
        """The client of a running handler went away: stop the handler."""
        if exchange.pid and not exchange.done:
            self.host.kill(exchange.pid, ExitReason.SHUTDOWN, "client disconnected")

    # ── time and drain ──────────────────────────────────────────────────

    def sweep(self, now: float) -> None:
        """Deadlines and heartbeats."""
        for away in list(self.turned_away):
            away.expire(now)
        heartbeat = self.config.heartbeat_s
        for conn in list(self.connections):
            conn.expire(now)
            current = conn.current
            if (
                current is not None
                and self.mode is Protocol.SSE
                and now - current.last_write > heartbeat
            ):
                current.heartbeat()

    def drain(self) -> None:
        """Stop accepting; in-flight requests finish, idle connections close."""
        self.draining = True
        if self.acceptor is not None:
            self.acceptor.close()
        for conn in list(self.connections):
            conn.drain()


_PHRASES = {
    502: "bad gateway: the handler failed",
    503: "service unavailable",
    504: "gateway timeout: the handler ran out of time",
}


class Server:
    """Every listener of one worker."""

    def __init__(
        self,
        serve: tuple[Serve, ...],
        sockets: list[Any],
        host: WasmHost,
        log: Logger,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.loop = loop
        self.sockets = sockets
        self.listeners = [
            ListenerRuntime(config, index, host, log, loop) for index, config in enumerate(serve)
        ]
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        """Start accepting on every listener."""
        for listener, sock in zip(self.listeners, self.sockets, strict=False):
            listener.start(sock)
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        for listener in self.listeners:
            listener.sweep(now)
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def components_loaded(self) -> None:
        """The worker loaded its components: listeners serve what waited for them."""
        for listener in self.listeners:
            listener.components_loaded()

    def meters(self) -> list[dict[str, Any]]:
        """Each http and sse listener's request counts and durations, for ``meters``."""
        return [
            {
                "listener": listener.config.listen,
                "protocol": str(listener.protocol),
                "connections": len(listener.connections),
                **listener.meter.export(),
            }
            for listener in self.listeners
            if listener.protocol is not Protocol.WS  # a ws connection is no request
        ]

    def connections(self) -> int:
        """Open connections on every listener."""
        return sum(len(listener.connections) for listener in self.listeners)

    async def drain(self, timeout_s: float) -> None:
        """Drain every listener; return when all connections closed or at the timeout."""
        for listener in self.listeners:
            listener.drain()
        deadline = time.monotonic() + timeout_s
        while self.connections() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
