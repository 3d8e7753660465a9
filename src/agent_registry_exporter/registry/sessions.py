"""Sessions: one user's live agents, and the rows and columns the exporter reads of them."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from operator import attrgetter
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol, overload

__all__ = [
    "Clock",
    "SessionColumns",
    "SessionLike",
    "SessionOwner",
    "SessionRow",
    "UserAgentSession",
    "agent_counts",
    "check_user_id",
    "created_timestamps",
]

Clock = Callable[[], float]


class SessionOwner(Protocol):
    """The registry holding a session, told when a caller changes the session directly."""

    def session_changed(self, session: UserAgentSession, agents_delta: int) -> None: ...


class UserAgentSession:
    """One user's live agents and when the session started."""

    __slots__ = ("_agents", "_clock", "_created", "_dropped", "_owner", "user_id")

    def __init__(
        self,
        user_id: str,
        *,
        clock: Clock = time.time,
        created_at: datetime | None = None,
        owner: SessionOwner | None = None,
    ) -> None:
        self.user_id = user_id
        self._clock = clock
        self._agents: dict[str, Any] = {}
        self._dropped = False
        self._owner: SessionOwner | None = None
        # Kept as Unix seconds: the exporter reads it for every user on every scrape.
        self._created: float = clock()
        if created_at is not None:
            self.created_at = created_at
        self._owner = owner

    @property
    def created_timestamp(self) -> float:
        """Session start, Unix seconds; settable (tests backdate it): the registry is told."""
        return self._created

    @created_timestamp.setter
    def created_timestamp(self, value: float) -> None:
        self._created = value
        if self._owner is not None and not self._dropped:
            self._owner.session_changed(self, 0)

    @property
    def created_at(self) -> datetime:
        """Session start as a timezone-aware UTC datetime; settable (tests backdate it)."""
        return datetime.fromtimestamp(self._created, UTC)

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
    def dropped(self) -> bool:
        """True once the registry let go of this session (its last agent left, or a cleanup
        detached it). Agents are never registered into it again: the user's next agent
        starts a fresh session, the one the registry exports."""
        return self._dropped

    @property
    def uptime_seconds(self) -> float:
        return self._clock() - self._created

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
        if agents and self._owner is not None and not self._dropped:
            self._owner.session_changed(self, -len(agents))
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


_CREATED = attrgetter("_created")
_CREATED_TIMESTAMP = attrgetter("created_timestamp")


def created_timestamps(sessions: Sequence[SessionLike]) -> list[float]:
    """Each session's created timestamp; live sessions are read without the property call."""
    try:
        return list(map(_CREATED, sessions))
    except AttributeError:
        return list(map(_CREATED_TIMESTAMP, sessions))


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
