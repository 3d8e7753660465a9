"""Choosing the users kept under `max_user_series`, without a Python-level pass over all.

Users are ranked by pressure, their largest ratio of value to limit
(`max(agents / agents_per_user, age / session_age_seconds)`), highest first, ties by
position; every violating user (pressure above 1) therefore ranks before every healthy one.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from itertools import compress, count, islice, repeat

from agent_registry_exporter.registry import Thresholds

__all__ = ["select_indexes"]


def select_indexes(
    counts: Sequence[int],
    created: Sequence[float],
    now: float,
    limits: Thresholds,
    keep: int,
) -> list[int]:
    """Indexes, ascending, of the `keep` users under the most pressure.

    The K-th largest pressure is at least the K-th largest agent pressure and at least the
    K-th largest age pressure (pressure is the larger of the two). Both bounds come from C
    loops (counting bytes, sorting nearly sorted timestamps); only users at or above the
    larger bound are candidates (about K, more when many users tie exactly at it), and only
    the candidates' pressures are computed.
    """
    total = len(counts)
    if total <= keep:
        return list(range(total))
    if keep <= 0:
        return []
    per_agent = 1.0 / limits.agents_per_user
    per_second = 1.0 / limits.session_age_seconds
    # Agent counts packed one byte each (counts of 255 and more clipped: those users are far
    # over any sane limit, and are found exactly below), so counting and finding run in C.
    try:
        packed = bytes(counts)
    except ValueError:
        packed = bytes(map(min, map(max, counts, repeat(0)), repeat(255)))
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
    # Candidates by agents: the smallest count whose pressure reaches the bound, exactly.
    min_count = max(0, math.ceil(bound / per_agent))
    while min_count > 0 and (min_count - 1) * per_agent >= bound:
        min_count -= 1
    while min_count * per_agent < bound:
        min_count += 1
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
    # The exact pressures of the candidates only, computed by C-level maps.
    pressures = list(
        map(
            max,
            map(per_agent.__mul__, map(counts.__getitem__, candidates)),
            map(per_second.__mul__, map(now.__sub__, map(created.__getitem__, candidates))),
        )
    )
    threshold = sorted(pressures, reverse=True)[keep - 1]
    chosen = [i for i, p in zip(candidates, pressures, strict=True) if p > threshold]
    # Ties at the threshold: the earliest positions, so the choice is deterministic.
    ties = (i for i, p in zip(candidates, pressures, strict=True) if p == threshold)
    chosen.extend(islice(ties, keep - len(chosen)))
    return sorted(chosen)


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
