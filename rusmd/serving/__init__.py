"""Serving: listeners and the per-listener route table.

Runs in: worker (the route table is pure logic and also used by ``rusmd check``
in the main process).
"""
