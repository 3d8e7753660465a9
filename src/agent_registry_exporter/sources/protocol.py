"""`RegistrySource`: what the exporter server needs of a registry, wherever it lives."""

from __future__ import annotations

from typing import Any, Protocol

from ..lifecycle import CleanupResult
from ..registry import RegistrySnapshot

__all__ = ["RegistrySource"]


class RegistrySource(Protocol):
    """The three things the exporter server needs of a registry."""

    async def snapshot(self) -> RegistrySnapshot:
        """The sessions and thresholds to render."""
        ...

    async def monitor_user(self, user_id: str) -> dict[str, Any]:
        """The lifecycle manager's `monitor_memory_usage` result for one user."""
        ...

    async def cleanup_user(self, user_id: str, *, if_violating: bool = True) -> CleanupResult:
        """The lifecycle manager's `trigger_cleanup` for one user.

        By default only a session over a threshold is detached, checked atomically with the
        detach; a healthy one comes back with `not_violating=True`, untouched.
        """
        ...
