"""Control: the unix socket ``rusmctl`` talks to.

Runs in: main (server, commands); any (``protocol``, shared with rusmctl).

- ``protocol``  frames and the fixed command table (stdlib only).
- ``server``    the socket: accept, SO_PEERCRED, frame caps, streaming.
- ``commands``  one handler per command; its docstring is its help.
"""
