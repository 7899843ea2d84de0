"""The control protocol's frame reader: caps on size and nesting.

Runs in: any (the test process; pure byte handling, no daemon).
"""

from __future__ import annotations

import json
import struct

import pytest

from rusmd.control.protocol import (
    MAX_NESTING_DEPTH,
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
