"""Choosing the users exported one by one, without a Python-level pass over all.

Users are ranked by pressure, their largest ratio of value to limit
(`max(agents / agents_per_user, age / session_age_seconds)`), highest first, ties by
position; every violating user (pressure above 1) therefore ranks before every healthy one.
`user_series_min_pressure` leaves out the users below that pressure; `max_user_series`
keeps the top of the rest.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from itertools import compress, count, islice, repeat

from ..registry import Thresholds

__all__ = ["select_indexes"]


def select_indexes(
    counts: Sequence[int],
    created: Sequence[float],
    now: float,
    limits: Thresholds,
    keep: int,
    min_pressure: float = 0.0,
) -> list[int]:
    """Indexes, ascending, of the `keep` users under the most pressure (of those at least at
    `min_pressure`, when it is above 0).

    The K-th largest pressure is at least the K-th largest agent pressure and at least the
    K-th largest age pressure (pressure is the larger of the two). Both bounds come from C
    loops (counting bytes, sorting nearly sorted timestamps); only users at or above the
    larger bound are candidates (about K, more when many users tie exactly at it), and only
    the candidates' pressures are computed.
    """
    if min_pressure > 0:
        eligible = _at_pressure(counts, created, now, limits, min_pressure)
        if len(eligible) <= keep:
            return eligible
        chosen = select_indexes(
            [counts[i] for i in eligible], [created[i] for i in eligible], now, limits, keep
        )
        return [eligible[i] for i in chosen]  # the order of positions is kept: same ties
    total = len(counts)
    if total <= keep:
        return list(range(total))
    if keep <= 0:
        return []
    per_agent = 1.0 / limits.agents_per_user
    per_second = 1.0 / limits.session_age_seconds
    packed = _packed(counts)
    # The K-th largest count: the largest n with at least K counts >= n (binary search).
    kth_count, above = 0, 256
    while above - kth_count > 1:
        middle = (kth_count + above) // 2
        if _flags_at_least(packed, middle).count(1) >= keep:
            kth_count = middle
        else:
            above = middle
    by_age = sorted(created)  # sessions arrive in creation order: nearly sorted, linear
    bound = max(kth_count * per_agent, (now - by_age[keep - 1]) * per_second)
    min_count = _min_count(bound, per_agent)
    # Candidates by age: a cut a millisecond generous; the exact pressure decides below.
    latest_created = now - bound / per_second + 1e-3
    many = _at_least(packed, counts, min_count)
    if by_age == created:  # in creation order, the oldest sessions are a prefix
        oldest = bisect.bisect_right(created, latest_created)
        candidates = list(range(oldest))
        candidates += sorted(i for i in many if i >= oldest)
    else:
        old = compress(count(), map(latest_created.__ge__, created))
        candidates = sorted(many.union(old))
    if len(candidates) == keep:
        return candidates
    pressures = _pressures(counts, created, now, per_agent, per_second, candidates)
    threshold = sorted(pressures, reverse=True)[keep - 1]
    chosen = [i for i, p in zip(candidates, pressures, strict=True) if p > threshold]
    # Ties at the threshold: the earliest positions, so the choice is deterministic.
    ties = (i for i, p in zip(candidates, pressures, strict=True) if p == threshold)
    chosen.extend(islice(ties, keep - len(chosen)))
    return sorted(chosen)


def _at_pressure(
    counts: Sequence[int],
    created: Sequence[float],
    now: float,
    limits: Thresholds,
    min_pressure: float,
) -> list[int]:
    """Indexes, ascending, of the users whose pressure is at least `min_pressure` (few, in a
    healthy registry: found by C loops, and only they get their exact pressure)."""
    per_agent = 1.0 / limits.agents_per_user
    per_second = 1.0 / limits.session_age_seconds
    many = _at_least(_packed(counts), counts, _min_count(min_pressure, per_agent))
    latest_created = now - min_pressure / per_second + 1e-3  # generous; decided exactly below
    old = compress(count(), map(latest_created.__ge__, created))
    candidates = sorted(many.union(old))
    pressures = _pressures(counts, created, now, per_agent, per_second, candidates)
    return [i for i, p in zip(candidates, pressures, strict=True) if p >= min_pressure]


def _packed(counts: Sequence[int]) -> bytes:
    """Agent counts packed one byte each (counts of 255 and more clipped: those users are far
    over any sane limit, and are found exactly), so counting and finding run in C."""
    try:
        return bytes(counts)
    except ValueError:
        return bytes(map(min, map(max, counts, repeat(0)), repeat(255)))


def _min_count(bound: float, per_agent: float) -> int:
    """The smallest count whose agent pressure (`count * per_agent`) reaches `bound`, exactly."""
    min_count = max(0, math.ceil(bound / per_agent))
    while min_count > 0 and (min_count - 1) * per_agent >= bound:
        min_count -= 1
    while min_count * per_agent < bound:
        min_count += 1
    return min_count


def _pressures(
    counts: Sequence[int],
    created: Sequence[float],
    now: float,
    per_agent: float,
    per_second: float,
    candidates: list[int],
) -> list[float]:
    """The exact pressures of the candidates only, computed by C-level maps."""
    return list(
        map(
            max,
            map(per_agent.__mul__, map(counts.__getitem__, candidates)),
            map(per_second.__mul__, map(now.__sub__, map(created.__getitem__, candidates))),
        )
    )


def _flags_at_least(packed: bytes, least: int) -> bytes:
    """One byte per user: 1 where its (packed) count is at least `least`."""
    return packed.translate(bytes(int(n >= least) for n in range(256)))


def _at_least(packed: bytes, counts: Sequence[int], min_count: int) -> set[int]:
    """Positions of the counts of at least `min_count`."""
    if min_count >= 255:  # beyond what the packed bytes tell apart
        return set(compress(count(), map(min_count.__le__, counts)))
    flags = _flags_at_least(packed, min_count)
    if flags.count(1) * 64 > len(flags):  # many: one C pass rather than a find per user
        return set(compress(count(), flags))
    found: set[int] = set()
    at = flags.find(1)
    while at >= 0:
        found.add(at)
        at = flags.find(1, at + 1)
    return found
