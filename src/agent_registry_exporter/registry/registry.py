"""The registry: the one owner of user sessions, and the snapshot the exporter reads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol, overload

from .cleaned import DEFAULT_LEAK_GRACE_SECONDS
from .lifecycle import AgentLifecycleManager, Thresholds

__all__ = [
    "AgentRegistry",
    "DuplicateAgentError",
    "RegistrySnapshot",
    "SessionColumns",
    "SessionLike",
    "SessionRow",
    "UserAgentSession",
    "agent_counts",
    "check_user_id",
]

Clock = Callable[[], float]


class DuplicateAgentError(ValueError):
    """An agent id is already registered in that user's session."""


class UserAgentSession:
    """One user's live agents and when the session started."""

    __slots__ = ("_agents", "_clock", "created_timestamp", "user_id")

    def __init__(
        self, user_id: str, *, clock: Clock = time.time, created_at: datetime | None = None
    ) -> None:
        self.user_id = user_id
        self._clock = clock
        self._agents: dict[str, Any] = {}
        # Kept as Unix seconds: the exporter reads it for every user on every scrape.
        self.created_timestamp: float = clock()
        if created_at is not None:
            self.created_at = created_at

    @property
    def created_at(self) -> datetime:
        """Session start as a timezone-aware UTC datetime; settable (tests backdate it)."""
        return datetime.fromtimestamp(self.created_timestamp, UTC)

    @created_at.setter
    def created_at(self, value: datetime) -> None:
        if value.tzinfo is None:
            raise ValueError("created_at must be timezone-aware (use datetime.now(UTC))")
        self.created_timestamp = value.timestamp()

    @property
    def agents(self) -> Mapping[str, Any]:
        """A read-only view of the agents by id."""
        return MappingProxyType(self._agents)

    @property
    def agent_count(self) -> int:
        return len(self._agents)

    @property
    def uptime_seconds(self) -> float:
        return self._clock() - self.created_timestamp

    def get_metrics(self) -> dict[str, Any]:
        """The session's figures, as the seed system reported them."""
        return {
            "user_id": self.user_id,
            "agent_count": len(self._agents),
            "uptime_seconds": self.uptime_seconds,
            "created_at": self.created_at.isoformat(),
            "agent_ids": list(self._agents),
        }

    def drain(self) -> list[tuple[str, Any]]:
        """Remove and return every agent (used once the session is detached)."""
        agents = list(self._agents.items())
        self._agents.clear()
        return agents

    def __repr__(self) -> str:
        return f"UserAgentSession(user_id={self.user_id!r}, agents={len(self._agents)})"


class SessionLike(Protocol):
    """What the exporter reads of a session: a live one, or a row received over HTTP."""

    @property
    def user_id(self) -> str: ...
    @property
    def agent_count(self) -> int: ...
    @property
    def created_timestamp(self) -> float: ...


def agent_counts(sessions: Sequence[SessionLike]) -> list[int]:
    """Each session's agent count, read once; live sessions are read without the property
    call (three times faster: a worker encodes every count at every scrape)."""
    try:
        return [len(s._agents) for s in sessions]  # type: ignore[attr-defined]
    except AttributeError:
        return [s.agent_count for s in sessions]


class SessionRow(NamedTuple):
    """A session reduced to the figures the exporter needs."""

    user_id: str
    agent_count: int
    created_timestamp: float


class SessionColumns(Sequence[SessionRow]):
    """Sessions held as three columns (what a worker sends the sidecar): one row per index,
    and the columns themselves for a renderer that reads them whole."""

    __slots__ = ("agent_counts", "created_timestamps", "user_ids")

    def __init__(
        self,
        user_ids: Sequence[str],
        agent_counts: Sequence[int],
        created_timestamps: Sequence[float],
    ) -> None:
        if not len(user_ids) == len(agent_counts) == len(created_timestamps):
            raise ValueError("session columns must have the same length")
        self.user_ids = user_ids
        self.agent_counts = agent_counts
        self.created_timestamps = created_timestamps

    def __len__(self) -> int:
        return len(self.user_ids)

    @overload
    def __getitem__(self, index: int) -> SessionRow: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[SessionRow]: ...
    def __getitem__(self, index: int | slice) -> SessionRow | Sequence[SessionRow]:
        if isinstance(index, slice):
            return SessionColumns(
                self.user_ids[index], self.agent_counts[index], self.created_timestamps[index]
            )
        return SessionRow(
            self.user_ids[index], self.agent_counts[index], self.created_timestamps[index]
        )


@dataclass(frozen=True, slots=True)
class RegistrySnapshot:
    """The sessions of one registry at `taken_at`, with the thresholds in force.

    Taking it copies only the list of sessions, so it is cheap on the event loop even for
    100,000 users; the renderer reads each session's agent count exactly once, so totals
    always equal the sum of the per-user values it prints.
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
        self._lock = asyncio.Lock()
        self.lifecycle_manager = AgentLifecycleManager(
            registry=self, agent_close_timeout=agent_close_timeout
        )

    def __len__(self) -> int:
        return len(self._user_sessions)

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

    async def unregister_user_agent(self, user_id: str, agent_id: str) -> Any | None:
        """Remove an agent and return it, or None if it was not registered."""
        async with self._lock:
            session = self._user_sessions.get(user_id)
            if session is None:
                return None
            return session._agents.pop(agent_id, None)

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
            del self._user_sessions[user_id]
            return True, session

    def get_session(self, user_id: str) -> UserAgentSession | None:
        """The user's session if there is one (never creates)."""
        return self._user_sessions.get(user_id)

    def sessions(self) -> tuple[UserAgentSession, ...]:
        """Every session, in creation order."""
        return tuple(self._user_sessions.values())

    def snapshot(
        self, *, leak_grace_seconds: float = DEFAULT_LEAK_GRACE_SECONDS
    ) -> RegistrySnapshot:
        """A snapshot for the exporter; cheap, call it on the event loop.

        Cleaned agents still alive `leak_grace_seconds` after their cleanup are counted here,
        on the loop, where the lifecycle manager tracks them.
        """
        tracker = self.lifecycle_manager.cleaned_agents
        return RegistrySnapshot(
            taken_at=self.clock(),
            thresholds=self.thresholds,
            sessions=self.sessions(),
            cleaned_agents_alive=tracker.alive_after(leak_grace_seconds),
            cleaned_agents_untracked=tracker.untracked_total,
        )

    async def monitor_all_users(self) -> dict[str, Any]:
        """Every user's monitoring result plus registry-wide issues."""
        return await self.lifecycle_manager.monitor_all_users()

    def _session_for(self, user_id: str) -> UserAgentSession:
        check_user_id(user_id)
        session = self._user_sessions.get(user_id)
        if session is None:
            session = self._user_sessions[user_id] = UserAgentSession(user_id, clock=self.clock)
        return session


def check_user_id(user_id: object) -> None:
    """A user id is non-empty text that encodes as UTF-8 (what every scrape must carry).

    Control characters and any script are fine: the renderer escapes what the format needs.
    A lone surrogate (what `json.loads('"\\ud800"')` yields) is not text and is refused.
    """
    if not isinstance(user_id, str) or not user_id:
        raise ValueError(f"user_id must be a non-empty string, not {user_id!r}")
    try:
        user_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"user_id {user_id!r} is not valid Unicode text: {exc.reason} at {exc.start}"
        ) from None
