"""The node's durable key-value store (LMDB).

Runs in: worker (guests' kv calls, ``rusmctl kv``) and the ``rusmd kv``
command on a stopped node; never the main process of the daemon.
"""
