"""The control protocol: frames in and out, the caps on size and nesting, the command table.

Runs in: any (the test process; pure byte handling, no daemon).
"""

from __future__ import annotations

import json
import struct

import pytest

from rusmd.control.protocol import (
    COMMANDS,
    MAX_FRAME_BYTES,
    MAX_NESTING_DEPTH,
    MAX_REPLY_BYTES,
    FrameReader,
    ProtocolError,
    encode_frame,
    nested_too_deep,
)


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_nested_too_deep_at_the_limit_is_fine_and_one_more_is_not() -> None:
    assert not nested_too_deep(nested(MAX_NESTING_DEPTH))
    assert nested_too_deep(nested(MAX_NESTING_DEPTH + 1))


def test_nested_too_deep_counts_objects_and_arrays_alike() -> None:
    deep = b'{"a":' * MAX_NESTING_DEPTH + b"[1]" + b"}" * MAX_NESTING_DEPTH
    assert nested_too_deep(deep)
    assert not nested_too_deep(deep[5:-1])


def test_nested_too_deep_many_shallow_siblings_are_fine() -> None:
    assert not nested_too_deep(b"[" + b"[[1],{}]," * 10_000 + b"[]]")


@pytest.mark.parametrize(
    "text",
    ["[" * 1000, "]" * 1000, '\\"[[[[' * 100, '"\\\\"' + "{" * 100],
    ids=["open", "close", "escaped-quotes", "escaped-backslash"],
)
def test_nested_too_deep_ignores_brackets_inside_strings(text: str) -> None:
    document = json.dumps({"command": "send", "args": {"text": text}}).encode()
    assert not nested_too_deep(document)
    assert json.loads(document)["args"]["text"] == text


def test_nested_too_deep_unbalanced_brackets_count_as_too_deep() -> None:
    assert nested_too_deep(b"[" * 100_000)
    assert nested_too_deep(b"[" + b"[]" * 100)


def test_frame_reader_deep_frame_raises_protocol_error_not_recursion_error() -> None:
    reader = FrameReader()
    with pytest.raises(ProtocolError, match=f"deeper than {MAX_NESTING_DEPTH} levels"):
        reader.feed(frame(nested(100_000)))


def test_frame_reader_request_at_the_limit_decodes() -> None:
    depth = MAX_NESTING_DEPTH - 2
    request = {"command": "status", "args": {"x": json.loads(nested(depth))}}
    assert FrameReader().feed(encode_frame(request)) == [request]


# ── framing ─────────────────────────────────────────────────────────────


def test_encode_frame_round_trips_through_the_reader() -> None:
    reply = {"ok": True, "result": {"text": "héllo ☃", "n": [1, 2.5, None, False]}}
    data = encode_frame(reply)
    assert struct.unpack(">I", data[:4])[0] == len(data) - 4
    assert FrameReader().feed(data) == [reply]


def test_frame_reader_a_frame_split_across_feeds_comes_out_once_whole() -> None:
    reader = FrameReader()
    data = encode_frame({"command": "status", "args": {}})
    # Inside the length prefix, at its end, inside the payload, then the rest.
    assert reader.feed(data[:2]) == []
    assert reader.feed(data[2:4]) == []
    assert reader.feed(data[4:9]) == []
    assert reader.feed(data[9:]) == [{"command": "status", "args": {}}]
    assert reader.feed(b"") == []


def test_frame_reader_several_frames_in_one_feed_in_order_and_a_partial_kept() -> None:
    reader = FrameReader()
    third = encode_frame({"n": 3})
    assert reader.feed(encode_frame({"n": 1}) + encode_frame({"n": 2}) + third[:6]) == [
        {"n": 1},
        {"n": 2},
    ]
    assert reader.feed(third[6:]) == [{"n": 3}]


def test_frame_reader_length_over_the_cap_is_refused_before_the_payload() -> None:
    with pytest.raises(ProtocolError, match=f"frame of {MAX_FRAME_BYTES + 1} bytes exceeds"):
        FrameReader().feed(struct.pack(">I", MAX_FRAME_BYTES + 1))


def test_frame_reader_length_at_the_cap_waits_for_its_payload() -> None:
    assert FrameReader().feed(struct.pack(">I", MAX_FRAME_BYTES) + b"{") == []


def test_encode_frame_over_the_cap_raises_protocol_error() -> None:
    with pytest.raises(ProtocolError, match=f"exceeds {MAX_FRAME_BYTES}"):
        encode_frame({"value": "x" * MAX_FRAME_BYTES})


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"{not json", "frame is not JSON"),
        (b"\xff\xfe{}", "frame is not JSON"),
        (b"", "frame is not JSON"),
        (b"[1, 2]", "frame is not a JSON object"),
        (b'"status"', "frame is not a JSON object"),
        (b"42", "frame is not a JSON object"),
        (b"null", "frame is not a JSON object"),
    ],
    ids=["garbled", "not-utf8", "empty", "array", "string", "number", "null"],
)
def test_frame_reader_a_frame_that_is_no_json_object_is_refused(payload: bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        FrameReader().feed(frame(payload))


def test_frame_reader_a_bad_frame_fails_the_whole_feed_it_came_in() -> None:
    # A good frame ahead of a bad one in the same feed: the feed raises, and
    # the server answers "bad frame" and closes without running either.
    with pytest.raises(ProtocolError):
        FrameReader().feed(encode_frame({"command": "stop", "args": {}}) + frame(b"[]"))


# ── the command table ───────────────────────────────────────────────────


def test_commands_are_keyed_by_their_own_names_and_each_has_help() -> None:
    for name, info in COMMANDS.items():
        assert info.name == name
        assert info.summary and "\n" not in info.summary
        for arg, help_text, _required in info.args:
            assert arg.isidentifier() and help_text, (name, arg)
    assert [name for name, info in COMMANDS.items() if info.streams] == ["logs"]


def test_a_reply_may_outgrow_a_request_frame_but_not_the_reply_cap() -> None:
    # A `list` of thousands of processes: larger than any request may be.
    reply = {"ok": True, "rows": ["x" * 1000] * (MAX_FRAME_BYTES // 1000 + 10)}
    frame = encode_frame(reply, MAX_REPLY_BYTES)
    assert FrameReader(MAX_REPLY_BYTES).feed(frame) == [reply]
    with pytest.raises(ProtocolError, match=str(MAX_FRAME_BYTES)):
        FrameReader().feed(frame)  # the daemon reading a client refuses it
    with pytest.raises(ProtocolError, match=str(MAX_FRAME_BYTES)):
        encode_frame(reply)
