"""Taking a snapshot's changes into the cached chunks: a render's cost follows the change.

A snapshot that says what changed since a generation the cache already shows (same registry
epoch) is applied user by user: removed users leave their chunks, users changed in place
get their new figures, and the sessions created since (a suffix of the registry's order,
where a new or re-created session lands) are appended at the end. Only the chunks touched
are rendered again; nothing walks every user to find them. Chunk boundaries then no longer
follow the content-defined rule, which changes no byte of text: a body's text never depends
on where its chunks end. A chunk left small is merged into its neighbour so pieces do not
fragment over a long run.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from itertools import chain
from typing import TypeVar

from ..registry import Changes, RegistrySnapshot, SessionRow, changed_at_end
from .chunk_index import ChunkIndex
from .chunks import Chunk, ChunkCache, DeltaState, packed
from .histograms import Histogram, agents_histogram_of
from .pauses import pause
from .writer import escape, lines

__all__ = ["DeltaHistory", "apply_changes", "can_apply", "remember"]

P = TypeVar("P")
# Snapshots' changes kept per registry: a cache that missed a few renders (the other format
# or encoding was asked meanwhile) catches up from them instead of walking every user.
_HISTORY = 8
_SLICE = 8192  # counts read per C call


_Delta = tuple[Changes, Mapping[str, SessionRow]]


class DeltaHistory:
    """The changes of the last few snapshots of each registry (the changes and the changed
    rows only, never a snapshot's sessions), chained generation to generation, to bring a
    cache from an older generation to the current snapshot. Kept only while a cache is
    behind them: a renderer serving one kind of scrape keeps none after its render."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_worker: dict[str | None, list[_Delta]] = {}

    def record(self, snapshot: RegistrySnapshot) -> None:
        changes, rows = snapshot.changes, snapshot.changed_rows
        if changes is None or rows is None:
            return
        with self._lock:
            kept = self._by_worker.setdefault(snapshot.worker, [])
            if kept and kept[-1][0] is changes:
                return
            last = kept[-1][0] if kept else None
            if last is None or (last.epoch, last.generation) != (changes.epoch, changes.since):
                kept.clear()  # not the next one of the chain (another epoch, a gap)
            kept.append((changes, rows))
            del kept[:-_HISTORY]

    def held(self) -> int:
        """How many snapshots' changes are kept, every registry's together."""
        with self._lock:
            return sum(map(len, self._by_worker.values()))

    def keep_for(self, shown: Mapping[str | None, Sequence[int]]) -> None:
        """Forget the changes no cache can use: a registry's up to the oldest generation a
        cache of it that can still catch up shows (`shown`: each cache's, by registry), and
        every change of a registry no such cache shows."""
        with self._lock:
            for worker, kept in list(self._by_worker.items()):
                reach = kept[0][0].since if kept else 0
                behind = [g for g in shown.get(worker, ()) if g >= reach]
                if not behind:
                    del self._by_worker[worker]
                    continue
                oldest = min(behind)
                kept[:] = [delta for delta in kept if delta[0].generation > oldest]

    def reaching(self, snapshot: RegistrySnapshot, generation: int) -> RegistrySnapshot:
        """`snapshot` (recorded last) with its changes counted back from `generation` when
        the recorded chain reaches back that far; else `snapshot` as it is."""
        changes = snapshot.changes
        if changes is None or changes.since <= generation:
            return snapshot
        with self._lock:
            kept = list(self._by_worker.get(snapshot.worker, ()))
        if not kept or kept[-1][0] is not changes:
            return snapshot
        for start in range(len(kept) - 1, -1, -1):
            if kept[start][0].since <= generation:
                changes, rows = _widened(kept[start:])
                return replace(snapshot, changes=changes, changed_rows=rows)
        return snapshot


def _widened(deltas: list[_Delta]) -> _Delta:
    """Consecutive deltas as one, from the first one's `since` to the last one's generation
    (a user's row comes from the latest delta that changed it: unchanged since)."""
    rows: dict[str, SessionRow] = {}
    removed: set[str] = set()
    for changes, changed_rows in deltas:
        removed.difference_update(changes.changed)
        removed.update(changes.removed)
        for user_id in changes.removed:
            rows.pop(user_id, None)
        rows.update(changed_rows)
    first, last = deltas[0][0], deltas[-1][0]
    widened = Changes(last.epoch, first.since, last.generation, frozenset(rows), frozenset(removed))
    return widened, rows


def can_apply(state: DeltaState[P] | None, snapshot: RegistrySnapshot) -> bool:
    """Whether `snapshot`'s changes bring a cache in `state` to the snapshot's generation."""
    changes = snapshot.changes
    if state is None or changes is None or snapshot.changed_rows is None:
        return False
    return changes.epoch == state.epoch and changes.since <= state.generation <= changes.generation


def remember(cache: ChunkCache[P], snapshot: RegistrySnapshot, counts: Sequence[int]) -> None:
    """After a full walk that exported every user: what the next delta needs."""
    if snapshot.epoch is None or snapshot.generation is None:
        cache.delta = None
        return
    where = ChunkIndex(cache.order)
    if not where.unique:  # a hostile snapshot: every render walks it
        cache.delta = None
        return
    count_of: Counter[int] = Counter()
    for lo in range(0, len(counts), _SLICE):  # no C call over every user (see pauses.py)
        pause()
        count_of.update(counts[lo : lo + _SLICE])
    cache.delta = DeltaState(snapshot.epoch, snapshot.generation, where, count_of)


def apply_changes(
    cache: ChunkCache[P], snapshot: RegistrySnapshot, line_of: tuple[str, str], chunk_users: int
) -> Histogram | None:
    """Bring the cache to `snapshot` (`can_apply` held); the agents histogram's counts and
    sum, or None when the changes do not fit the cache (it is then dropped: walk every user).
    """
    state, changes, rows = cache.delta, snapshot.changes, snapshot.changed_rows
    if state is None or changes is None or rows is None:
        return None
    where = state.where
    # The sessions created since, and changed users just before them: last in the cache's
    # order too, so taking them out and back in keeps the order.
    tail = [s.user_id for s in changed_at_end(snapshot.sessions, changes.changed)]
    in_place = changes.changed.difference(tail)
    leaving = _held(where, chain(changes.removed, tail))
    # Checked before anything moves: a cache that does not match is never half updated.
    if len(_held(where, in_place)) != len(in_place) or (
        len(where) - len(leaving) + len(tail) != len(snapshot.sessions)
    ):
        cache.delta = None
        return None
    # Chunks whose users changed (both pieces rendered again), or only counts or created times.
    touched: dict[int, Chunk[P]] = {}
    recounted: dict[int, Chunk[P]] = {}
    redated: dict[int, Chunk[P]] = {}
    for user_id in leaving:
        pause()
        chunk = where.pop(user_id)
        state.count_of[_take(chunk, user_id)] -= 1
        touched[id(chunk)] = chunk
    for user_id in in_place:
        pause()
        chunk, row = where[user_id], rows[user_id]
        at = chunk.user_ids.index(user_id)
        if chunk.counts[at] != row.agent_count:
            state.count_of[chunk.counts[at]] -= 1
            state.count_of[row.agent_count] += 1
            _set_count(chunk, at, row.agent_count)
            recounted[id(chunk)] = chunk
        if chunk.created[at] != row.created_timestamp:
            chunk.created[at] = row.created_timestamp
            redated[id(chunk)] = chunk
    label_of = _label_of(cache)
    for user_id in tail:
        chunk = _last_with_room(cache, chunk_users)
        _append(chunk, rows[user_id], label_of(user_id))
        where[user_id] = chunk
        state.count_of[rows[user_id].agent_count] += 1
        touched[id(chunk)] = chunk
    cache.order = _merged(cache.order, touched, where, chunk_users)
    agents_line, created_line = line_of
    for chunk in _each_once(touched, recounted):
        chunk.agents_data = cache.encode(lines(agents_line, chunk.labels, chunk.counts))
    for chunk in _each_once(touched, redated):
        chunk.created_data = cache.encode(lines(created_line, chunk.labels, chunk.created))
    state.generation = changes.generation
    return agents_histogram_of(state.count_of, snapshot.thresholds.agents_per_user)


def _held(where: ChunkIndex[Chunk[P]], user_ids: Iterable[str]) -> list[str]:
    """The users of `user_ids` the cache holds, pausing between them: each lookup is a
    bisection in Python, and a thousand of them in one go held the GIL ~2 ms."""
    held = []
    for user_id in user_ids:
        pause()
        if user_id in where:
            held.append(user_id)
    return held


def _take(chunk: Chunk[P], user_id: str) -> int:
    """Remove `user_id` from `chunk`; the agent count it had."""
    at = chunk.user_ids.index(user_id)
    if chunk.labels is not chunk.user_ids:
        del chunk.labels[at]
    del chunk.user_ids[at], chunk.created[at]
    return chunk.counts.pop(at)


def _set_count(chunk: Chunk[P], at: int, count: int) -> None:
    try:
        chunk.counts[at] = count
    except (OverflowError, TypeError):  # no longer fits a byte
        chunk.counts = [*chunk.counts]
        chunk.counts[at] = count


def _label_of(cache: ChunkCache[P]) -> Callable[[str], str]:
    label = cache.label
    if label is None:
        return escape
    return lambda user_id: escape(label(user_id))


def _last_with_room(cache: ChunkCache[P], chunk_users: int) -> Chunk[P]:
    order = cache.order
    if order and len(order[-1].user_ids) < chunk_users:
        return order[-1]
    empty = cache.encode("")
    chunk: Chunk[P] = Chunk([], [], packed([]), [], empty, empty)
    chunk.labels = chunk.user_ids
    order.append(chunk)
    return chunk


def _append(chunk: Chunk[P], row: SessionRow, label: str) -> None:
    if chunk.labels is chunk.user_ids and label is not row.user_id:
        chunk.labels = list(chunk.user_ids)  # no longer one list for both
    chunk.user_ids.append(row.user_id)
    if chunk.labels is not chunk.user_ids:
        chunk.labels.append(label)
    try:
        chunk.counts.append(row.agent_count)
    except (OverflowError, TypeError):  # no longer fits a byte
        chunk.counts = [*chunk.counts, row.agent_count]
    chunk.created.append(row.created_timestamp)


def _merged(
    order: list[Chunk[P]],
    touched: dict[int, Chunk[P]],
    where: ChunkIndex[Chunk[P]],
    chunk_users: int,
) -> list[Chunk[P]]:
    """`order` without empty chunks, a touched chunk of a quarter of the average length or
    less merged with the one before it (up to the longest a content-defined chunk gets)."""
    out: list[Chunk[P]] = []
    for chunk in order:
        size = len(chunk.user_ids)
        if not size:
            where.forget(chunk)
            continue
        if (
            out
            and id(chunk) in touched
            and 4 * size <= chunk_users
            and size + len(out[-1].user_ids) <= 4 * chunk_users
        ):
            into = out[-1]
            _extend(into, chunk)
            for user_id in chunk.user_ids:
                where[user_id] = into
            touched[id(into)] = into
            chunk.user_ids = []  # merged away: not rendered
            where.forget(chunk)
            continue
        out.append(chunk)
    return out


def _extend(into: Chunk[P], chunk: Chunk[P]) -> None:
    shared = into.labels is into.user_ids and chunk.labels is chunk.user_ids
    if not shared and into.labels is into.user_ids:
        into.labels = list(into.user_ids)
    into.user_ids.extend(chunk.user_ids)
    if not shared:
        into.labels.extend(chunk.labels)
    into.counts = packed([*into.counts, *chunk.counts])
    into.created.extend(chunk.created)


def _each_once(*groups: dict[int, Chunk[P]]) -> list[Chunk[P]]:
    """The chunks of the groups, each once, leaving out the ones merged away (empty)."""
    merged: dict[int, Chunk[P]] = {}
    for group in groups:
        merged.update(group)
    return [chunk for chunk in merged.values() if chunk.user_ids]
