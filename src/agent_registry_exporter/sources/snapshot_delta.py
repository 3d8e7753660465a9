"""Snapshot deltas: how a worker cuts one from its registry, and how the sidecar applies it.

The sidecar keeps each worker's last full columns, in the registry's order (the order the
body is rendered in). A delta keeps that order exact with no position on the wire: every
session created since the sidecar's generation sits after every older one, so the longest
run of changed sessions at the end of the registry (the tail) holds all the new ones; the
other changed sessions are older ones, changed in place. Applying removes the removed ids
and the tail's ids, updates the others where they are and appends the tail in order.
"""

from __future__ import annotations

import array
from collections.abc import Callable, Collection, Sequence
from itertools import compress, count
from typing import Any

from ..registry import SessionColumns, SessionLike, agent_counts, changed_at_end
from .snapshot_codec import Delta

__all__ = ["DeltaMismatch", "apply_delta", "cut_delta"]


class DeltaMismatch(ValueError):
    """A delta that does not fit the columns it is applied to (take a full snapshot)."""


def cut_delta(
    sessions: Sequence[SessionLike],
    find: Callable[[str], SessionLike | None],
    *,
    since: int,
    changed: Collection[str],
    removed: Collection[str],
    totals: tuple[int, int],
) -> Delta:
    """The delta of `sessions` (every session, in the registry's order, read in the same
    step as `changed`, `removed` and `totals`); `find` looks a session up by id.

    Only the end of `sessions` is read, one index at a time: a `SessionsAt` (a snapshot's
    sessions left uncopied) holds just that end, and a slice would copy every session."""
    at_end = changed_at_end(sessions, changed)
    tail = len(at_end)
    in_tail = {s.user_id for s in at_end}
    in_place: list[SessionLike] = []
    gone = list(removed)
    for user_id in changed:
        if user_id not in in_tail:
            found = find(user_id)
            if found is None:  # not there after all: gone is the truth
                gone.append(user_id)
            else:
                in_place.append(found)
    rows = [*in_place, *at_end]
    columns = SessionColumns(
        [s.user_id for s in rows], agent_counts(rows), [s.created_timestamp for s in rows]
    )
    return Delta(since, columns, tail, gone, *totals)


def _array(typecode: str, values: Sequence[Any]) -> array.array[Any]:
    if isinstance(values, array.array) and values.typecode == typecode:
        return values[:]  # one copy in C: the columns handed out before are never touched
    return array.array(typecode, values)


def apply_delta(columns: SessionColumns, delta: Delta) -> SessionColumns:
    """New columns: `columns` with `delta` applied (both left as they are; the ids list is
    shared when no session came or went). `DeltaMismatch` when the result cannot be the
    worker's registry: a changed row it does not hold, or totals that disagree."""
    rows = delta.rows
    split = len(rows) - delta.tail
    updates = dict(zip(rows.user_ids[:split], range(split), strict=True))
    drop = set(delta.removed).union(rows.user_ids[split:])
    ids = columns.user_ids
    counts = _array("q", columns.agent_counts)
    created = _array("d", columns.created_timestamps)
    touched = drop.union(updates)
    gone: list[int] = []
    updated = 0
    # One pass in C over the ids, Python only for the ids the delta names.
    for i in compress(count(), map(touched.__contains__, ids)):
        row = updates.get(ids[i])
        if row is None:
            gone.append(i)
        else:
            counts[i], created[i] = rows.agent_counts[row], rows.created_timestamps[row]
            updated += 1
    if updated != len(updates):
        raise DeltaMismatch(f"{len(updates) - updated} changed rows are not in the columns")
    if gone or split < len(rows):
        ids, counts, created = _without(ids, counts, created, gone)
        ids += rows.user_ids[split:]
        counts += _array("q", rows.agent_counts[split:])
        created += _array("d", rows.created_timestamps[split:])
    if len(ids) != delta.users or sum(counts) != delta.agents:
        raise DeltaMismatch(
            f"{len(ids)} users with {sum(counts)} agents, the worker has "
            f"{delta.users} with {delta.agents}"
        )
    return SessionColumns(ids, counts, created)


def _without(
    ids: Sequence[str],
    counts: array.array[Any],
    created: array.array[Any],
    gone: list[int],
) -> tuple[list[str], array.array[Any], array.array[Any]]:
    """The columns without the rows at the (ascending) indexes `gone`, copied by slices."""
    kept_ids: list[str] = []
    kept_counts, kept_created = array.array(counts.typecode), array.array(created.typecode)
    lo = 0
    for i in [*gone, len(ids)]:
        kept_ids += ids[lo:i]
        kept_counts += counts[lo:i]
        kept_created += created[lo:i]
        lo = i + 1
    return kept_ids, kept_counts, kept_created
