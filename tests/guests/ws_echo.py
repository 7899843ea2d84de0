"""The WebSocket echo guest of the memory tests, as WAT text.

Runs in: tests.

It echoes each message (``recv`` kind 5, FRAME) with its type until the
client's close (kind 6, CLOSED), from a buffer at 64 in a memory of
``pages`` pages. The fiber variant runs as a fiber on the worker's I/O
thread; the thread variant imports ``rusm.sleep`` (and naps 0 ms before
each echo) and WASI's ``poll_oneoff``, a call that blocks its thread
(unused), so it runs on a guest thread.
"""

from __future__ import annotations

_TEMPLATE = """
(module
  (import "rusm" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (import "rusm" "ws_send" (func $ws_send (param i32 i32 i32) (result i32)))
  {sleep_import}
  (memory (export "memory") {pages})
  (func (export "run")
    (local $n i32)
    (loop $serve
      (local.set $n (call $recv (i32.const 0) (i32.const 64) (i32.const 4096) (i32.const -1)))
      (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return)))
      (if (i32.eq (i32.load (i32.const 0)) (i32.const 6)) (then (return)))
      (if (i32.eq (i32.load (i32.const 0)) (i32.const 5))
        (then
          {nap}
          (drop (call $ws_send (i32.load (i32.const 4)) (i32.const 64) (local.get $n)))))
      (br $serve))))
"""


def ws_echo_wat(*, threaded: bool, pages: int = 1) -> str:
    """The echo module: on a guest thread (``threaded``) or as a fiber."""
    if threaded:
        return _TEMPLATE.format(
            sleep_import='(import "rusm" "sleep" (func $sleep (param i32) (result i32)))\n'
            '  (import "wasi_snapshot_preview1" "poll_oneoff"'
            " (func $poll (param i32 i32 i32 i32) (result i32)))",
            nap="(drop (call $sleep (i32.const 0)))",
            pages=pages,
        )
    return _TEMPLATE.format(sleep_import="", nap="", pages=pages)
