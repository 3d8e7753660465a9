"""A delta snapshot reads its changed users' rows in steps, the event loop running between
them, and is still one moment of the registry: its end."""

from __future__ import annotations

import asyncio
import contextlib
from unittest import mock

import pytest
from aiohttp import ClientSession
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_registry_exporter import AgentRegistry
from agent_registry_exporter.exporting import OPENMETRICS, ExporterMetrics, Renderer, render
from agent_registry_exporter.registry import (
    DuplicateAgentError,
    RegistrySnapshot,
    SessionsAt,
    SnapshotExpired,
)
from agent_registry_exporter.registry import registry as registry_module
from agent_registry_exporter.sources import InProcessSource, in_process

from .conftest import FakeClock, loopback_exporter
from .test_render_cache import registry_part
from .test_render_deltas import full


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
    assert tuple(stepped.sessions) == tuple(now.sessions)


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


@pytest.mark.parametrize("users", [40_000, 100_000])
async def test_the_in_process_source_takes_no_delta_of_most_users(users) -> None:
    """A mass change (every user re-registered, a mass cleanup): more users changed than
    the bound (a tenth of the users, at least 5,000) and the snapshot is a full one, the
    host's loop spared the whole change log and rows in one step (a render of that many
    changes touches every chunk anyway); at the bound, a delta still."""
    registry = await registry_of(users)
    source = InProcessSource(registry)
    await source.snapshot()
    bound = max(in_process._DELTA_FLOOR, users // in_process._DELTA_SHARE)
    for n in range(bound):
        await registry.register_user_agent(f"u{n}", "a1", object())
    at_bound = await source.snapshot()
    assert at_bound.changes is not None
    assert at_bound.changes.users == bound
    for n in range(bound + 1):
        await registry.register_user_agent(f"u{n}", "a2", object())
    with mock.patch.object(AgentRegistry, "_row", side_effect=AssertionError("a row read")):
        past = await source.snapshot()
    assert past.changes is None
    assert past.sessions == registry.sessions()
    later = await source.snapshot()  # and the next one is a delta since that full one
    assert later.changes is not None
    assert later.changes.since == past.generation


async def test_a_small_delta_is_read_in_one_step() -> None:
    registry = await registry_of(10)
    since = registry.generation
    await registry.register_user_agent("u1", "a1", object())
    turns = LoopTurns()
    await asyncio.sleep(0)
    stepped = await registry.snapshot_in_steps(since=since)
    assert await turns.stop() == 0
    same_moment(stepped, registry.snapshot(since=since))


@pytest.mark.parametrize("changed", [2 * registry_module.ROWS_STEP, 10], ids=["rounds", "one step"])
async def test_past_max_changes_the_snapshot_is_full_and_no_row_is_read(changed) -> None:
    """One user more changed or gone than `max_changes`, seen at the first round's start
    (more than a step of rows) or in the last step (fewer, no round): a full snapshot of
    that moment, every session copied, no changes, and no changed user's row read (a delta
    past its worth is thrown away)."""
    registry = await registry_of(3 * registry_module.ROWS_STEP)
    since = registry.generation
    for n in range(1, changed + 1):
        await registry.register_user_agent(f"u{n}", "a1", object())
    await registry.detach_session("u0")
    with mock.patch.object(AgentRegistry, "_row", side_effect=AssertionError("a row read")):
        stepped = await registry.snapshot_in_steps(since=since, max_changes=changed)
    assert stepped.changes is None
    assert stepped.changed_rows is None
    assert stepped.sessions == registry.sessions()
    assert stepped.generation == registry.generation
    # One user fewer and it is a delta again, its rows read.
    exact = await registry.snapshot_in_steps(since=since, max_changes=changed + 1)
    assert exact.changes is not None
    assert exact.changes.users == changed + 1
    assert exact.changed_rows is not None
    assert len(exact.changed_rows) == changed


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


class TestSessionsLeftUncopied:
    """With `copy_sessions=False` a delta snapshot keeps the number of sessions and the
    last ones, not a copy of every session reference (nor a tuple for the collector)."""

    async def changed(self) -> tuple[AgentRegistry, RegistrySnapshot, int]:
        registry = await registry_of(50)
        since = registry.generation
        await registry.register_user_agent("u7", "a1", object())
        await registry.detach_session("u3")
        await registry.register_user_agent("u3", "a0", object())  # re-created: at the end
        await registry.register_user_agent("newcomer", "a0", object())
        return registry, await registry.snapshot_in_steps(since=since, copy_sessions=False), since

    async def test_the_number_and_the_last_sessions_are_those_of_the_moment(self) -> None:
        registry, snapshot, _ = await self.changed()
        assert isinstance(snapshot.sessions, SessionsAt)
        await registry.register_user_agent("later", "a0", object())  # after the moment
        now = registry.sessions()
        assert len(snapshot.sessions) == len(now) - 1
        assert [snapshot.sessions[at].user_id for at in (-1, -2, -3)] == ["newcomer", "u3", "u49"]
        with pytest.raises(SnapshotExpired):
            list(snapshot.sessions)  # read whole after a change: no mix of two moments

    async def test_read_whole_while_unchanged_it_is_the_sessions(self) -> None:
        registry, snapshot, _ = await self.changed()
        assert list(snapshot.sessions) == list(registry.sessions())
        assert tuple(snapshot.sessions[10:12]) == registry.sessions()[10:12]

    async def test_a_render_of_the_changes_reads_only_what_was_kept(self) -> None:
        """The registry changes before the render: a delta render needs no more than the
        number and the last sessions, and gives a full render's body of the moment."""
        registry = await registry_of(300)
        source, renderer = InProcessSource(registry, delta_renders_up_to=1000), Renderer()
        options = {"format": OPENMETRICS, "gzipped": True, "max_user_series": 1000}
        renderer.render(await source.snapshot(), ExporterMetrics("1"), **options)
        await registry.register_user_agent("u5", "extra", object())
        await registry.unregister_user_agent("u100", "a0")
        await registry.register_user_agent("newcomer", "a0", object())
        snapshot = await source.snapshot()
        assert isinstance(snapshot.sessions, SessionsAt)
        expected = render(full(snapshot), ExporterMetrics("1"), **options)
        await registry.register_user_agent("after-the-snapshot", "a0", object())
        ours = renderer.render(snapshot, ExporterMetrics("1"), **options)
        assert registry_part(ours) == registry_part(expected)

    async def test_a_scrape_walking_every_user_after_a_change_takes_a_full_snapshot(
        self, monkeypatch
    ) -> None:
        """The first scrape without gzip walks every user (its cache is empty); the registry
        changed after its snapshot (kept uncopied): it answers from a full snapshot, no 500."""
        registry = await registry_of(40)
        server = await loopback_exporter(registry, max_user_series=1000)
        taken = InProcessSource.snapshot

        async def changed_after(self: InProcessSource) -> RegistrySnapshot:
            snapshot = await taken(self)
            await registry.register_user_agent(f"after-{registry.generation}", "a0", object())
            return snapshot

        try:
            async with ClientSession() as http:
                url = f"{server.url}/metrics"
                async with http.get(url, headers={"Accept-Encoding": "gzip"}):
                    pass
                monkeypatch.setattr(InProcessSource, "snapshot", changed_after)
                async with http.get(url, headers={"Accept-Encoding": "identity"}) as resp:
                    assert resp.status == 200
                    body = await resp.text()
        finally:
            await server.stop()
        assert 'user_id="after-' in body  # the full snapshot's, taken after the change
        assert "agent_registry_exporter_render_failures_total 0.0" in body


async def test_a_source_that_never_renders_deltas_copies_an_empty_registry() -> None:
    """`delta_renders_up_to=0` (the default) means never: an empty registry's snapshot
    with changes is a copy too, read whole after a later change (it was a SessionsAt of
    length 0, raising SnapshotExpired: 0 users <= 0)."""
    registry = await registry_of(1)
    source = InProcessSource(registry)
    await source.snapshot()
    await registry.detach_session("u0")  # empty now, with a change since the last snapshot
    snapshot = await source.snapshot()
    await registry.register_user_agent("later", "a0", object())
    assert list(snapshot.sessions) == []
