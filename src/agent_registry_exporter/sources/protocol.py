"""`RegistrySource`: what the exporter server needs of a registry, wherever it lives."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Protocol, runtime_checkable

from prometheus_client.core import Metric

from ..registry import CleanupResult, MonitorResult, RegistrySnapshot

__all__ = ["LooksUpInBatches", "Peeks", "RegistrySource", "WorkerSources", "peek"]


class RegistrySource(Protocol):
    """The three things the exporter server needs of a registry."""

    async def snapshot(self) -> RegistrySnapshot:
        """The sessions and thresholds to render."""
        ...

    async def monitor_user(self, user_id: str) -> MonitorResult:
        """The lifecycle manager's check of one user; never raises (a failure is
        `Status.ERROR` with `error` saying why)."""
        ...

    async def cleanup_user(self, user_id: str, *, if_violating: bool = True) -> CleanupResult:
        """The lifecycle manager's `trigger_cleanup` for one user.

        By default only a session over a threshold is detached, checked atomically with the
        detach; a healthy one comes back with `not_violating=True`, untouched.
        """
        ...


@runtime_checkable
class WorkerSources(Protocol):
    """A source made of several workers' registries (sidecar mode); never merged."""

    def worker(self, name: str) -> RegistrySource | None:
        """The registry of the worker with that name, or None if no such worker is there."""
        ...

    async def ready(self) -> str | None:
        """None while at least one worker answers, else why not."""
        ...

    def collect(self) -> Iterator[Metric]:
        """The workers' health as metric families (a prometheus_client collector)."""
        ...

    async def close(self) -> None:
        """Release the connections to the workers."""
        ...


@runtime_checkable
class LooksUpInBatches(Protocol):
    """A source that finds many users in one pass (private ids: one search of the sessions).

    The receiver calls `look_up` once per payload with every user the payload names, before
    asking about each of them: what one alert costs is then never a search of its own.
    """

    async def look_up(self, user_ids: Collection[str]) -> None:
        """Prepare the answers about `user_ids`, in one pass at most."""
        ...


@runtime_checkable
class Peeks(Protocol):
    """A source whose `snapshot()` carries what changed since its previous one (the
    in-process source), and which can also be read without moving that position."""

    async def peek(self) -> RegistrySnapshot:
        """The sessions now, carrying no changes; the next `snapshot()` still carries every
        change since the previous `snapshot()`."""
        ...


async def peek(source: RegistrySource) -> RegistrySnapshot:
    """A snapshot for a reader that renders nothing (a probe, a search of the sessions, a
    count): the renderer's next snapshot keeps the changes it renders from, which a
    `snapshot()` here would have taken (the scrape then walks every user again)."""
    if isinstance(source, Peeks):
        return await source.peek()
    return await source.snapshot()
