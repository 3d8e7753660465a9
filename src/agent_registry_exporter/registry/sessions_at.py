"""A delta snapshot's session list, left uncopied: what a delta render reads of it is kept.

Copying 100,000 session references at every snapshot cost the loop 1.2-1.6 ms, and the new
tuple cost a collection of the youngest generation 2.6-3.6 ms more (the garbage collector
traverses every young container whole, holding the GIL). A render taking a snapshot's
changes reads only how many sessions there are and the last ones (the sessions created
since sit at the end); those are kept, read at the snapshot's moment. Read whole (a full
walk after all), the list is copied then, and only while the registry is still at that
moment: after a change, `SnapshotExpired` says to take a full snapshot instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import overload

from .sessions import UserAgentSession

__all__ = ["SessionsAt", "SnapshotExpired"]


class SnapshotExpired(RuntimeError):
    """A snapshot's sessions were read whole after the registry changed: take a new one."""


class SessionsAt(Sequence[UserAgentSession]):
    """The registry's sessions at generation `generation`: their number and the last of
    them (`end`, in order) are kept; the rest is read from the registry while unchanged."""

    __slots__ = ("_end", "_generation", "_generation_now", "_held", "_length", "_whole")

    def __init__(
        self,
        held: Callable[[], Mapping[str, UserAgentSession]],
        generation_now: Callable[[], int],
        generation: int,
        length: int,
        end: Sequence[UserAgentSession],
    ) -> None:
        self._held, self._generation_now = held, generation_now
        self._generation, self._length, self._end = generation, length, tuple(end)
        self._whole: tuple[UserAgentSession, ...] | None = None

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> UserAgentSession: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[UserAgentSession]: ...
    def __getitem__(self, index: int | slice) -> UserAgentSession | Sequence[UserAgentSession]:
        if isinstance(index, int) and self._whole is None:
            at = index + self._length if index < 0 else index
            start = self._length - len(self._end)
            if start <= at < self._length:
                return self._end[at - start]
        return self.whole()[index]

    def __iter__(self) -> Iterator[UserAgentSession]:
        return iter(self.whole())

    def whole(self) -> tuple[UserAgentSession, ...]:
        """Every session, copied now if the registry has not changed since; else
        `SnapshotExpired`."""
        if self._whole is None:
            if self._generation_now() != self._generation:
                raise SnapshotExpired("the registry changed since this snapshot")
            try:
                whole = tuple(self._held().values())  # one C call: no change in the middle
            except RuntimeError as exc:  # changed in the middle after all (a finalizer)
                raise SnapshotExpired("the registry changed while it was read") from exc
            if self._generation_now() != self._generation or len(whole) != self._length:
                raise SnapshotExpired("the registry changed while it was read")
            self._whole = whole
        return self._whole
