"""Shared fixtures: a controllable clock, registries, agents that misbehave on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent_registry_exporter import AgentRegistry, Thresholds

DATA = Path(__file__).parent / "data"
# 2026-11-27T12:00:00Z: every test's "now" unless it moves the clock.
T0 = 1_795_780_800.0


class FakeClock:
    """A clock tests move by hand, so nothing ever sleeps to age a session."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingAgent:
    """An agent that counts how often it was closed."""

    def __init__(self, name: str = "agent") -> None:
        self.name = name
        self.closes = 0

    async def aclose(self) -> None:
        self.closes += 1


class FailingAgent(RecordingAgent):
    async def aclose(self) -> None:
        self.closes += 1
        raise RuntimeError("socket already gone")


class HangingAgent(RecordingAgent):
    async def aclose(self) -> None:
        self.closes += 1
        await asyncio.sleep(3600)


class SyncCloseAgent:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> AgentRegistry:
    return AgentRegistry(thresholds=Thresholds(), clock=clock, agent_close_timeout=0.2)


@pytest.fixture
def fill(registry: AgentRegistry, clock: FakeClock) -> Callable[..., object]:
    """Add `agents` agents for `user`, optionally backdating the session by `age_hours`."""

    async def _fill(user: str, agents: int, age_hours: float = 0.0) -> list[RecordingAgent]:
        made = [RecordingAgent(f"{user}/{n}") for n in range(agents)]
        for n, agent in enumerate(made):
            await registry.register_user_agent(user, f"agent-{n}", agent)
        session = await registry.get_user_session(user)
        session.created_at = datetime.fromtimestamp(clock(), UTC) - timedelta(hours=age_hours)
        return made

    return _fill
