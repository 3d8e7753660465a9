"""The registry: the one owner of user sessions, and the snapshot the exporter reads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import Any

from .changes import ChangeLog, Changes, changed_at_end
from .cleaned import DEFAULT_LEAK_GRACE_SECONDS
from .lifecycle import AgentLifecycleManager
from .sessions import Clock, SessionRow, UserAgentSession, check_user_id
from .sessions_at import SessionsAt
from .snapshot import RegistrySnapshot
from .thresholds import Thresholds

__all__ = ["AgentRegistry", "DuplicateAgentError"]

# The session map is rebuilt once it holds less than a sixteenth of its peak, if that peak
# was worth it (a small dict's table costs little). Not sooner: each intermediate table is
# one more large block the C allocator may keep (measured with benchmarks/registry_memory.py:
# after 1,000,000 users left, RSS ended 23% above its start rebuilding at a quarter, 7% here).
_REBUILD_FROM = 1024
_REBUILD_RATIO = 16

# A delta snapshot reads its changed users' rows this many at a time, the loop running
# between steps (~0.1-0.3 ms each); after `_ROUNDS` rounds of re-reading users that changed
# meanwhile, whatever changed during the last round is read in the snapshot's last step.
ROWS_STEP = 256
_ROUNDS = 3


class DuplicateAgentError(ValueError):
    """An agent id is already registered in that user's session."""


class AgentRegistry:
    """The single source of truth for user sessions (user_id -> UserAgentSession).

    Mutating methods are coroutines guarded by one lock; use the registry from one
    event loop.
    """

    def __init__(
        self,
        thresholds: Thresholds | None = None,
        clock: Clock = time.time,
        *,
        agent_close_timeout: float = 5.0,
    ) -> None:
        self.thresholds = thresholds if thresholds is not None else Thresholds()
        self.clock = clock
        self._user_sessions: dict[str, UserAgentSession] = {}
        # The most sessions the map held since it was last built: a dict never shrinks when
        # entries leave, so a mostly empty one is rebuilt to give its memory back.
        self._map_peak = 0
        # Every change to the sessions, for readers that want only what changed.
        self._log = ChangeLog(self.__len__)
        self._note = self._log.note  # bound once: the hot path calls it at every change
        self._agent_total = 0  # kept with every change: the totals never walk the sessions
        self._lock = asyncio.Lock()
        self.lifecycle_manager = AgentLifecycleManager(
            registry=self, agent_close_timeout=agent_close_timeout
        )

    def __len__(self) -> int:
        return len(self._user_sessions)

    @property
    def epoch(self) -> str:
        """Random per registry instance: generations of another epoch (another process, a
        restarted worker) mean nothing here."""
        return self._log.epoch

    @property
    def generation(self) -> int:
        """Moves on every change to the sessions (registration, removal, detach, cleanup,
        session created or backdated); unchanged generation, unchanged sessions."""
        return self._log.generation

    @property
    def totals(self) -> tuple[int, int]:
        """(users, agents), exact, kept as the sessions change."""
        return len(self._user_sessions), self._agent_total

    @property
    def log_size(self) -> int:
        """Users the change log holds (bounded: see `changes_since`)."""
        return len(self._log)

    def changes_since(
        self, generation: int, epoch: str | None = None, *, most: int | None = None
    ) -> Changes | None:
        """The users changed and removed since `generation`, or None when that generation is
        unknown here (another `epoch`, the future, or older than the bounded log keeps) or,
        given `most`, when more users than that changed or went: the reader then takes a
        full snapshot. Cheap: it reads only the newer changes, and no further than `most`."""
        return self._log.since(generation, epoch, self._user_sessions, most)

    def session_changed(self, session: UserAgentSession, agents_delta: int) -> None:
        """A caller changed a session the registry holds (backdated it, drained it)."""
        if self._user_sessions.get(session.user_id) is session:
            self._agent_total += agents_delta
            self._note(session.user_id)

    async def get_user_session(self, user_id: str) -> UserAgentSession:
        """The user's session, created if missing."""
        async with self._lock:
            return self._session_for(user_id)

    async def register_user_agent(self, user_id: str, agent_id: str, agent: Any) -> None:
        """Add an agent to the user's session (created if missing)."""
        async with self._lock:
            session = self._session_for(user_id)
            if agent_id in session._agents:
                raise DuplicateAgentError(
                    f"agent {agent_id!r} is already registered for {user_id!r}"
                )
            session._agents[agent_id] = agent
            self._agent_total += 1
            self._note(user_id)

    async def unregister_user_agent(self, user_id: str, agent_id: str) -> Any | None:
        """Remove an agent and return it, or None if it was not registered.

        A session whose last agent leaves is dropped in the same step, under the lock: a
        registration for the same user lands either before (the session stays) or after
        (in a fresh session), and a conditional cleanup finds either the agent or no session.
        """
        async with self._lock:
            session = self._user_sessions.get(user_id)
            if session is None:
                return None
            agent = session._agents.pop(agent_id, None)
            if agent is not None:
                self._agent_total -= 1
                if session._agents:
                    self._note(user_id)
                else:
                    self._drop(user_id)
            return agent

    async def detach_session(self, user_id: str) -> UserAgentSession | None:
        """Remove the user's session from the registry and hand it to the caller."""
        return (await self.detach_session_if(user_id, lambda _session: True))[1]

    async def detach_session_if(
        self, user_id: str, condition: Callable[[UserAgentSession], bool]
    ) -> tuple[bool, UserAgentSession | None]:
        """Remove the user's session only if `condition(session)` holds, in one critical section.

        Returns (whether the user had a session, the detached session or None). `condition`
        runs under the registry lock: it must be quick and must not await, so no registration
        or removal can slip between the check and the detach.
        """
        async with self._lock:
            session = self._user_sessions.get(user_id)
            if session is None:
                return False, None
            if not condition(session):
                return True, None
            self._drop(user_id)
            return True, session

    def get_session(self, user_id: str) -> UserAgentSession | None:
        """The user's session if there is one (never creates)."""
        return self._user_sessions.get(user_id)

    def sessions(self) -> tuple[UserAgentSession, ...]:
        """Every session, in creation order."""
        return tuple(self._user_sessions.values())

    def snapshot(
        self,
        *,
        leak_grace_seconds: float = DEFAULT_LEAK_GRACE_SECONDS,
        since: int | None = None,
    ) -> RegistrySnapshot:
        """A snapshot for the exporter; cheap, call it on the event loop.

        Cleaned agents still alive `leak_grace_seconds` after their cleanup are counted here,
        on the loop, where the lifecycle manager tracks them. With `since` (a generation of
        this registry) it carries what changed after it and the changed users' figures, read
        now, with the totals: a renderer that rendered generation `since` (or later) updates
        only those users.
        """
        return self._snapshot(leak_grace_seconds, since, _ChangedRows(since))

    async def snapshot_in_steps(
        self,
        *,
        leak_grace_seconds: float = DEFAULT_LEAK_GRACE_SECONDS,
        since: int | None = None,
        copy_sessions: bool = True,
        max_changes: int | None = None,
    ) -> RegistrySnapshot:
        """`snapshot()`, the changed users' rows read `ROWS_STEP` at a time with the loop
        running between steps (1,000 rows held it ~2 ms in one go at 100,000 users).

        Still one moment of the registry, its end: the users changed while a step was read
        are read again, and the last step (what changed since the one before, the totals,
        the sessions) takes no await. After a few rounds the rest is read in that step.
        With `copy_sessions=False` a snapshot carrying changes keeps only the number of
        sessions and the last ones (`SessionsAt`: what a render of the changes reads);
        read whole after the registry changed, they raise `SnapshotExpired`.

        Past `max_changes` users changed or gone since `since` (seen at a round's start or
        in the last step), no more rows are read: the snapshot is a full one, as without
        `since` (no changes, every session copied), however the rounds went. A backend
        changing users faster than the rounds read them never makes the last step read
        more than that many rows.
        """
        rows = _ChangedRows(since, max_changes)
        for _ in range(_ROUNDS):
            if since is None or not await rows.read_in_steps(self):
                break
        return self._snapshot(leak_grace_seconds, since, rows, copy_sessions)

    def _snapshot(
        self,
        leak_grace_seconds: float,
        since: int | None,
        rows: _ChangedRows,
        copy_sessions: bool = True,
    ) -> RegistrySnapshot:
        tracker = self.lifecycle_manager.cleaned_agents
        changes = None if since is None else rows.changes(self, since)
        changed_rows = None if changes is None else rows.finish(self, changes)
        sessions: Sequence[UserAgentSession] = (
            self.sessions() if copy_sessions or changes is None else self._sessions_at(changes)
        )
        return RegistrySnapshot(
            taken_at=self.clock(),
            thresholds=self.thresholds,
            sessions=sessions,
            cleaned_agents_alive=tracker.alive_after(leak_grace_seconds),
            cleaned_agents_untracked=tracker.untracked_total,
            epoch=self.epoch,
            generation=self.generation,
            changes=changes,
            changed_rows=changed_rows,
            totals=self.totals,
        )

    def _sessions_at(self, changes: Changes) -> SessionsAt:
        """The sessions now, uncopied: their number and the last ones, back to the first
        whose user did not change (the changed ones at the end: the sessions created since)."""
        sessions = self._user_sessions.values()
        end = changed_at_end(sessions, changes.changed)
        # And the session before them: a reader's scan from the end stops on it.
        end[:0] = islice(reversed(sessions), len(end), len(end) + 1)
        return SessionsAt(
            lambda: self._user_sessions,
            lambda: self.generation,
            self.generation,
            len(self._user_sessions),
            end,
        )

    def _row(self, user_id: str) -> SessionRow | None:
        session = self._user_sessions.get(user_id)
        if session is None:
            return None
        return SessionRow(user_id, len(session._agents), session._created)

    async def monitor_all_users(self) -> dict[str, Any]:
        """Every user's monitoring result plus registry-wide issues."""
        return await self.lifecycle_manager.monitor_all_users()

    def _session_for(self, user_id: str) -> UserAgentSession:
        check_user_id(user_id)
        session = self._user_sessions.get(user_id)
        if session is None:
            session = UserAgentSession(user_id, clock=self.clock, owner=self)
            self._user_sessions[user_id] = session
            self._map_peak = max(self._map_peak, len(self._user_sessions))
            self._note(user_id)
        return session

    def _drop(self, user_id: str) -> None:
        """Remove the user's session from the map (the lock held); shrink a mostly empty map
        and the change log with it."""
        session = self._user_sessions.pop(user_id)
        session._dropped = True
        self._agent_total -= len(session._agents)
        self._note(user_id)
        held = len(self._user_sessions)
        if self._map_peak >= _REBUILD_FROM and held * _REBUILD_RATIO < self._map_peak:
            # Amortised: a rebuild copies n sessions after at least 15n have left.
            self._user_sessions = dict(self._user_sessions)
            self._map_peak = held
            self._log.fit()


class _ChangedRows:
    """The changed users' rows of a delta snapshot, read against the change log: a row read
    before its user changed again is read again, so at the end every row is the user's now.
    """

    __slots__ = ("most", "no_delta", "read_from", "rows")

    def __init__(self, since: int | None, most: int | None = None) -> None:
        self.read_from = since  # every row is its user's as of this generation or later
        self.rows: dict[str, SessionRow] = {}
        self.most = most  # past this many users changed or gone since `since`: no delta
        self.no_delta = False

    def changes(self, registry: AgentRegistry, since: int) -> Changes | None:
        """What changed since `since`, now; None past `most` users or once the log could
        not tell (then or at an earlier read: the snapshot is a full one)."""
        changes = None if self.no_delta else registry.changes_since(since, most=self.most)
        self.no_delta = changes is None
        return changes

    async def read_in_steps(self, registry: AgentRegistry) -> bool:
        """Read the users changed since `read_from`, `ROWS_STEP` at a time, yielding to the
        loop between steps; False (nothing read) when few enough are left for one step, or
        too many (past `most`: those changed since `read_from` changed since `since` too)."""
        assert self.read_from is not None
        changes = self.changes(registry, self.read_from)
        if changes is None or len(changes.changed) <= ROWS_STEP:
            return False
        self._forget(changes.removed)
        changed = list(changes.changed)
        self.read_from = changes.generation
        for lo in range(0, len(changed), ROWS_STEP):
            if lo:
                await asyncio.sleep(0)
            self._read(registry, changed[lo : lo + ROWS_STEP])
        await asyncio.sleep(0)
        return True

    def finish(self, registry: AgentRegistry, changes: Changes) -> dict[str, SessionRow]:
        """The rows of `changes` (since the snapshot's `since`, read now): the users changed
        since the last step read, and the ones read before that have not changed since."""
        recent = changes
        if self.read_from != changes.since:  # steps were read: only what changed since
            assert self.read_from is not None
            recent = registry.changes_since(self.read_from) or changes
        self._forget(recent.removed)
        self._read(registry, recent.changed)
        if self.rows.keys() != changes.changed:  # never expected: read them all now
            self.rows.clear()
            self._read(registry, changes.changed)
        return self.rows

    def _forget(self, user_ids: Iterable[str]) -> None:
        for user_id in user_ids:
            self.rows.pop(user_id, None)

    def _read(self, registry: AgentRegistry, user_ids: Iterable[str]) -> None:
        rows = self.rows
        for user_id in user_ids:
            row = registry._row(user_id)
            if row is None:  # gone since: the next step's changes say so
                rows.pop(user_id, None)
            else:
                rows[user_id] = row
