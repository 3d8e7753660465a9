"""Weak references to cleaned agents: an agent a cleanup closed should soon be garbage.

A cleanup that closes every agent can still leak when something else (a cache, a task, a
closure) keeps a reference to them. Each closed agent that supports weak references is
watched; one still alive `grace` seconds after its cleanup is counted as not freed.
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["CleanedAgentTracker"]

# About 250 bytes per watched agent: 10,000 is a few MB, and that many leaked agents is
# already an unmistakable leak; beyond it agents are counted as untracked.
DEFAULT_MAX_TRACKED = 10_000
# How long a cleaned agent may stay alive before it counts as not freed (setting
# leak_grace_seconds): long enough for a full garbage collection of reference cycles.
DEFAULT_LEAK_GRACE_SECONDS = 60.0


class CleanedAgentTracker:
    """Watches closed agents through weak references; bounded in memory.

    Dead references are dropped as soon as the garbage collector reports them (their
    callbacks only queue an id, so they are safe in any thread and at any allocation).
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.time, max_tracked: int = DEFAULT_MAX_TRACKED
    ) -> None:
        if max_tracked < 0:
            raise ValueError("max_tracked must not be negative")
        self._clock = clock
        self.max_tracked = max_tracked
        # id(ref) -> (ref, cleaned_at), in cleanup order.
        self._watched: dict[int, tuple[weakref.ref[Any], float]] = {}
        self._dead: deque[int] = deque()
        self.untracked_total = 0

    def __len__(self) -> int:
        self._drop_dead()
        return len(self._watched)

    def track(self, agents: Iterable[Any]) -> None:
        """Watch agents a cleanup has just closed; count those that cannot be watched."""
        self._drop_dead()
        now = self._clock()
        for agent in agents:
            if len(self._watched) >= self.max_tracked:
                self.untracked_total += 1
                continue
            try:
                ref = weakref.ref(agent, self._died)
            except TypeError:  # ints, strings, tuples, classes with __slots__ and no weakref
                self.untracked_total += 1
                continue
            self._watched[id(ref)] = (ref, now)

    def alive_after(self, grace_seconds: float) -> int:
        """Watched agents still alive more than `grace_seconds` after their cleanup."""
        self._drop_dead()
        deadline = self._clock() - grace_seconds
        return sum(
            1
            for ref, cleaned_at in list(self._watched.values())
            if cleaned_at < deadline and ref() is not None
        )

    def alive(self) -> list[Any]:
        """The watched agents still alive, oldest cleanup first (for a debug session)."""
        self._drop_dead()
        return [agent for ref, _ in list(self._watched.values()) if (agent := ref()) is not None]

    def _died(self, ref: weakref.ref[Any]) -> None:
        # Runs inside the garbage collector: no dict mutation here, only an atomic append.
        self._dead.append(id(ref))

    def _drop_dead(self) -> None:
        while self._dead:
            self._watched.pop(self._dead.popleft(), None)
