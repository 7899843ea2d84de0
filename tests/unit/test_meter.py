"""Request meters and fixed-bucket histograms: classes, buckets, percentiles.

The percentile oracle is the bucket layout written out by hand: a
quantile falls in the bucket where the running count reaches it, read
linearly between that bucket's bounds.
"""

from __future__ import annotations

import itertools

import pytest

from rusmd.meter import BOUNDS_S, Histogram, RequestMeter, add_buckets, percentile, status_class


def test_bounds_grow_by_root_two_from_ten_microseconds() -> None:
    assert BOUNDS_S[0] == pytest.approx(1e-5)
    assert BOUNDS_S[2] == pytest.approx(2e-5)
    assert all(b > a for a, b in itertools.pairwise(BOUNDS_S))
    assert 7.0 < BOUNDS_S[-1] < 8.0


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (101, "1xx"),
        (200, "2xx"),
        (299, "2xx"),
        (304, "3xx"),
        (404, "4xx"),
        (503, "5xx"),
        (0, "5xx"),
        (999, "5xx"),
    ],
)
def test_status_class_of_each_hundred_and_out_of_range_is_5xx(status: int, expected: str) -> None:
    assert status_class(status) == expected


def test_histogram_puts_a_value_in_the_first_bucket_whose_bound_holds_it() -> None:
    histogram = Histogram()
    histogram.observe(1e-5)  # exactly the first bound: its bucket (le)
    histogram.observe(1.5e-5)
    histogram.observe(100.0)  # past the last bound: +Inf
    assert histogram.buckets[0] == 1 and histogram.buckets[2] == 1
    assert histogram.buckets[-1] == 1
    assert histogram.count == 3 and histogram.sum_s == pytest.approx(100.000025)


def test_request_meter_counts_unknown_methods_as_other() -> None:
    meter = RequestMeter()
    meter.record("GET", 200, 0.001)
    meter.record("GET", 201, 0.001)
    meter.record("BREW", 418, 0.001)
    exported = meter.export()
    assert exported["counts"] == {"GET 2xx": 2, "OTHER 4xx": 1}
    assert exported["duration"]["count"] == 3


def test_percentile_of_an_empty_histogram_is_none() -> None:
    assert percentile([0] * (len(BOUNDS_S) + 1), 0.5) is None


def test_percentile_interpolates_inside_the_bucket() -> None:
    buckets = [0] * (len(BOUNDS_S) + 1)
    buckets[4] = 100  # every value between BOUNDS_S[3] and BOUNDS_S[4]
    low, high = BOUNDS_S[3], BOUNDS_S[4]
    assert percentile(buckets, 0.5) == pytest.approx(low + (high - low) * 0.5)
    assert percentile(buckets, 0.99) == pytest.approx(low + (high - low) * 0.99)


def test_percentile_splits_between_buckets_by_count() -> None:
    buckets = [0] * (len(BOUNDS_S) + 1)
    buckets[0], buckets[10] = 90, 10
    assert percentile(buckets, 0.5) <= BOUNDS_S[0]
    assert BOUNDS_S[9] <= percentile(buckets, 0.95) <= BOUNDS_S[10]  # type: ignore[operator]
    buckets[-1] = 1000
    assert percentile(buckets, 0.99) == BOUNDS_S[-1]  # in +Inf: the last bound


def test_add_buckets_adds_bucket_by_bucket() -> None:
    into = [1, 2, 3]
    add_buckets(into, [10, 20, 30])
    assert into == [11, 22, 33]
