"""The exchange: what a handler reads, how its response is validated and framed.

Runs in: tests (pure logic: the sink is a list, no socket, no wasm).
"""

from __future__ import annotations

import re

import pytest

from rusmd.abi import RESPONSE_HOLD_BYTES, ErrorCode, RequestField
from rusmd.config.model import Protocol
from rusmd.wasm.exchange import (
    Exchange,
    HeaderError,
    Request,
    parse_header_block,
)


class ListSink:
    """Collects what the exchange writes."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    @property
    def wire(self) -> bytes:
        return b"".join(self.sent)


def request(**changes: object) -> Request:
    fields: dict[str, object] = {
        "method": "GET",
        "path": "/users/7",
        "query": "q=caf%C3%A9&a=1&a=2&empty=",
        "headers": [(b"host", b"x"), (b"accept", b"a"), (b"accept", b"b")],
        "body": b"payload",
        "params": {"id": "7", "*": "a/b"},
    }
    fields.update(changes)
    return Request(**fields)  # type: ignore[arg-type]


def exchange(sink: ListSink, **options: object) -> Exchange:
    return Exchange(
        request(),
        sink,
        options.pop("mode", Protocol.HTTP),  # type: ignore[arg-type]
        inline=True,
        call_soon=lambda *a: None,
        **options,  # type: ignore[arg-type]
    )


def split(wire: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = wire.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return lines[0], headers, body


@pytest.mark.parametrize(
    ("field", "key", "expected"),
    [
        (RequestField.METHOD, b"", b"GET"),
        (RequestField.PATH, b"", b"/users/7"),
        (RequestField.QUERY, b"", b"q=caf%C3%A9&a=1&a=2&empty="),
        (RequestField.PARAM, b"id", b"7"),
        (RequestField.PARAM, b"*", b"a/b"),
        (RequestField.HEADER, b"ACCEPT", b"a, b"),
        (RequestField.HEADERS, b"", b"host: x\naccept: a\naccept: b\n"),
        (RequestField.BODY, b"", b"payload"),
        (RequestField.QUERY_PARAM, b"q", "café".encode()),
        (RequestField.QUERY_PARAM, b"a", b"1"),
        (RequestField.QUERY_PARAM, b"empty", b""),
    ],
)
def test_request_field_reads_what_the_client_sent(
    field: RequestField, key: bytes, expected: bytes
) -> None:
    assert request().field(field, key) == expected


@pytest.mark.parametrize(
    ("field", "key", "code"),
    [
        (RequestField.PARAM, b"nope", ErrorCode.NOTFOUND),
        (RequestField.HEADER, b"x-missing", ErrorCode.NOTFOUND),
        (RequestField.QUERY_PARAM, b"nope", ErrorCode.NOTFOUND),
        (99, b"", ErrorCode.INVALID),
    ],
)
def test_request_field_missing_or_unknown_is_an_error_code(
    field: int, key: bytes, code: ErrorCode
) -> None:
    assert request().field(field, key) == code


def test_response_finished_before_any_flush_goes_out_with_content_length() -> None:
    sink = ListSink()
    ex = exchange(sink)
    assert ex.respond(201, b"X-Thing: yes\nContent-Type: application/json", b'{"a":') == 0
    assert ex.write(b"1}") == 0
    assert sink.sent == []  # held until the handler returns
    assert ex.complete()
    status, headers, body = split(sink.wire)
    assert status == "HTTP/1.1 201 Created"
    assert headers["X-Thing"] == "yes"
    assert headers["Content-Type"] == "application/json"
    assert "content-type" not in headers  # no default when the guest set one
    assert headers["content-length"] == "7"
    assert body == b'{"a":1}'


def test_response_over_the_hold_size_streams_chunked_and_ends_with_a_zero_chunk() -> None:
    sink = ListSink()
    ex = exchange(sink)
    piece = b"x" * 1000
    for _ in range(RESPONSE_HOLD_BYTES // 1000 + 2):
        assert ex.write(piece) == 0
    assert sink.sent, "passing the hold size sends at once"
    assert ex.complete()
    _status, headers, body = split(sink.wire)
    assert headers["transfer-encoding"] == "chunked"
    assert "content-length" not in headers
    assert body.endswith(b"0\r\n\r\n")
    decoded = b"".join(
        chunk for chunk in re.findall(rb"[0-9a-f]+\r\n(.*?)\r\n", body, re.DOTALL) if chunk
    )
    assert decoded == piece * (RESPONSE_HOLD_BYTES // 1000 + 2)


def test_write_without_respond_is_an_implicit_200_with_a_default_type() -> None:
    sink = ListSink()
    ex = exchange(sink)
    ex.write(b"hi")
    ex.complete()
    status, headers, body = split(sink.wire)
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert body == b"hi"


def test_handler_that_never_answers_reports_no_response() -> None:
    sink = ListSink()
    assert not exchange(sink).complete()
    assert sink.sent == []


def test_head_request_counts_the_body_but_sends_none() -> None:
    sink = ListSink()
    ex = exchange(sink, head_only=True)
    ex.respond(200, b"", b"12345")
    ex.complete()
    _status, headers, body = split(sink.wire)
    assert headers["content-length"] == "5"
    assert body == b""


@pytest.mark.parametrize("status", [0, 100, 199, 600, -1])
def test_respond_refuses_a_status_outside_200_599(status: int) -> None:
    ex = exchange(ListSink())
    assert ex.respond(status, b"", b"") == ErrorCode.INVALID
    assert "200-599" in ex.problem


def test_respond_twice_is_exists() -> None:
    ex = exchange(ListSink())
    assert ex.respond(200, b"", b"") == 0
    assert ex.respond(200, b"", b"") == ErrorCode.EXISTS


def test_respond_after_the_client_left_is_closed() -> None:
    ex = exchange(ListSink())
    ex.closed = True
    assert ex.respond(200, b"", b"") == ErrorCode.CLOSED
    assert ex.write(b"x") == ErrorCode.CLOSED


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        (b"X-Bad: a\rb", "not 'Name: value'"),
        (b"X-Bad: a\x00b", "not 'Name: value'"),
        (b"Bad Name: v", "not 'Name: value'"),
        (b"no colon here", "not 'Name: value'"),
        (b"Content-Length: 5", "content-length is set by the host"),
        (b"Transfer-Encoding: chunked", "transfer-encoding is set by the host"),
        (b"connection: keep-alive", "connection is set by the host"),
        (b"Upgrade: h2c", "upgrade is set by the host"),
    ],
)
def test_header_block_refuses_smuggling_and_host_owned_headers(block: bytes, problem: str) -> None:
    with pytest.raises(HeaderError, match=problem):
        parse_header_block(b"X-Ok: 1\n" + block)


def test_header_block_accepts_crlf_lines_blank_lines_and_trims_values() -> None:
    wire, has_type = parse_header_block(b"X-A:  1 \r\n\r\n\nContent-Type: text/html\r\n")
    assert wire == b"X-A: 1\r\nContent-Type: text/html\r\n"
    assert has_type


def test_sse_events_split_data_lines_and_the_head_goes_first() -> None:
    sink = ListSink()
    ex = exchange(sink, mode=Protocol.SSE)
    assert ex.sse_event(b"tick", b"a\nb") == 0
    assert ex.sse_event(b"", b"c") == 0
    assert ex.complete()
    status, headers, body = split(sink.wire)
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "text/event-stream"
    assert headers["cache-control"] == "no-cache"
    events = b"".join(re.findall(rb"[0-9a-f]+\r\n(.*?)\r\n", body, re.DOTALL))
    assert events == b"event: tick\ndata: a\ndata: b\n\ndata: c\n\n"
    assert body.endswith(b"0\r\n\r\n")


@pytest.mark.parametrize(
    ("name", "data", "event"),
    [
        (b"", b"0123456789abcdef", b"data: 0123456789abcdef\n\n"),
        (b"", b"", b"data: \n\n"),
        (b"tick", b"1", b"event: tick\ndata: 1\n\n"),
        (b"", b"a\r\nb\nc", b"data: a\ndata: b\ndata: c\n\n"),
        (b"", b"a\n", b"data: a\ndata: \n\n"),
        (b"x", b"\r\n\r\n", b"event: x\ndata: \ndata: \ndata: \n\n"),
    ],
)
def test_sse_event_is_one_chunk_with_a_data_line_per_line_of_its_data(
    name: bytes, data: bytes, event: bytes
) -> None:
    sink = ListSink()
    ex = exchange(sink, mode=Protocol.SSE)
    assert ex.sse_event(b"", b"first") == 0  # the head goes out with the first event
    assert ex.sse_event(name, data) == 0
    assert sink.sent[-1] == b"%x\r\n%b\r\n" % (len(event), event)


def test_sse_event_name_with_a_newline_is_invalid() -> None:
    ex = exchange(ListSink(), mode=Protocol.SSE)
    assert ex.sse_event(b"a\nb", b"x") == ErrorCode.INVALID


def test_sse_flush_before_any_event_sends_the_event_stream_head() -> None:
    sink = ListSink()
    ex = exchange(sink, mode=Protocol.SSE)
    ex.flush()
    assert b"content-type: text/event-stream" in sink.wire
