"""The change log: which users changed since a generation, so a reader pays for the change.

Every change to the registry's sessions (a registration, a removal, a detach, a session
created or backdated) takes the next generation number, and the log records which user it
changed. A reader remembers the generation it last read and asks for what changed after
it: only the generations newer than the reader's are read. The log is bounded: past its
room the oldest generations are forgotten, and a reader from before them gets None (it
takes a full snapshot instead), so a mass removal leaves no lasting memory behind.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Container, Reversible
from dataclasses import dataclass
from typing import Protocol, TypeVar

__all__ = ["LOG_MIN", "ChangeLog", "Changes", "changed_at_end"]

# The log always has room for this many users, and for as many as the registry holds: a
# reader behind by more changes than that gains nothing from a delta over a full snapshot.
LOG_MIN = 1024

# A reader reads the log this many generations at a time; one with a bound stops once past
# it: a sidecar far behind (100,000 users changed since) costs 0.25 ms, not 23 ms.
_READ_STEP = 4096


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed in one registry between two generations."""

    epoch: str  # random per AgentRegistry instance (a process restart = new epoch)
    since: int  # the generation asked from
    generation: int  # the registry's generation now
    # Ids registered, created, or whose agent count or created time changed since `since`,
    # and present now.
    changed: frozenset[str]
    # Ids present at `since` (or added after) and gone now.
    removed: frozenset[str]

    @property
    def users(self) -> int:
        """How many users changed or went: what a delta of these changes carries."""
        return len(self.changed) + len(self.removed)


class ChangeLog:
    """The user each generation changed, the last `max(LOG_MIN, held())` to twice that of
    them (`held` gives how many users the registry holds now).

    One list append per change (the registry's hot path pays nothing more); a reader's
    delta reads only the generations after its own, and a user changed many times since is
    listed once.
    """

    __slots__ = ("_base", "_ids", "_room", "epoch", "held")

    def __init__(self, held: Callable[[], int]) -> None:
        self.epoch = secrets.token_hex(8)
        self.held = held
        # The user generation `_base + i + 1` changed is `_ids[i]`; older ones are forgotten.
        self._ids: list[str] = []
        self._base = 0
        self._room = 2 * LOG_MIN

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def generation(self) -> int:
        return self._base + len(self._ids)

    def note(self, user_id: str) -> None:
        """`user_id` changed: it takes the next generation."""
        ids = self._ids
        ids.append(user_id)
        if len(ids) > self._room:
            self.fit()

    def fit(self) -> None:
        """Forget the oldest generations beyond `max(LOG_MIN, held())` (amortised: at least
        as many were added since the last time), and give their memory back."""
        keep = max(LOG_MIN, self.held())
        drop = len(self._ids) - keep
        if drop > 0:
            del self._ids[:drop]  # a list shrinks its allocation when it halves
            self._base += drop
        self._room = 2 * keep

    def since(
        self,
        generation: int,
        epoch: str | None,
        present: Container[str],
        most: int | None = None,
    ) -> Changes | None:
        """What changed after `generation` (`present`: the ids held now), or None when that
        generation is not this log's to answer (another epoch, the future, or forgotten) or
        more than `most` users changed or went since (read no further than that)."""
        if epoch is not None and epoch != self.epoch:
            return None
        if not self._base <= generation <= self.generation:
            return None
        ids, users = self._ids, set()
        for lo in range(generation - self._base, len(ids), _READ_STEP):
            users.update(ids[lo : lo + _READ_STEP])
            if most is not None and len(users) > most:
                return None
        changed: set[str] = set()
        removed: set[str] = set()
        for user_id in users:
            (changed if user_id in present else removed).add(user_id)
        return Changes(
            self.epoch, generation, self.generation, frozenset(changed), frozenset(removed)
        )


class _OfAUser(Protocol):
    @property
    def user_id(self) -> str: ...


S = TypeVar("S", bound=_OfAUser)


def changed_at_end(sessions: Reversible[S], changed: Container[str]) -> list[S]:
    """The longest run at the end of `sessions` (in the registry's order) whose users all
    changed, in order: every session created since the changes' generation sits there (a
    new or re-created session goes last), and changed ones just before them. Read from the
    end, that run and the session before it only (a `SessionsAt` holds no more)."""
    run = []
    for session in reversed(sessions):
        if session.user_id not in changed:
            break
        run.append(session)
    run.reverse()
    return run
