"""``python -m bench`` (``make bench``): run every benchmark and print the ratios.

Runs in: a benchmark process of its own.

``python -m bench [NAME ...]`` runs the named benchmarks (default: all
but ``headline``, which runs ``http`` and ``actors`` again beside the
node scenarios and writes docs/benchmarks.md: ``make bench``, and
``scenarios-vs-bench``, which runs each node scenario beside its
counterpart here and prints the table for docs/benchmarks.md);
``python -m bench NAME --flag ...`` passes options to one benchmark that
takes them (``python -m bench http --help``).
"""

import sys
from collections.abc import Callable

from bench import (
    actors,
    capacity,
    headline,
    http,
    http_inproc,
    kv,
    scenarios_vs_bench,
    soak,
    streams_inproc,
    wasm_host,
    worker_restart,
)

SCENARIOS: dict[str, Callable[[], int]] = {
    "worker-restart": worker_restart.main,
    "wasm-host": wasm_host.main,
    "actors": actors.main,
    "http": http.main,
    "http-inproc": http_inproc.main,
    "streams-inproc": streams_inproc.main,
    "kv": kv.main,
    "soak": soak.main,
    "capacity": capacity.main,
    "headline": headline.main,
    "scenarios-vs-bench": scenarios_vs_bench.main,
}
"""Benchmark name → its entry point. Each prints rusm beside its baseline."""

WITH_OPTIONS: dict[str, Callable[[list[str]], int]] = {
    "actors": actors.main,
    "http": http.main,
    "kv": kv.main,
    "soak": soak.main,
    "capacity": capacity.main,
    "headline": headline.main,
    "scenarios-vs-bench": scenarios_vs_bench.main,
}
"""The benchmarks that take options, and their entry points."""


def main(argv: list[str]) -> int:
    """Run the named benchmarks (default: all), or one with its options."""
    flag = next((i for i, arg in enumerate(argv) if arg.startswith("-")), len(argv))
    everything = [name for name in SCENARIOS if name not in ("headline", "scenarios-vs-bench")]
    names, options = argv[:flag] or everything, argv[flag:]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        print(f"bench: unknown {', '.join(unknown)} (valid: {', '.join(SCENARIOS)})")
        return 2
    if options and (len(names) != 1 or names[0] not in WITH_OPTIONS):
        print(f"bench: options go to one benchmark that takes them: {', '.join(WITH_OPTIONS)}")
        return 2
    for name in names:
        print(f"== {name}")
        code = WITH_OPTIONS[name](options) if options else SCENARIOS[name]()
        if code:
            return code
    return 0


sys.exit(main(sys.argv[1:]))
