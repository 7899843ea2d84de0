"""The table the actors benchmark prints: rusm, its plain baseline, Erlang, the ratios.

Runs in: a benchmark process of its own (``python -m bench actors``).

Every row is one figure: rusm's, the plain-Python baseline's taken in
turn with it (``paired``), and Erlang/OTP's from the same run
(``bench.actors_erlang``), or why there is no Erlang figure. Ratios are
rusm/baseline and rusm/Erlang: above 1 means rusm's figure is the larger
one (better for a rate, worse for a time or a size).

Round trips are distributions (``Trips``): a row shows their p50, and a
line under it the p50/p90/p99/max and the mean of each column.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

# Trials of each timed figure; odd, so the median is one of them.
TRIALS = 3
# The counts of rusm's figures and their baselines (Erlang's are in
# bench.actors_erlang): enough for a trial of a few tenths of a second.
SPAWNS = 3000
ROUND_TRIPS = 2000
CALLS = 2000
FLOOD = 20_000
# The figure column's width: the longest figure name fits.
WHAT_WIDTH = 44
PAD = " " * WHAT_WIDTH

T = TypeVar("T")


@dataclass(frozen=True)
class Trips:
    """The round trips of one trial, each timed on its own.

    Attributes:
        n: Round trips made.
        total_ns: Time for all of them, start to end.
        p50_ns: Median round trip.
        p90_ns: 90th percentile.
        p99_ns: 99th percentile.
        max_ns: The slowest.
    """

    n: int
    total_ns: int
    p50_ns: int
    p90_ns: int
    p99_ns: int
    max_ns: int

    @classmethod
    def of(cls, times_ns: list[int]) -> Trips:
        """The distribution of ``times_ns`` (one per round trip), as the guest computes it."""
        ordered = sorted(times_ns)
        n = len(ordered)
        return cls(
            n=n,
            total_ns=sum(ordered),
            p50_ns=ordered[n // 2],
            p90_ns=ordered[n * 9 // 10],
            p99_ns=ordered[n * 99 // 100],
            max_ns=ordered[-1],
        )

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Trips:
        """From the guest's ``n= ns= p50= ...`` fields or Erlang's ``*_ns`` keys."""

        def get(*names: str) -> int:
            for name in names:
                if name in fields:
                    return int(fields[name])
            raise KeyError(f"no {' or '.join(names)} in {dict(fields)}")

        return cls(
            n=get("n"),
            total_ns=get("total_ns", "ns"),
            p50_ns=get("p50_ns", "p50"),
            p90_ns=get("p90_ns", "p90"),
            p99_ns=get("p99_ns", "p99"),
            max_ns=get("max_ns", "max"),
        )

    @property
    def mean_ns(self) -> float:
        return self.total_ns / max(1, self.n)

    def summary(self) -> str:
        """``p50/p90/p99/max (mean)`` in µs."""
        parts = (self.p50_ns, self.p90_ns, self.p99_ns, self.max_ns)
        return "/".join(_num(p / 1000) for p in parts) + f" ({_num(self.mean_ns / 1000)})"


def median_by(items: Iterable[T], key: Callable[[T], float]) -> T:
    """The item whose ``key`` is the median (the upper one of an even count)."""
    ordered = sorted(items, key=key)
    return ordered[len(ordered) // 2]


def paired(rusm: Callable[[], T], base: Callable[[], T], key: Callable[[T], float]) -> tuple[T, T]:
    """The median trials of each, ``TRIALS`` of both taken in turn so load drift hits both."""
    pairs = [(rusm(), base()) for _ in range(TRIALS)]
    return median_by((p[0] for p in pairs), key), median_by((p[1] for p in pairs), key)


def p50_us(trips: Trips) -> float:
    return trips.p50_ns / 1000


def _num(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(rusm: float, other: float | str | None) -> str:
    # A figure printed as 0.00 (Erlang's maps per process) gives no ratio worth reading.
    if not isinstance(other, float | int) or abs(other) < 0.005:
        return "–"
    return f"{rusm / other:.3g}"


def header() -> None:
    """The column heads, printed once before the first row."""
    print(
        f"{'figure':<{WHAT_WIDTH}} {'rusm':>11} {'baseline':>11} {'Erlang':>11} {'unit':<6}"
        f" {'rusm/base':>9} {'rusm/erl':>9}  (baseline; Erlang VM)"
    )


def row(
    what: str,
    unit: str,
    rusm: float,
    base: float | None,
    erlang: float | str,
    *,
    notes: str,
) -> None:
    """One figure: ``erlang`` is Erlang's figure, or a short reason why there is none."""
    base_text = "–" if base is None else _num(base)
    erl_text = _num(erlang) if isinstance(erlang, float | int) else "–"
    print(
        f"{what:<{WHAT_WIDTH}} {_num(rusm):>11} {base_text:>11} {erl_text:>11} {unit:<6}"
        f" {_ratio(rusm, base):>9} {_ratio(rusm, erlang):>9}  ({notes})"
    )
    if isinstance(erlang, str):
        print(f"{PAD} Erlang: {erlang}")


def distribution(rusm: Trips, base: Trips, erlang: Trips | str) -> None:
    """The line under a round-trip row: every column's p50/p90/p99/max (mean), µs."""
    erl_text = erlang.summary() if isinstance(erlang, Trips) else "–"
    print(
        f"{PAD} p50/p90/p99/max (mean) µs: rusm {rusm.summary()}; base {base.summary()};"
        f" Erlang {erl_text}"
    )


def note(text: str) -> None:
    """A line of explanation under the rows, indented past the figure names."""
    print(f"{PAD} {text}")


def trips_row(what: str, pair: tuple[Trips, Trips], erlang: Trips | str, notes: str) -> None:
    """A round-trip row (the p50s) and its distribution line."""
    rusm, base = pair
    erl = p50_us(erlang) if isinstance(erlang, Trips) else erlang
    row(what, "µs", p50_us(rusm), p50_us(base), erl, notes=notes)
    distribution(rusm, base, erlang)
