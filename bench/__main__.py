"""``python -m bench`` (``make bench``): run every benchmark and print the ratios.

Runs in: a benchmark process of its own.
"""

import sys

SCENARIOS: dict[str, str] = {}
"""Benchmark name → what it compares. Empty until a measured figure exists:
the first (HTTP throughput against a raw uvloop+httptools server) comes with
issue #6 (serving)."""


def main() -> int:
    """Run the registered benchmarks; say so plainly when there are none."""
    if not SCENARIOS:
        print("bench: no benchmarks yet; the first one arrives with issue #6 (serving)")
        return 0
    return 0


sys.exit(main())
