"""Median and p90 of a metric's samples, and the stemd / peer ratio."""

from __future__ import annotations

import statistics
from typing import TypedDict


class Summary(TypedDict):
    n: int
    median: float
    p90: float
    min: float
    max: float
    samples: list[float]


def p90(values: list[float]) -> float:
    """The inclusive 90th percentile (linear interpolation); with one sample
    it is that sample, so a single trial still yields a number."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def summarize(values: list[float]) -> Summary:
    if not values:
        raise ValueError("no samples")
    return Summary(
        n=len(values),
        median=statistics.median(values),
        p90=p90(values),
        min=min(values),
        max=max(values),
        samples=list(values),
    )


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """stemd / peer; None when either is missing or the peer is zero."""
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs
