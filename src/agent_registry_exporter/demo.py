"""A simulated multi-user workload: healthy users, users over the agent limit, old sessions."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .lifecycle import Thresholds
from .registry import AgentRegistry
from .server import start_exporter
from .settings import Settings

__all__ = ["DemoAgent", "WorkloadShape", "populate"]


class DemoAgent:
    """A stand-in agent: closing it is all the registry ever does to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class WorkloadShape:
    """How many users of each kind to create."""

    healthy: int = 12
    too_many_agents: int = 3
    too_old: int = 3


async def populate(
    registry: AgentRegistry, shape: WorkloadShape | None = None, *, seed: int = 7
) -> dict[str, list[str]]:
    """Fill the registry and return the user ids of each kind."""
    shape = shape or WorkloadShape()
    rng = random.Random(seed)
    limits = registry.thresholds
    kinds: dict[str, list[str]] = {"healthy": [], "too_many_agents": [], "too_old": []}
    now = datetime.fromtimestamp(registry.clock(), UTC)
    for i in range(shape.healthy):
        user = f"user-{i:03d}"
        await _add_agents(registry, user, rng.randint(1, max(1, limits.agents_per_user // 2)))
        kinds["healthy"].append(user)
    for i in range(shape.too_many_agents):
        user = f"leaky-{i:03d}"
        await _add_agents(registry, user, limits.agents_per_user + 1 + rng.randint(0, 20))
        kinds["too_many_agents"].append(user)
    for i in range(shape.too_old):
        user = f"stale-{i:03d}"
        await _add_agents(registry, user, rng.randint(1, 10))
        session = await registry.get_user_session(user)
        session.created_at = now - timedelta(seconds=limits.session_age_seconds + 2 * 3600)
        kinds["too_old"].append(user)
    return kinds


async def _add_agents(registry: AgentRegistry, user: str, count: int) -> None:
    for n in range(count):
        await registry.register_user_agent(user, f"agent-{n}", DemoAgent(f"{user}/agent-{n}"))


async def run_demo(settings: Settings, thresholds: Thresholds, *, duration: float) -> int:
    """Serve the demo workload for `duration` seconds (the full loop comes with the stack)."""
    registry = AgentRegistry(thresholds=thresholds)
    kinds = await populate(registry)
    server = await start_exporter(registry, settings)
    print(f"demo workload { ({k: len(v) for k, v in kinds.items()}) } on {server.url}/metrics")
    try:
        await asyncio.sleep(duration)
    finally:
        await server.stop()
    return 0
