"""Choosing the users exported one by one, without a Python-level pass over all.

Users are ranked by pressure, their largest ratio of value to limit
(`max(agents / agents_per_user, age / session_age_seconds)`), highest first, ties by
position; every violating user (pressure above 1) therefore ranks before every healthy one.
`user_series_min_pressure` leaves out the users below that pressure; `max_user_series`
keeps the top of the rest.

With the default cap and more users, every scrape chooses: each pass over every user goes a
slice of `_SLICE` at a time, with a pause (`pauses.pause`) between, never one C call over all
(one sort of 1,000,000 creation times held the GIL 35-70 ms, the embedding loop with it).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from itertools import compress, islice, repeat

from ..registry import Thresholds
from .pauses import pause

__all__ = ["select_indexes"]

_SLICE = 8192  # users per C call


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
    loops over slices (counting counts, the K-th oldest creation time); only users at or
    above the larger bound are candidates (about K, more when many users tie exactly at it),
    and only the candidates' pressures are computed.
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
    kth_created, in_order = _kth_created(created, keep)
    bound = max(_kth_count(packed, keep) * per_agent, (now - kth_created) * per_second)
    min_count = _min_count(bound, per_agent)
    latest_created = _latest_created(now, bound, per_second)
    many = _at_least(packed, counts, min_count)
    if in_order:  # in creation order, the oldest sessions are a prefix
        oldest = bisect.bisect_right(created, latest_created)
        candidates = list(range(oldest))
        candidates += sorted(i for i in many if i >= oldest)
    else:
        candidates = sorted(many.union(_created_by(created, latest_created)))
    if len(candidates) < keep:
        # Only where the bounds cannot be trusted: NaN creation times, or pressures made
        # NaN by an age limit whose inverse is infinite (a hostile worker's). Rank them all.
        candidates = list(range(total))
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
    latest_created = _latest_created(now, min_pressure, per_second)
    candidates = sorted(many.union(_created_by(created, latest_created)))
    pressures = _pressures(counts, created, now, per_agent, per_second, candidates)
    return [i for i, p in zip(candidates, pressures, strict=True) if p >= min_pressure]


def _packed(counts: Sequence[int]) -> bytes:
    """Agent counts packed one byte each (counts of 255 and more clipped: those users are far
    over any sane limit, and are found exactly), so counting and finding run in C."""
    out = bytearray()
    for lo in range(0, len(counts), _SLICE):
        pause()
        part = counts[lo : lo + _SLICE]
        try:
            out += bytes(part)
        except ValueError:
            out += bytes(map(min, map(max, part, repeat(0)), repeat(255)))
    return bytes(out)


def _kth_count(packed: bytes, keep: int) -> int:
    """The K-th largest (packed) count: the largest n with at least `keep` counts >= n
    (a binary search, each step counting a slice at a time)."""
    kth_count, above = 0, 256
    while above - kth_count > 1:
        middle = (kth_count + above) // 2
        table = _at_least_table(middle)
        at_least = 0
        for lo in range(0, len(packed), _SLICE):
            pause()
            at_least += packed[lo : lo + _SLICE].translate(table).count(1)
        if at_least >= keep:
            kth_count = middle
        else:
            above = middle
    return kth_count


def _kth_created(created: Sequence[float], keep: int) -> tuple[float, bool]:
    """The `keep`-th earliest creation time, and whether `created` is in ascending order
    (sessions arrive in creation order: then it is `created[keep - 1]`, nothing sorted)."""
    for lo in range(0, len(created), _SLICE):
        pause()
        part = created[lo : lo + _SLICE + 1]  # one past the slice: its last pair too
        if sorted(part) != part:  # linear on sorted floats, compared by identity
            break
    else:
        return created[keep - 1], True
    if keep > 8 * _SLICE:  # a cap this large, users out of order: slices would not pay
        return sorted(created)[keep - 1], False
    earliest: list[float] = []  # the `keep` earliest so far, sorted
    for lo in range(0, len(created), _SLICE):
        pause()
        earliest = sorted([*earliest, *created[lo : lo + _SLICE]])[:keep]
    return earliest[keep - 1], False


def _created_by(created: Sequence[float], latest: float) -> set[int]:
    """Positions of the sessions created at `latest` or earlier."""
    found: set[int] = set()
    for lo in range(0, len(created), _SLICE):
        pause()
        part = created[lo : lo + _SLICE]
        found.update(compress(range(lo, lo + len(part)), map(latest.__ge__, part)))
    return found


def _latest_created(now: float, pressure: float, per_second: float) -> float:
    """The latest creation time whose age pressure may reach `pressure`: generous by a
    millisecond and by far more than the rounding at these magnitudes (a hostile worker's
    created of -1e20 lost the millisecond); the exact pressure decides."""
    latest = now - pressure / per_second
    if math.isfinite(latest):
        latest += 1e-3 + 1e-12 * (abs(latest) + abs(now))
    return latest


# Past this many agents `count * per_agent` moves by less than one count's worth: the least
# count of a pressure is then taken generously, not exactly (a hostile worker's column).
_EXACT_COUNTS = 2**52


def _min_count(bound: float, per_agent: float) -> int:
    """The smallest count whose agent pressure (`count * per_agent`) reaches `bound`, exactly
    (below `_EXACT_COUNTS`; above it, a little less: candidates to spare)."""
    quotient = bound / per_agent
    if not quotient < _EXACT_COUNTS:  # also NaN and inf: no count reaches an inf pressure
        if not math.isfinite(quotient):
            return 2**64 if quotient > 0 else 0  # past any count a column carries (int64)
        return math.floor(quotient * (1 - 1e-9))
    min_count = max(0, math.ceil(quotient))
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


def _at_least_table(least: int) -> bytes:
    """The `bytes.translate` table flagging (packed) counts of at least `least` with 1."""
    return bytes(least) + b"\x01" * (256 - least)


def _at_least(packed: bytes, counts: Sequence[int], min_count: int) -> set[int]:
    """Positions of the counts of at least `min_count`."""
    found: set[int] = set()
    table = _at_least_table(min(min_count, 255))
    for lo in range(0, len(counts), _SLICE):
        pause()
        positions = range(lo, min(lo + _SLICE, len(counts)))
        if min_count >= 255:  # beyond what the packed bytes tell apart
            found.update(compress(positions, map(min_count.__le__, counts[lo : lo + _SLICE])))
            continue
        flags = packed[lo : lo + _SLICE].translate(table)
        if flags.count(1) * 64 > len(flags):  # many: one C pass rather than a find per user
            found.update(compress(positions, flags))
            continue
        at = flags.find(1)
        while at >= 0:
            found.add(lo + at)
            at = flags.find(1, at + 1)
    return found
