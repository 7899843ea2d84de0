"""The node endpoint: dashboard, attach stream, JSON API and ``/metrics`` on ``[node] listen``.

Runs in: node endpoint (``python -m rusmd.node``, a child the main
process starts and restarts; ``rusmd.main.endpoint`` says why a child).

The layout, in the order data flows:

- ``control``   an asyncio client of the control socket (what ``rusmctl`` speaks).
- ``snapshot``  polls ``stats`` and turns two polls into rates, percentiles
  and the attach stream's ``snapshot`` frames.
- ``metrics``   the Prometheus collector over the latest poll.
- ``auth``      the token check, one for every path.
- ``scenario_app``     the benchmark scenarios' guests (WAT, and kv-storm's C) and manifest.
- ``scenarios``        one timed scenario run: lanes, warm-up, HDR histogram, frames.
- ``scenario_target``  where a node serves the scenario routes; the HTTP client.
- ``scenario_actors``  spawn-storm and fault-recovery: a guest on every worker, their counters.
- ``scenario_drivers`` the eight scenarios.
- ``scenario_wrk``     wrk as the client of http-throughput and kv-storm in ``rusmd bench``.
- ``runs``      the attach stream's scenario runs (one at a time).
- ``server``    the one port: HTTP routes, the WebSocket attach stream, the ticker.
- ``bench_command``    ``rusmd bench``: a daemon of its own on the scenario app, one run.
- ``static/``   the dashboard page and its vendored chart library (uPlot).
"""
