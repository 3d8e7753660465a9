"""The snapshot: what the exporter renders of one registry (or of a sidecar's workers)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .changes import Changes
from .sessions import SessionLike, SessionRow
from .thresholds import Thresholds

__all__ = ["RegistrySnapshot"]


@dataclass(frozen=True, slots=True)
class RegistrySnapshot:
    """The sessions of one registry at `taken_at`, with the thresholds in force.

    Taking it copies only the list of sessions, so it is cheap on the event loop even for
    100,000 users; the renderer reads each session's agent count exactly once, so totals
    always equal the sum of the per-user values it prints. A snapshot with `changes` may
    leave even that list uncopied (`SessionsAt`: its length and its last sessions, read
    at `taken_at`; read whole after the registry changed, it raises `SnapshotExpired`).
    """

    taken_at: float
    thresholds: Thresholds
    sessions: Sequence[SessionLike]
    # Optional figures, rendered only when present (a sidecar worker may not send them).
    cleaned_agents_alive: int | None = None
    cleaned_agents_untracked: int | None = None
    resident_memory_bytes: int | None = None
    # Sidecar mode: the worker this registry lives in; its name labels every family.
    worker: str | None = None
    # Sidecar mode: one snapshot per worker that answered (rendered side by side, never
    # merged); `sessions` then holds all of theirs, for counting.
    workers: tuple[RegistrySnapshot, ...] | None = None
    # How a user id is written as a label value (private ids: a keyed hash); None: as is.
    # Applied by the renderer to the ids it prints only, so the cost follows the output.
    user_label: Callable[[str], str] | None = None
    # The registry's epoch and generation at `taken_at` (None: a source that keeps no change
    # log). A renderer remembers them to read the next snapshot's `changes` against.
    epoch: str | None = None
    generation: int | None = None
    # What changed since an earlier generation of the same registry (None: not known, the
    # renderer reads every session); `changed_rows` holds the changed users' figures, read
    # at `taken_at` together with `totals` (users, agents: exact, kept by the registry).
    changes: Changes | None = None
    changed_rows: Mapping[str, SessionRow] | None = None
    totals: tuple[int, int] | None = None
