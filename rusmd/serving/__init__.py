"""Serving: HTTP, SSE and WebSocket listeners on a worker's loop.

Runs in: worker.

The modules, lowest first: each imports only modules listed before it.

- ``http``    HTTP/1.1 connections of http and sse listeners.
- ``ws``      WebSocket connections of ws listeners.
- ``server``  a worker's listeners: accept, route, run the handler, answer.

The route table listeners match on is the manifest's
(``rusmd.config.routes``). A connection takes its listener as a
``Protocol`` of what it uses (``http.HttpListener``, ``ws.WsListener``).
The request a handler serves (``Request``, ``Exchange``) is
``rusmd.wasm.exchange``: the serving host functions read and write it.
"""
