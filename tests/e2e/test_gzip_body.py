"""Prometheus reads a gzip body spliced from deflate pieces, cached ones reused, as one member."""

from __future__ import annotations

import asyncio

import pytest

from agent_registry_exporter.testing import wait_until_async

from .conftest import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

USERS = 3000  # about 47 chunks of 64: each family is many deflate pieces in one member


async def value(h: Harness, expr: str) -> float | None:
    result = await asyncio.to_thread(h.stack.query, expr)
    return float(result[0]["value"][1]) if result else None


async def test_every_piece_of_a_spliced_body_is_scraped(harness, registry) -> None:
    """All users of every chunk reach Prometheus, and a change in one chunk shows up (the
    other chunks' pieces are sent again as they were)."""
    for n in range(USERS):
        await registry.register_user_agent(f"member-user-{n:05d}", "a", object())
    selector = f'{{instance="{harness.instance}"}}'
    count_created = f"count(agent_registry_user_session_created_timestamp_seconds{selector})"
    agents = f"sum(agent_registry_user_agents{selector})"

    async def all_users_scraped() -> bool:
        return await value(harness, count_created) == USERS and (
            await value(harness, agents) == USERS
        )

    await wait_until_async(
        all_users_scraped, timeout=60, message=f"{USERS} users' series in Prometheus"
    )
    # One user late in the order changes: its chunk is re-rendered, the others are reused.
    await registry.register_user_agent(f"member-user-{USERS - 7:05d}", "b", object())

    async def change_scraped() -> bool:
        return await value(harness, agents) == USERS + 1

    await wait_until_async(
        change_scraped, timeout=60, message="the changed user's new count in Prometheus"
    )
    assert await value(harness, count_created) == USERS
