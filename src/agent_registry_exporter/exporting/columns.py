"""A snapshot's sessions read as three columns, in slices the embedding loop runs between.

A C-level pass over every session (a `map` over 100,000 rows) holds the GIL from start to
end: the backend's event loop, which renders in a thread, stalls for as long. Read a few
thousand sessions at a time instead, each slice a fraction of a millisecond, pausing
between slices (`pauses.pause`) so the loop takes the GIL there.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

from ..registry import SessionColumns, SessionLike, agent_counts, created_timestamps
from .pauses import pause

__all__ = ["SLICE", "session_columns", "sliced_sum"]

SLICE = 8192
_USER_ID = attrgetter("user_id")


def session_columns(
    sessions: Sequence[SessionLike],
) -> tuple[list[str], list[int], list[float]]:
    """Ids, agent counts and created timestamps, each read once per session."""
    user_ids: list[str] = []
    counts: list[int] = []
    created: list[float] = []
    total = len(sessions)
    if isinstance(sessions, SessionColumns):  # a worker's snapshot: columns already
        for lo in range(0, total, SLICE):
            pause()
            user_ids += sessions.user_ids[lo : lo + SLICE]
            counts += sessions.agent_counts[lo : lo + SLICE]
            created += sessions.created_timestamps[lo : lo + SLICE]
        return user_ids, counts, created
    for lo in range(0, total, SLICE):
        pause()
        part = sessions[lo : lo + SLICE]
        user_ids += map(_USER_ID, part)
        counts += agent_counts(part)
        created += created_timestamps(part)
    return user_ids, counts, created


def sliced_sum(values: Sequence[int]) -> int:
    """`sum(values)`, a slice at a time."""
    return sum(sum(values[lo : lo + SLICE]) for lo in range(0, len(values), SLICE))
