"""HTTP listeners on the real daemon: routing, fresh instances, failures, limits, drain.

Runs in: any (the test process; ``rusmd`` runs as a subprocess and every
request goes over a real loopback socket to a real wasm handler).

Most tests share one daemon (``served``): its listener has small limits
and short timeouts so the bad-request corpus and the slow clients are
quick, and nothing a test does to it outlives the test (every request
runs in a fresh instance). Tests that need their own configuration, a
single worker, or that stop or reload the daemon start their own. The
guests and the wire client are in ``httpkit``.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from tests.integration.conftest import App, Daemon, wait_for
from tests.integration.httpkit import (
    BIG_BODY,
    Response,
    Served,
    Truncated,
    Wire,
    attach,
    fetch,
    request_bytes,
    shared_daemon,
    write_http_app,
)

# The shared daemon's listener limits: small enough to cross cheaply.
MAX_URL_BYTES = 1024
MAX_HEADER_BYTES = 2048
MAX_HEADERS = 20
MAX_BODY_BYTES = 1024
LIMITS: dict[str, object] = {
    "max-url-bytes": MAX_URL_BYTES,
    "max-header-bytes": MAX_HEADER_BYTES,
    "max-headers": MAX_HEADERS,
    "max-body-bytes": MAX_BODY_BYTES,
    "header-timeout-s": 1,
    "body-timeout-s": 1,
    "idle-timeout-s": 2,
    "timeout-s": 1,
}
# Upper bound on waiting for something a timeout of 1-2 s should cause.
DEADLINE_S = 10.0
# A normal request, and what a drained or reloaded daemon may take.
SETTLE_S = 30.0
# Drain and reload clients pause up to this long between requests, so some
# of their connections are idle when the daemon closes them.
THINK_S = 0.03


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from shared_daemon(tmp_path_factory, limits=LIMITS)


@pytest.fixture
def served(request: pytest.FixtureRequest, shared: Served) -> Served:
    """The shared daemon; its log is attached to this test's report if it fails."""
    return attach(request, shared)


def worker_pids(daemon: Daemon) -> dict[int, int]:
    return {slot: row["pid"] for slot, row in daemon.workers().items()}


def log_texts(daemon: Daemon) -> list[str]:
    return [f"{r['source']} {r['level']} {r['text']}" for r in daemon.log_records()]


def has_line(daemon: Daemon, needle: str) -> Callable[[], list[str]]:
    return lambda: [line for line in log_texts(daemon) if needle in line]


# ── routing (the manifest's resolution table) ────────────────────────────


def test_route_literal_path_answers_200(served: Served) -> None:
    response = fetch(served.port, "GET", "/")

    assert (response.status, response.body) == (200, b"home")


def test_route_param_is_bound_percent_decoded(served: Served) -> None:
    assert fetch(served.port, "GET", "/users/7").body == b"7"
    assert fetch(served.port, "GET", "/users/caf%C3%A9").body == "café".encode()


def test_route_wildcard_binds_the_rest_of_the_path_as_star(served: Served) -> None:
    response = fetch(served.port, "GET", "/assets/css/site.css")

    assert (response.status, response.body) == (200, b"css/site.css")


def test_route_literal_beats_param_beats_wildcard_whatever_the_declaration_order(
    served: Served,
) -> None:
    # Declared "/files/*", then "/files/:id", then "/files/readme".
    assert fetch(served.port, "GET", "/files/readme").body == b"literal"
    assert fetch(served.port, "GET", "/files/notes").body == b"notes"
    assert fetch(served.port, "GET", "/files/a/b").body == b"a/b"


def test_route_unknown_path_gets_404(served: Served) -> None:
    assert fetch(served.port, "GET", "/nowhere").status == 404


def test_route_path_without_the_method_gets_405_listing_allowed_methods(served: Served) -> None:
    response = fetch(served.port, "POST", "/users/7", body=b"x")

    assert response.status == 405
    allowed = {m.strip() for m in (response.header("allow") or "").split(",")}
    assert {"GET", "DELETE"} <= allowed
    assert "POST" not in allowed


def test_route_head_on_a_get_route_gets_the_headers_and_no_body(served: Served) -> None:
    with Wire(served.port) as wire:
        wire.send(
            request_bytes("HEAD", "/users/7")
            + request_bytes("GET", "/users/8", ["Connection: close"])
        )
        head = wire.read_response(head_only=True)
        after = wire.read_response()

        assert (head.status, head.header("content-length")) == (200, "1")
        assert (after.status, after.body) == (200, b"8")  # no stray body bytes before it
        assert wire.rest() == b""


@pytest.mark.parametrize(
    "path", ["/nowhere", "/trap", "/big"], ids=["host_404", "host_502", "chunked_200"]
)
def test_route_head_answer_carries_no_body_bytes_whoever_makes_it(
    served: Served, path: str
) -> None:
    """A HEAD answered by the host (404, 502) or by a chunked stream has no body either.

    A stray byte would be read as the start of the next response on the connection.
    """
    with Wire(served.port) as wire:
        wire.send(
            request_bytes("HEAD", path) + request_bytes("GET", "/users/8", ["Connection: close"])
        )
        wire.read_response(head_only=True)
        after = wire.rest()

    assert after.startswith(b"HTTP/1.1 200 OK\r\n"), after[:80]
    assert after.endswith(b"\r\n\r\n8")


# ── a fresh instance per request ────────────────────────────────────────


def test_global_counter_is_1_on_every_request_over_keep_alive_and_fresh_connections(
    served: Served,
) -> None:
    with Wire(served.port) as wire:
        kept = [wire.request("GET", "/counter").body for _ in range(25)]
    fresh = [fetch(served.port, "GET", "/counter").body for _ in range(25)]

    assert kept + fresh == [b"1"] * 50


# ── handler failures ────────────────────────────────────────────────────


def test_trapping_route_gets_502_while_concurrent_requests_elsewhere_succeed(
    served: Served,
) -> None:
    before = worker_pids(served.daemon)
    statuses: list[int] = []
    errors: list[BaseException] = []

    def neighbour(n: int) -> None:
        try:
            with Wire(served.port) as wire:
                for i in range(15):
                    response = wire.request("GET", f"/users/{n}-{i}")
                    statuses.append(response.status)
                    assert response.body == f"{n}-{i}".encode()
        except BaseException as exc:  # reported below, with the statuses
            errors.append(exc)

    threads = [threading.Thread(target=neighbour, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    trapped = [fetch(served.port, "GET", "/trap").status for _ in range(10)]
    for thread in threads:
        thread.join(SETTLE_S)

    assert trapped == [502] * 10
    assert not errors, errors
    assert statuses == [200] * 60
    assert served.daemon.wait_for(
        has_line(served.daemon, "crashed (trap: wasm `unreachable`"),
        DEADLINE_S,
        "the trap's exit line",
    )
    assert worker_pids(served.daemon) == before


def test_infinite_loop_route_gets_504_from_its_cpu_budget(served: Served) -> None:
    before = worker_pids(served.daemon)

    response = fetch(served.port, "GET", "/spin")

    assert response.status == 504
    assert served.daemon.wait_for(
        has_line(served.daemon, "crashed (cpu limit: ran over its 200 ms budget)"),
        DEADLINE_S,
        "the spinner's cpu-limit exit",
    )
    assert fetch(served.port, "GET", "/").status == 200
    assert worker_pids(served.daemon) == before


def test_thread_handler_sleeping_past_timeout_s_gets_504(served: Served) -> None:
    before = worker_pids(served.daemon)

    response = fetch(served.port, "GET", "/oversleep")

    assert response.status == 504
    lines = served.daemon.wait_for(
        has_line(served.daemon, "→ 504: ran past the listener's timeout-s"),
        DEADLINE_S,
        "the timeout line",
    )
    assert "error slow#" in lines[-1]
    assert fetch(served.port, "GET", "/nap").body == b"napped"
    assert worker_pids(served.daemon) == before


# ── reading the request, writing the response ───────────────────────────


def inspected(response: Response) -> dict[str, str]:
    assert response.status == 200, response
    lines = response.body.decode().splitlines()
    return dict(line.split("=", 1) for line in lines)


def test_request_method_path_query_and_header_in_any_case_reach_the_handler(
    served: Served,
) -> None:
    response = fetch(served.port, "GET", "/inspect?q=a%20b&z=1", ["x-Test: hi there"])

    assert inspected(response) == {
        "method": "GET",
        "path": "/inspect",
        "query": "q=a%20b&z=1",
        "q": "a b",
        "header": "hi there",
        "body": "",
    }


def test_request_body_with_content_length_reaches_the_handler(served: Served) -> None:
    response = fetch(served.port, "POST", "/inspect", body=b"name=ada")

    assert inspected(response)["body"] == "name=ada"


def test_request_chunked_body_reaches_the_handler_dechunked(served: Served) -> None:
    with Wire(served.port) as wire:
        wire.send(
            request_bytes("POST", "/inspect", ["Transfer-Encoding: chunked"])
            + b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
        )
        response = wire.read_response()

    assert inspected(response)["body"] == "hello world"


def test_request_content_length_with_extra_whitespace_is_served(served: Served) -> None:
    with Wire(served.port) as wire:
        wire.send(b"POST /inspect HTTP/1.1\r\nHost: test\r\nContent-Length:  5 \r\n\r\nhello")
        response = wire.read_response()

    assert inspected(response)["body"] == "hello"


def test_response_headers_the_handler_sets_arrive(served: Served) -> None:
    response = fetch(served.port, "GET", "/custom")

    assert response.status == 201
    assert response.header("x-custom") == "yes"
    assert response.header("content-type") == "application/json"
    assert response.body == b"{}"


def test_response_over_16_kib_written_in_pieces_arrives_complete_and_chunked(
    served: Served,
) -> None:
    with Wire(served.port) as wire:
        response = wire.request("GET", "/big")
        after = wire.request("GET", "/users/9")

    assert response.status == 200
    assert response.chunked
    assert response.body == BIG_BODY
    assert after.body == b"9"


@pytest.mark.parametrize(
    ("path", "complaint"),
    [
        ("/bad-cr", "header line 2 'X-Evil: a\\rInjected: 1' is not 'Name: value'"),
        ("/bad-length", "header line 1: content-length is set by the host"),
    ],
    ids=["cr_in_value", "content_length"],
)
def test_response_header_the_host_refuses_gets_502_and_a_warn_naming_the_process(
    served: Served, path: str, complaint: str
) -> None:
    response = fetch(served.port, "GET", path)

    assert response.status == 502
    assert response.header("x-ok") is None
    assert response.header("injected") is None
    lines = served.daemon.wait_for(
        has_line(served.daemon, f"rusm.respond: {complaint}"), DEADLINE_S, "the warn line"
    )
    assert any(line.startswith("rusm warn api#") for line in lines), lines


# ── the bad-request corpus ──────────────────────────────────────────────

BAD_REQUESTS = {
    "url_too_long": (b"GET /" + b"a" * MAX_URL_BYTES + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    "headers_too_large": (
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * MAX_HEADER_BYTES + b"\r\n\r\n",
        431,
    ),
    "too_many_headers": (
        b"GET / HTTP/1.1\r\n"
        + b"".join(b"X-H%d: 1\r\n" % i for i in range(MAX_HEADERS + 1))
        + b"\r\n",
        431,
    ),
    "body_declared_too_large": (
        b"POST /inspect HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1),
        413,
    ),
    "chunked_body_too_large": (
        b"POST /inspect HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"200\r\n" + b"c" * 0x200 + b"\r\n") * 3
        + b"0\r\n\r\n",
        413,
    ),
    "content_length_plus": (
        b"POST /inspect HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello",
        400,
    ),
    "content_length_hex": (
        b"POST /inspect HTTP/1.1\r\nHost: t\r\nContent-Length: 0x5\r\n\r\nhello",
        400,
    ),
    "content_length_negative": (
        b"POST /inspect HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
        400,
    ),
    "content_length_list": (
        b"POST /inspect HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nhello",
        400,
    ),
    "content_length_and_chunked": (
        b"POST /inspect HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "bad_chunk_size": (
        b"POST /inspect HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
        400,
    ),
    "garbage_request_line": (b"\x16\x03\x01 hello there\r\n\r\n", 400),
    # RFC 9112: HTTP/1.1 needs exactly one Host; only 1.0 and 1.1 are spoken here.
    "http_1_1_without_host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "http_1_1_with_two_hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "http_2_0_request_line": (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    "http_0_9_request": (b"GET /\r\n\r\n", 505),
}


def test_upgrade_on_an_http_listener_is_ignored_answered_and_closed(served: Served) -> None:
    # RFC 9110 7.8: a server may ignore Upgrade; what follows is not HTTP/1.1,
    # so the connection closes after the answer.
    with Wire(served.port) as wire:
        wire.send(
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        response = wire.read_response()

        assert response.status == 200
        assert response.closes
        assert wire.closed_by_peer(DEADLINE_S)


@pytest.mark.parametrize(("data", "status"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_request_gets_its_status_and_the_connection_closed(
    served: Served, data: bytes, status: int
) -> None:
    with Wire(served.port) as wire:
        wire.send(data)
        response = wire.read_response()

        assert response.status == status
        assert response.closes
        assert wire.closed_by_peer(DEADLINE_S)
    assert fetch(served.port, "GET", "/").status == 200


def dribble(wire: Wire, data: bytes, interval_s: float) -> bytes:
    """Send ``data`` a byte at a time until the server answers or closes; what it sent."""
    wire.sock.settimeout(interval_s)
    deadline = time.monotonic() + DEADLINE_S
    for byte in data:
        try:
            wire.send(bytes([byte]))
            answer = wire.sock.recv(65536)
        except TimeoutError:
            assert time.monotonic() < deadline, "the slow client was never cut off"
            continue
        except (BrokenPipeError, ConnectionResetError):
            return b""
        return answer + wire.rest(DEADLINE_S)
    raise AssertionError("the slow client sent its whole head without being cut off")


# A head under every size limit, so only its pace can get it refused.
SLOW_HEAD = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"s" * 1000 + b"\r\n\r\n"


def test_client_dribbling_its_head_gets_408_and_is_closed(served: Served) -> None:
    with Wire(served.port) as wire:
        answer = dribble(wire, SLOW_HEAD, interval_s=0.2)

    assert answer == b"" or answer.startswith(b"HTTP/1.1 408 ")


def test_client_sending_part_of_its_body_gets_408_and_is_closed(served: Served) -> None:
    with Wire(served.port) as wire:
        wire.send(b"POST /inspect HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        response = wire.read_response()

        assert response.status == 408
        assert wire.closed_by_peer(DEADLINE_S)


def test_normal_client_is_served_while_slow_clients_hold_connections(served: Served) -> None:
    answers: list[bytes] = []

    def slow_client() -> None:
        with Wire(served.port) as wire:
            answers.append(dribble(wire, SLOW_HEAD, interval_s=0.2))

    slow = [threading.Thread(target=slow_client) for _ in range(6)]
    for thread in slow:
        thread.start()
    with Wire(served.port) as wire:
        statuses = []
        for i in range(20):
            statuses.append(wire.request("GET", f"/users/{i}").status)
            time.sleep(0.05)  # spread the requests over the slow clients' life
    for thread in slow:
        thread.join(SETTLE_S)

    assert statuses == [200] * 20
    assert len(answers) == 6
    assert all(a == b"" or a.startswith(b"HTTP/1.1 408 ") for a in answers), answers


# ── connections ─────────────────────────────────────────────────────────


def test_keep_alive_serves_several_requests_on_one_connection(served: Served) -> None:
    with Wire(served.port) as wire:
        bodies = [wire.request("GET", f"/users/{i}").body for i in range(5)]

    assert bodies == [b"0", b"1", b"2", b"3", b"4"]


def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    """The first one is slow (a guest thread) and the others inline: order still holds."""
    with Wire(served.port) as wire:
        wire.send(
            request_bytes("GET", "/nap")
            + request_bytes("GET", "/users/2")
            + request_bytes("GET", "/users/3")
        )
        bodies = [wire.read_response().body for _ in range(3)]

    assert bodies == [b"napped", b"2", b"3"]


def test_connection_close_request_is_answered_then_closed(served: Served) -> None:
    with Wire(served.port) as wire:
        response = wire.request("GET", "/users/1", ["Connection: close"])

        assert (response.status, response.body) == (200, b"1")
        assert response.closes
        assert wire.rest(DEADLINE_S) == b""


def test_idle_keep_alive_connection_is_closed_after_idle_timeout(served: Served) -> None:
    with Wire(served.port) as wire:
        assert wire.request("GET", "/").status == 200

        assert wire.rest(DEADLINE_S) == b""


def test_connection_past_max_connections_gets_503_with_retry_after(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    write_http_app(app, limits={"max-connections": 2, "retry-after-s": 7})
    start_daemon(cpus=2)  # profile light on 2 cores: one worker holds every connection
    first, second = Wire(app.serve_port), Wire(app.serve_port)
    try:
        assert first.request("GET", "/").status == 200
        assert second.request("GET", "/").status == 200

        with Wire(app.serve_port) as third:
            refused = third.read_response()
            assert (refused.status, refused.header("retry-after")) == (503, "7")
            assert third.closed_by_peer(DEADLINE_S)

        assert first.request("GET", "/users/1").body == b"1"
        second.close()

        def admitted() -> bool:
            try:
                with Wire(app.serve_port) as fourth:
                    return fourth.request("GET", "/").status == 200
            except (Truncated, OSError):
                return False  # still full: turned away

        wait_for(admitted, DEADLINE_S, "a connection slot to free up")
    finally:
        first.close()
        second.close()


# ── the access log ──────────────────────────────────────────────────────


def test_access_log_shows_each_request_at_info(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    write_http_app(app, log_level="info")
    daemon = start_daemon()

    fetch(app.serve_port, "GET", "/users/7")
    fetch(app.serve_port, "GET", "/nowhere")

    daemon.wait_for(has_line(daemon, "rusm info http GET /users/7 → 200"), DEADLINE_S, "the line")
    daemon.wait_for(has_line(daemon, "rusm info http GET /nowhere → 404"), DEADLINE_S, "the line")


# ── drain and reload under load ─────────────────────────────────────────


@dataclass
class Outcomes:
    """What keep-alive clients saw, request by request."""

    statuses: list[int] = field(default_factory=list)
    clean_closes: int = 0  # closed between requests, before any response byte
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, response: Response) -> None:
        with self.lock:
            self.statuses.append(response.status)
            if response.status != 503 and (response.status, response.body) != (200, b"napped"):
                self.failures.append(f"{response.status} {response.body!r}")

    def closed_cleanly(self) -> None:
        with self.lock:
            self.clean_closes += 1

    def fail(self, why: str) -> None:
        with self.lock:
            self.failures.append(why)


def keep_alive_client(
    port: int, outcomes: Outcomes, stop: threading.Event, *, reconnect: bool
) -> None:
    """Request ``/nap`` over keep-alive until ``stop`` (or, without ``reconnect``, a close).

    A connection the server closes between requests, before a byte of the
    response, is the one race HTTP/1.1 allows: the request is sent again
    on a fresh connection, as every client does. A reset after the request
    went out, a response cut short, or anything on a fresh connection but
    a whole response is a failure.
    """
    wire: Wire | None = None
    try:
        while not stop.is_set():
            if wire is None:
                try:
                    wire = Wire(port)
                except ConnectionRefusedError:
                    return  # the listener is gone: a stopped daemon
            try:
                wire.send(request_bytes("GET", "/nap"))
                response = wire.read_response()
            except (BrokenPipeError, ConnectionResetError, Truncated) as exc:
                if wire.consumed == 0 or not closed_before_the_request(exc):
                    outcomes.fail(f"request {wire.consumed + 1} on its connection: {exc!r}")
                    return
                outcomes.closed_cleanly()
                response = None
            if response is not None:
                outcomes.add(response)
            if response is None or response.closes:
                wire.close()
                wire = None
                if not reconnect:
                    return
            stop.wait(random.uniform(0, THINK_S))
    except Exception as exc:  # reported by the test, with the rest
        outcomes.fail(f"client error: {exc!r}")
    finally:
        if wire is not None:
            wire.close()


def closed_before_the_request(exc: Exception) -> bool:
    """The send failed (nothing went out), or a FIN came before any response byte."""
    if isinstance(exc, Truncated):
        return not exc.got and not exc.reset
    return True


def start_clients(
    port: int, count: int, *, reconnect: bool
) -> tuple[Outcomes, threading.Event, list[threading.Thread]]:
    outcomes, stop = Outcomes(), threading.Event()
    threads = [
        threading.Thread(
            target=keep_alive_client, args=(port, outcomes, stop), kwargs={"reconnect": reconnect}
        )
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(outcomes.statuses) >= 3 * count, SETTLE_S, "the clients to get going")
    return outcomes, stop, threads


def test_sigterm_under_load_answers_every_sent_request_and_exits_0(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    write_http_app(app)
    daemon = start_daemon()
    outcomes, stop, clients = start_clients(app.serve_port, 6, reconnect=False)

    daemon.signal(signal.SIGTERM)

    assert daemon.wait_exit(SETTLE_S) == 0
    for client in clients:
        client.join(SETTLE_S)
    stop.set()
    assert not any(client.is_alive() for client in clients)
    assert not outcomes.failures, outcomes.failures
    assert set(outcomes.statuses) <= {200, 503}


def test_reload_under_load_fails_no_request(app: App, start_daemon: Callable[..., Daemon]) -> None:
    write_http_app(app)
    daemon = start_daemon()
    before = set(worker_pids(daemon).values())
    outcomes, stop, clients = start_clients(app.serve_port, 6, reconnect=True)

    result = daemon.ctl("reload")
    assert result.returncode == 0, result.stderr

    def rolled() -> bool:
        status = daemon.status()
        pids = {w["pid"] for w in status["workers"]}
        return not pids & before and all(w["state"] == "ready" for w in status["workers"])

    daemon.wait_for(rolled, SETTLE_S, "every worker to be replaced")
    served_by_now = len(outcomes.statuses)
    wait_for(
        lambda: len(outcomes.statuses) > served_by_now + 12, SETTLE_S, "requests to the new workers"
    )
    stop.set()
    for client in clients:
        client.join(SETTLE_S)

    assert not outcomes.failures, outcomes.failures
    assert set(outcomes.statuses) == {200}
    # A draining worker answered every request sent to it (the last with
    # Connection: close): no client had to send one again elsewhere.
    assert outcomes.clean_closes == 0
