"""The population as two histograms: agents per session and session ages, every session.

Per-user series are bounded (cap, minimum pressure); these two describe every session of a
registry with a constant number of series. Both are exact, computed at scrape time from the
columns the per-user families are read from, in slices of a few thousand sessions so no
single C call holds the GIL for long (the embedding backend's loop runs between slices).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import chain

from .pauses import pause

__all__ = [
    "AGENT_BUCKETS",
    "AGE_BUCKETS",
    "Histogram",
    "age_histogram",
    "agents_histogram",
    "agents_histogram_of",
    "bounds_with",
]

AGENT_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0)
AGE_BUCKETS = (3600.0, 21600.0, 43200.0, 86400.0, 172800.0, 604800.0)  # 1h 6h 12h 24h 48h 7d
# About a millisecond of C work per slice at most.
# A slice sorts in ~0.3 ms, with a pause between slices (see pauses.py).
_SLICE = 4_096


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative counts at each upper bound (`+Inf` implied last), and the sum."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]  # one per bound, then the count of everything
    total: float  # an int for agents

    @property
    def count(self) -> int:
        return self.cumulative[-1]


def bounds_with(buckets: tuple[float, ...], limit: float) -> tuple[float, ...]:
    """`buckets` plus the configured limit, when it is not already one of them."""
    return tuple(sorted({*buckets, float(limit)}))


def agents_histogram(counts: Sequence[int], limit: int) -> Histogram:
    """Agents per session; the bounds are AGENT_BUCKETS and the per-user limit."""
    bounds = bounds_with(AGENT_BUCKETS, limit)
    at_most = [0] * len(bounds)
    total = 0
    for lo in range(0, len(counts), _SLICE):
        pause()
        part = sorted(counts[lo : lo + _SLICE])
        total += sum(part)
        for i, bound in enumerate(bounds):
            at_most[i] += bisect.bisect_right(part, bound)
    return Histogram(bounds, (*at_most, len(counts)), total)


def agents_histogram_of(count_of: Mapping[int, int], limit: int) -> Histogram:
    """`agents_histogram` of counts given as how many sessions have each (kept as they change)."""
    bounds = bounds_with(AGENT_BUCKETS, limit)
    at_most = [0] * len(bounds)
    total = sessions = 0
    for value, many in count_of.items():
        total += value * many
        sessions += many
        for i, bound in enumerate(bounds):
            if value <= bound:
                at_most[i] += many
    return Histogram(bounds, (*at_most, sessions), total)


def age_histogram(created: Sequence[float], now: float, limit: float) -> Histogram:
    """Session ages at `now` (as the age gauge prints them: `now - created`); the bounds are
    AGE_BUCKETS and the session age limit.

    Counted on the creation times themselves (an age is at most a bound when the session
    was created at `now - bound` or later), not on ages computed for every session: sorting
    a slice of them is nearly free (a registry's order is creation order) and the map of
    `now - created` over every user was the histogram's largest cost. Where that rule and
    the subtraction round apart, the subtraction decides, as the gauge prints it. The sum
    is each slice's `len * now - sum(created)` taken exactly (see `_age_sum`).
    """
    bounds = bounds_with(AGE_BUCKETS, limit)
    at_most = [0] * len(bounds)
    total = 0.0
    for lo in range(0, len(created), _SLICE):
        pause()
        part = sorted(created[lo : lo + _SLICE])  # oldest first: ages from the largest down
        ages_sum = _age_sum(part, now)
        total += ages_sum
        if ages_sum != ages_sum:  # NaN: a NaN time (a hostile worker's) sorts anywhere
            part = sorted(c for c in part if now - c == now - c)  # a NaN age: in no bucket
        for i, bound in enumerate(bounds):
            at_most[i] += len(part) - _first_young(part, now, bound)
    return Histogram(bounds, (*at_most, len(created)), total)


def _first_young(part: list[float], now: float, bound: float) -> int:
    """The first of the sorted creation times whose age (`now - created`) is at most
    `bound`: a bisection on that very test, which is monotone in the creation time (the
    subtraction rounds, but never out of order), in a dozen steps, however many are equal."""
    return bisect.bisect_left(part, True, key=lambda created: now - created <= bound)


def _age_sum(created: list[float], now: float) -> float:
    """`sum(now - c for c in created)` rounded once, without a list of ages. Not `len * now
    - sum(created)` in floats: each term near `len * now` rounds by far more than the ages
    add up to (20,000 sessions of age 0 summed to 2.2 s, 100 of them to a negative sum)."""
    try:
        product = Fraction(now) * len(created)
        high = float(product)
        low = float(product - Fraction(high))  # exact: a slice's length has 13 bits at most
        return 0.0 - math.fsum(chain(created, (-high, -low)))  # 0.0 -: never a -0.0
    except (ValueError, OverflowError):  # NaN or infinite times, or an overflow: as printed
        return sum(map(now.__sub__, created))
