"""An asyncio client of the control socket: one request, one reply, a fresh connection each.

Runs in: node endpoint, on its event loop.

The endpoint asks the main process what ``rusmctl`` would (``status``,
``list``, ``logs``, ``stats``, ``profile``) over the same framed protocol
(``rusmd.control.protocol``). Each request has its own connection and a
deadline, so a main process that is busy or gone costs one failed
request, never a stuck endpoint.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rusmd.control.protocol import MAX_REPLY_BYTES, FrameReader, ProtocolError, encode_frame

# The main process answers every command within a second or so (a worker
# query waits at most its own timeout); past this the endpoint reports it
# unreachable rather than hang a page or the snapshot poller.
REQUEST_TIMEOUT_S = 5.0
# One read from the socket.
READ_BYTES = 1 << 16


class ControlUnavailable(Exception):
    """The control socket did not answer: the main process is busy, stopping or gone."""


class ControlRefused(Exception):
    """The main process answered with an error (``ok: false``).

    Attributes:
        code: The exit code rusmctl would end with.
    """

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class ControlClient:
    """Requests to the control socket at ``path``.

    Args:
        path: The control socket.
        timeout_s: Deadline of one request. Optional; defaults to
            ``REQUEST_TIMEOUT_S``.
    """

    def __init__(self, path: Path, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.path = path
        self.timeout_s = timeout_s

    async def request(self, command: str, **args: Any) -> dict[str, Any]:
        """Run ``command``; its ``result``.

        Raises:
            ControlUnavailable: No answer (no socket, a hang-up, the deadline).
            ControlRefused: The daemon refused the command.
        """
        try:
            reply = await asyncio.wait_for(self._exchange(command, args), self.timeout_s)
        except (OSError, EOFError, ProtocolError, TimeoutError) as exc:
            why = "no answer in time" if isinstance(exc, TimeoutError) else str(exc)
            raise ControlUnavailable(f"control socket {self.path}: {why}") from None
        if not reply.get("ok"):
            raise ControlRefused(str(reply.get("error", "refused")), int(reply.get("code", 1)))
        result: dict[str, Any] = reply.get("result") or {}
        return result

    async def _exchange(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(str(self.path))
        try:
            writer.write(encode_frame({"command": command, "args": args}))
            frames = FrameReader(MAX_REPLY_BYTES)
            while True:
                data = await reader.read(READ_BYTES)
                if not data:
                    raise EOFError("the daemon closed the connection")
                documents = frames.feed(data)
                if documents:
                    return documents[0]
        finally:
            writer.close()
