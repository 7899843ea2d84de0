"""``python -m bench`` (``make bench``): run every benchmark and print the ratios.

Runs in: a benchmark process of its own.
"""

import sys

from bench import actors, wasm_host, worker_restart

SCENARIOS = {
    "worker-restart": worker_restart.main,
    "wasm-host": wasm_host.main,
    "actors": actors.main,
}
"""Benchmark name → its entry point. Each prints rusm beside its baseline."""


def main(argv: list[str]) -> int:
    """Run the named benchmarks (default: all)."""
    names = argv or list(SCENARIOS)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        print(f"bench: unknown {', '.join(unknown)} (valid: {', '.join(SCENARIOS)})")
        return 2
    for name in names:
        print(f"== {name}")
        code = SCENARIOS[name]()
        if code:
            return code
    return 0


sys.exit(main(sys.argv[1:]))
