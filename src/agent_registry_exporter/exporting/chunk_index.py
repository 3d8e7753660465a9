"""Which cached chunk holds each user, in about a third of a dict's memory.

A dict from user id to chunk costs some 38 bytes a user (its hash table); at 100,000
users that is half the compressed body the cache exists for. This index keeps the ids
sorted in one list (8 bytes a user: the id strings are the chunks' own, none is copied)
beside an array of small chunk numbers (4 bytes a user), and finds a user by bisection.
Users added since the last sort wait in a small dict and removed ones are marked; both are
folded in by a merge (two sorted runs, linear) once they reach an eighth of the index.

Nothing here is one C call over every user: one sort of a million ids holds the GIL for half
a second (the embedding backend's event loop with it). A first build sample-sorts the ids in
buckets of about `_SLICE`, and every copy and check goes a slice at a time, with a pause
(`pauses.pause`) between.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from itertools import compress, repeat
from operator import eq
from typing import Generic, Protocol, TypeVar

from .pauses import pause

__all__ = ["ChunkIndex"]

_GONE = -1
_live = _GONE.__lt__  # a chunk number, not the mark of a removed user
# Pending additions and removals folded in past max(this, an eighth of the index).
_PENDING_MIN = 1024
# A fold copies at most this many ids per C call, and sorts the pending users in runs of
# `_RUN`: each well under a millisecond, with pauses between (exporting.pauses).
_SLICE = 4096
_RUN = 512
_STEP = 64  # a first build samples one id in this many (at least 2: the sample shrinks)


class _HasUsers(Protocol):
    @property
    def user_ids(self) -> Sequence[str]: ...


C = TypeVar("C", bound=_HasUsers)


class ChunkIndex(Generic[C]):
    """A mapping from user id to the chunk holding it (`in`, `[]`, `pop`, `len`, set)."""

    __slots__ = ("_chunks", "_free", "_gone", "_ids", "_number", "_pending", "_slots")

    def __init__(self, chunks: Iterable[C]) -> None:
        held = list(chunks)
        self._chunks: list[C | None] = list(held)
        self._number = {id(chunk): n for n, chunk in enumerate(held)}
        self._free: list[int] = []
        ids: list[str] = []
        numbers: list[int] = []
        for n, chunk in enumerate(held):
            pause()
            ids += chunk.user_ids
            numbers += repeat(n, len(chunk.user_ids))
        self._sort(ids, numbers)

    @property
    def unique(self) -> bool:
        """Whether no user id appeared twice among the chunks it was built from."""
        ids = self._ids
        for lo in range(0, len(ids), _SLICE):
            pause()
            if any(map(eq, ids[lo : lo + _SLICE], ids[lo + 1 : lo + _SLICE + 1])):
                return False
        return True

    def __len__(self) -> int:
        return len(self._ids) - self._gone + len(self._pending)

    def __contains__(self, user_id: object) -> bool:
        if not isinstance(user_id, str):
            return False
        if user_id in self._pending:
            return True
        at = self._find(user_id)
        return at >= 0 and self._slots[at] != _GONE

    def __getitem__(self, user_id: str) -> C:
        return self._chunk(self._number_of(user_id))

    def pop(self, user_id: str) -> C:
        """The chunk holding `user_id`, which leaves the index."""
        number = self._pending.pop(user_id, None)
        if number is None:
            number = self._number_of(user_id)
            self._slots[self._find(user_id)] = _GONE
            self._gone += 1
            self._fold_if_due()
        return self._chunk(number)

    def __setitem__(self, user_id: str, chunk: C) -> None:
        number = self._number.get(id(chunk))
        if number is None:
            number = self._free.pop() if self._free else len(self._chunks)
            if number == len(self._chunks):
                self._chunks.append(chunk)
            else:
                self._chunks[number] = chunk
            self._number[id(chunk)] = number
        at = self._find(user_id)
        if at < 0:
            self._pending[user_id] = number
            self._fold_if_due()
            return
        if self._slots[at] == _GONE:
            self._gone -= 1
        self._slots[at] = number

    def forget(self, chunk: C) -> None:
        """`chunk` holds no user any more (emptied, or merged into another)."""
        number = self._number.pop(id(chunk), None)
        if number is not None:
            self._chunks[number] = None
            self._free.append(number)

    def _find(self, user_id: str) -> int:
        """Where `user_id` is in the sorted ids (a removed user's mark included), or -1."""
        ids = self._ids
        at = bisect_left(ids, user_id)
        return at if at < len(ids) and ids[at] == user_id else -1

    def _number_of(self, user_id: str) -> int:
        number = self._pending.get(user_id)
        if number is not None:
            return number
        at = self._find(user_id)
        if at < 0 or self._slots[at] == _GONE:
            raise KeyError(user_id)
        return self._slots[at]

    def _chunk(self, number: int) -> C:
        chunk = self._chunks[number]
        assert chunk is not None, "a user's chunk was forgotten before the user left it"
        return chunk

    def _fold_if_due(self) -> None:
        if len(self._pending) + self._gone > max(_PENDING_MIN, len(self._ids) >> 3):
            self._fold()

    def _fold(self) -> None:
        """The pending users merged into the sorted ids, the removed ones dropped: a slice
        at a time, pausing between slices (done in one go, the C calls over 100,000 ids
        held the GIL 30-70 ms, and an embedding backend's loop as long)."""
        ids: list[str] = []
        slots = array("i")
        for lo in range(0, len(self._ids), _SLICE):
            pause()
            part = self._slots[lo : lo + _SLICE]
            live = list(map(_live, part))
            ids += compress(self._ids[lo : lo + _SLICE], live)
            slots += array("i", compress(part, live))
        self._hold(*_merged(ids, slots, _sorted_in_runs(self._pending.items())))

    def _sort(self, ids: list[str], numbers: list[int]) -> None:
        """Hold `ids` sorted, each with its number. Sorting positions by id carries the
        numbers along (in one sort, 1,000,000 ids held the GIL ~580 ms: sorted in buckets)."""
        order = _sorted_order(ids, 0)
        sorted_ids: list[str] = []
        slots = array("i")
        for lo in range(0, len(order), _SLICE):
            pause()
            part = order[lo : lo + _SLICE]
            sorted_ids += map(ids.__getitem__, part)
            slots.extend(map(numbers.__getitem__, part))
        self._hold(sorted_ids, slots)

    def _hold(self, ids: list[str], slots: array[int]) -> None:
        """Sorted `ids` and their chunk numbers, nothing pending or removed."""
        self._ids = ids
        self._slots = slots
        self._pending: dict[str, int] = {}
        self._gone = 0


def _sorted_in_runs(items: Iterable[tuple[str, int]]) -> Iterator[tuple[str, int]]:
    """`items` in order: sorted in runs of `_RUN` with pauses between, merged as read."""
    held = list(items)
    runs = []
    for lo in range(0, len(held), _RUN):
        pause()
        runs.append(sorted(held[lo : lo + _RUN]))
    return heapq.merge(*runs)


def _merged(
    ids: list[str], slots: array[int], pending: Iterable[tuple[str, int]]
) -> tuple[list[str], array[int]]:
    """Sorted `ids` (with their `slots`) and the sorted `pending` users as one sorted run,
    copied in slices of at most `_SLICE` with pauses between."""
    out_ids: list[str] = []
    out_slots = array("i")
    at = 0
    for user_id, number in pending:
        pause()
        to = bisect_left(ids, user_id, at)
        _copy(ids, slots, at, to, out_ids, out_slots)
        out_ids.append(user_id)
        out_slots.append(number)
        at = to
    _copy(ids, slots, at, len(ids), out_ids, out_slots)
    return out_ids, out_slots


def _copy(
    ids: list[str], slots: array[int], lo: int, hi: int, out_ids: list[str], out_slots: array[int]
) -> None:
    for start in range(lo, hi, _SLICE):
        pause()
        end = min(start + _SLICE, hi)
        out_ids += ids[start:end]
        out_slots += slots[start:end]


def _sorted_order(ids: list[str], start: int) -> list[int]:
    """The positions from `start` on, ordered by their ids (stably), by a sample sort: every
    `_STEP`-th id sorted gives splitters about a `_SLICE` of ids apart; each id goes to the
    bucket between two splitters (one bisection in C, the splitters in cache), and each
    bucket is sorted apart. Each id is visited three times, where sorting every id at once
    compares each some twenty times, most of them a cache miss at a million ids."""
    key = ids.__getitem__
    if len(ids) - start <= 2 * _SLICE:
        pause()
        return sorted(range(start, len(ids)), key=key)
    sample = ids[start::_STEP]
    apart = max(1, _SLICE // _STEP)  # sampled ids between two splitters
    splitters = [sample[at] for at in _sorted_order(sample, 0)[apart::apart]]
    buckets: list[list[int]] = [[] for _ in range(len(splitters) + 1)]
    bucket_of = partial(bisect_right, splitters)
    for lo in range(start, len(ids), _SLICE):
        pause()
        positions = range(lo, min(lo + _SLICE, len(ids)))
        into = map(buckets.__getitem__, map(bucket_of, ids[lo : lo + _SLICE]))
        deque(map(list.append, into, positions), maxlen=0)
    order: list[int] = []
    for bucket in buckets:
        pause()
        order += sorted(bucket, key=key) if len(bucket) <= 2 * _SLICE else _by_runs(bucket, key)
    return order


def _by_runs(positions: list[int], key: Callable[[int], str]) -> list[int]:
    """`positions` ordered by `key` (stably), whatever their ids (a bucket of many equal
    ones): slices sorted apart, then merged two runs at a time."""
    runs: list[list[int]] = []
    for lo in range(0, len(positions), _SLICE):
        pause()
        runs.append(sorted(positions[lo : lo + _SLICE], key=key))
    while len(runs) > 1:
        pairs = zip(runs[::2], runs[1::2], strict=False)
        runs = [_two_runs(a, b, key) for a, b in pairs] + runs[len(runs) & ~1 :]
    return runs[0] if runs else []


def _two_runs(a: list[int], b: list[int], key: Callable[[int], str]) -> list[int]:
    """Two runs sorted by `key` as one (stably: `a` first on ties), a piece at a time: at
    most a `_SLICE` of each, cut where the other run's next id falls."""
    out: list[int] = []
    i = j = 0
    while i < len(a) and j < len(b):
        pause()
        i_end = min(i + _SLICE, len(a))
        j_end = len(b) if i_end == len(a) else bisect_left(b, key(a[i_end]), j, key=key)
        if j_end - j > _SLICE:  # b's ids before a's next are many: cut b, and a with it
            j_end = j + _SLICE
            i_end = bisect_right(a, key(b[j_end]), i, i_end, key=key)
        out += sorted([*a[i:i_end], *b[j:j_end]], key=key)
        i, j = i_end, j_end
    for rest, at in ((a, i), (b, j)):
        for lo in range(at, len(rest), _SLICE):
            pause()
            out += rest[lo : lo + _SLICE]
    return out
