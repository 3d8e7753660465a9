"""The in-process source: a registry living in the exporter's own process (embedded mode)."""

from __future__ import annotations

from ..registry import (
    DEFAULT_LEAK_GRACE_SECONDS,
    AgentRegistry,
    CleanupResult,
    MonitorResult,
    RegistrySnapshot,
)

__all__ = ["InProcessSource"]

# A snapshot carries the changes of at most this share of the users (and never fewer than
# the floor): past it a render of the changes touches nearly every chunk anyway (96% of the
# 64-user chunks hold a changed user at 5% scattered churn), and reading the changes would
# hold the host's loop for the change log (~25 ms at 100,000 users changed) in one step.
_DELTA_SHARE = 10
_DELTA_FLOOR = 5_000


class InProcessSource:
    """A registry living in the same process (the embedded "sidecar server")."""

    def __init__(
        self,
        registry: AgentRegistry,
        *,
        leak_grace_seconds: float = DEFAULT_LEAK_GRACE_SECONDS,
        delta_renders_up_to: int = 0,
    ) -> None:
        self.registry = registry
        self.leak_grace_seconds = leak_grace_seconds
        # The renderer takes a snapshot's changes only while it exports every user: up to
        # this many users (0: never), a snapshot with changes leaves the session list
        # uncopied (`SessionsAt`; read whole after a change: `SnapshotExpired`).
        self.delta_renders_up_to = delta_renders_up_to
        # The generation of the previous snapshot: the next one carries what changed since.
        self._last_generation: int | None = None

    async def snapshot(self) -> RegistrySnapshot:
        """The registry now, with what changed since the previous snapshot (a renderer that
        rendered that one re-renders only the changed users), the changed users read in
        steps so the loop keeps running; a full one past a tenth of the users changed."""
        users = len(self.registry)
        snapshot = await self.registry.snapshot_in_steps(
            leak_grace_seconds=self.leak_grace_seconds,
            since=self._last_generation,
            copy_sessions=self.delta_renders_up_to <= 0 or users > self.delta_renders_up_to,
            max_changes=max(_DELTA_FLOOR, users // _DELTA_SHARE),
        )
        self._last_generation = snapshot.generation
        return snapshot

    async def peek(self) -> RegistrySnapshot:
        """The registry now, leaving the changes to the next `snapshot()`."""
        return self.registry.snapshot(leak_grace_seconds=self.leak_grace_seconds)

    async def monitor_user(self, user_id: str) -> MonitorResult:
        return await self.registry.lifecycle_manager.monitor_user(user_id)

    async def cleanup_user(self, user_id: str, *, if_violating: bool = True) -> CleanupResult:
        return await self.registry.lifecycle_manager.trigger_cleanup(
            user_id, if_violating=if_violating
        )
