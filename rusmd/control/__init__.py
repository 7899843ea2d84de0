"""Control: the unix socket ``rusmctl`` talks to.

Runs in: main (``server``); any (``protocol``, shared with rusmctl). The
command handlers need the main process and live beside it in
``rusmd.main.commands``.

- ``protocol``  frames and the fixed command table (stdlib only).
- ``server``    the socket: accept, SO_PEERCRED, frame caps, streaming.
"""
