"""The actor runtime: mailboxes, links, monitors, names, timers, supervisors.

Runs in: worker (``table`` and its parts, ``supervisor``) and any
(``signals``).

The modules, lowest first: each imports only modules listed before it
(``tests/unit/test_layers.py`` checks it, imports inside functions too).

- ``signals``      the signal ops between actors.
- ``records``      actors, envelopes, name claims, timers; a guest thread's wait.
- ``core``         the table's state, membership, signal routing, exits, links, monitors.
- ``messaging``    send, receive, call and reply, probes, timers.
- ``names``        this worker's replica of the node's registry, and name claims.
- ``table``        ``ActorTable``: the parts above as one class; what operators see.
- ``supervisor``   guest supervisors as host-native processes.
"""
