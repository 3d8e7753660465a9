"""Where the server gets its data: `RegistrySource` and its in-process implementation."""

from __future__ import annotations

from typing import Any, Protocol

from .lifecycle import CleanupResult
from .registry import AgentRegistry, RegistrySnapshot

__all__ = ["InProcessSource", "RegistrySource"]


class RegistrySource(Protocol):
    """The three things the exporter server needs of a registry."""

    async def snapshot(self) -> RegistrySnapshot:
        """The sessions and thresholds to render."""
        ...

    async def monitor_user(self, user_id: str) -> dict[str, Any]:
        """The lifecycle manager's `monitor_memory_usage` result for one user."""
        ...

    async def cleanup_user(self, user_id: str) -> CleanupResult:
        """The lifecycle manager's `trigger_cleanup` for one user."""
        ...


class InProcessSource:
    """A registry living in the same process (the embedded "sidecar server")."""

    def __init__(self, registry: AgentRegistry) -> None:
        self.registry = registry

    async def snapshot(self) -> RegistrySnapshot:
        return self.registry.snapshot()

    async def monitor_user(self, user_id: str) -> dict[str, Any]:
        return await self.registry.lifecycle_manager.monitor_memory_usage(user_id)

    async def cleanup_user(self, user_id: str) -> CleanupResult:
        return await self.registry.lifecycle_manager.trigger_cleanup(user_id)
