"""Serving: listeners and the per-listener route table.

Runs in: worker (the route table is pure logic and also used by ``rusmd check``
in the main process).

The modules, lowest first: each imports only modules listed before it.

- ``routes``  the route table: ``METHOD /path`` → ``component#action``.
- ``http``    HTTP/1.1 connections of http and sse listeners.
- ``ws``      WebSocket connections of ws listeners.
- ``server``  a worker's listeners: accept, route, run the handler, answer.

A connection takes its listener as a ``Protocol`` of what it uses
(``http.HttpListener``, ``ws.WsListener``). The request a handler serves
(``Request``, ``Exchange``) is ``rusmd.wasm.exchange``: the serving host
functions read and write it.
"""
