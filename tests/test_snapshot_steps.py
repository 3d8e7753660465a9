"""A delta snapshot reads its changed users' rows in steps, the event loop running between
them, and is still one moment of the registry: its end."""

from __future__ import annotations

import asyncio
import contextlib
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_registry_exporter import AgentRegistry
from agent_registry_exporter.registry import DuplicateAgentError, RegistrySnapshot
from agent_registry_exporter.registry import registry as registry_module
from agent_registry_exporter.sources import InProcessSource

from .conftest import FakeClock


async def registry_of(users: int) -> AgentRegistry:
    registry = AgentRegistry(clock=FakeClock())
    for n in range(users):
        await registry.register_user_agent(f"u{n}", "a0", object())
    return registry


class LoopTurns:
    """Counts the loop's turns while it runs (a task that yields at every turn)."""

    def __init__(self) -> None:
        self.turns = 0
        self._task = asyncio.ensure_future(self._count())

    async def _count(self) -> None:
        while True:
            await asyncio.sleep(0)
            self.turns += 1

    async def stop(self) -> int:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.turns


def same_moment(stepped: RegistrySnapshot, now: RegistrySnapshot) -> None:
    """`stepped` shows the registry exactly as `now`, a snapshot in one step just after."""
    assert stepped.changes is not None
    assert now.changes is not None
    assert stepped.generation == now.generation
    assert (stepped.changes.changed, stepped.changes.removed) == (
        now.changes.changed,
        now.changes.removed,
    )
    assert stepped.changed_rows == now.changed_rows
    assert stepped.totals == now.totals
    assert stepped.sessions == now.sessions


async def test_the_loop_runs_between_the_steps_of_a_large_delta() -> None:
    registry = await registry_of(3 * registry_module.ROWS_STEP)
    since = registry.generation
    for n in range(3 * registry_module.ROWS_STEP):
        await registry.register_user_agent(f"u{n}", "a1", object())
    turns = LoopTurns()
    await asyncio.sleep(0)
    stepped = await registry.snapshot_in_steps(since=since)
    during = await turns.stop()
    same_moment(stepped, registry.snapshot(since=since))
    assert during >= 2  # three steps of rows: the loop ran between them


async def test_the_in_process_source_reads_its_deltas_in_steps() -> None:
    registry = await registry_of(3 * registry_module.ROWS_STEP)
    source = InProcessSource(registry)
    await source.snapshot()
    for n in range(3 * registry_module.ROWS_STEP):
        await registry.register_user_agent(f"u{n}", "a1", object())
    turns = LoopTurns()
    await asyncio.sleep(0)
    snapshot = await source.snapshot()
    assert await turns.stop() >= 2
    assert snapshot.changes is not None
    assert len(snapshot.changes.changed) == 3 * registry_module.ROWS_STEP


async def test_a_small_delta_is_read_in_one_step() -> None:
    registry = await registry_of(10)
    since = registry.generation
    await registry.register_user_agent("u1", "a1", object())
    turns = LoopTurns()
    await asyncio.sleep(0)
    stepped = await registry.snapshot_in_steps(since=since)
    assert await turns.stop() == 0
    same_moment(stepped, registry.snapshot(since=since))


operation = st.one_of(
    st.tuples(st.just("register"), st.integers(0, 29), st.integers(0, 2)),
    st.tuples(st.just("unregister"), st.integers(0, 29), st.integers(0, 2)),
    st.tuples(st.just("detach"), st.integers(0, 29)),
    st.tuples(st.just("session"), st.integers(0, 29)),
    st.tuples(st.just("backdate"), st.integers(0, 29)),
)


async def apply(registry: AgentRegistry, op: str, *args: int) -> None:
    user = f"u{args[0]}"
    if op == "register":
        with contextlib.suppress(DuplicateAgentError):
            await registry.register_user_agent(user, f"a{args[1]}", object())
    elif op == "unregister":
        await registry.unregister_user_agent(user, f"a{args[1]}")
    elif op == "detach":
        await registry.detach_session(user)
    elif op == "session":
        await registry.get_user_session(user)
    elif (session := registry.get_session(user)) is not None:
        session.created_timestamp -= 60


async def race(before: list[tuple], during: list[tuple]) -> None:
    """`before` changes the registry after a generation is marked; `during` runs one
    operation per loop turn while the stepped snapshot since that mark is read."""
    registry = await registry_of(20)
    with mock.patch.object(registry_module, "ROWS_STEP", 2):  # many steps, many races
        await raced(registry, before, during)


async def raced(registry: AgentRegistry, before: list[tuple], during: list[tuple]) -> None:
    since = registry.generation
    for op in before:
        await apply(registry, *op)

    async def racing() -> None:
        for op in during:
            await apply(registry, *op)
            await asyncio.sleep(0)

    racer = asyncio.ensure_future(racing())
    await asyncio.sleep(0)
    stepped = await registry.snapshot_in_steps(since=since)
    same_moment(stepped, registry.snapshot(since=since))
    await racer


@settings(max_examples=200, deadline=None)
@given(st.lists(operation, min_size=3, max_size=40), st.lists(operation, max_size=40))
def test_changes_racing_the_steps_leave_one_moment(before, during) -> None:
    """Registrations, removals, detaches, re-creations and backdating between the steps:
    the rows, changes, totals and sessions are those of the snapshot's end."""
    asyncio.run(race(before, during))
