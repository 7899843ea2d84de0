"""Serving: HTTP, SSE and WebSocket listeners on a worker's loop.

Runs in: worker. The route table they match on is the manifest's
(``rusmd.config.routes``).
"""
