"""The registry's change log: which users changed since a generation, and exact totals."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_registry_exporter import AgentRegistry
from agent_registry_exporter.registry import Changes, DuplicateAgentError
from agent_registry_exporter.registry import changes as changes_module
from agent_registry_exporter.registry.changes import LOG_MIN

from .conftest import FakeClock, RecordingAgent


class SlowAgent(RecordingAgent):
    """Yields to the loop while closing: other steps run in the middle of its cleanup."""

    async def aclose(self) -> None:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        self.closes += 1


def changed_since(registry: AgentRegistry, generation: int) -> Changes:
    changes = registry.changes_since(generation, registry.epoch)
    assert changes is not None, f"generation {generation} should still be in the log"
    return changes


class TestEveryMutationIsLogged:
    async def test_registering_creates_and_logs_the_user(self, registry) -> None:
        """A first agent creates the session: the user is changed, the generation moved."""
        before = registry.generation
        await registry.register_user_agent("u1", "a", object())
        changes = changed_since(registry, before)
        assert registry.generation > before
        assert changes == Changes(
            registry.epoch, before, registry.generation, frozenset({"u1"}), frozenset()
        )

    async def test_an_agent_count_change_logs_only_that_user(self, registry) -> None:
        """A second agent, then one removed: the user changed, the others did not."""
        for user in ("u1", "u2"):
            await registry.register_user_agent(user, "a", object())
        before = registry.generation
        await registry.register_user_agent("u1", "b", object())
        assert changed_since(registry, before).changed == {"u1"}
        middle = registry.generation
        await registry.unregister_user_agent("u1", "b")
        assert changed_since(registry, middle).changed == {"u1"}
        assert changed_since(registry, middle).removed == frozenset()

    async def test_the_last_agent_leaving_logs_a_removal(self, registry) -> None:
        """The session dropped with its last agent: the user is removed, not changed."""
        await registry.register_user_agent("u1", "a", object())
        before = registry.generation
        await registry.unregister_user_agent("u1", "a")
        changes = changed_since(registry, before)
        assert (changes.changed, changes.removed) == (frozenset(), {"u1"})

    async def test_session_creation_alone_is_logged(self, registry) -> None:
        """get_user_session creates an empty session: a new user to export."""
        before = registry.generation
        await registry.get_user_session("u1")
        assert changed_since(registry, before).changed == {"u1"}
        middle = registry.generation
        await registry.get_user_session("u1")  # already there: nothing changed
        assert registry.generation == middle

    async def test_a_detach_logs_a_removal(self, registry) -> None:
        """detach_session: the user is removed."""
        await registry.register_user_agent("u1", "a", object())
        before = registry.generation
        await registry.detach_session("u1")
        assert changed_since(registry, before).removed == {"u1"}

    async def test_a_refused_detach_changes_nothing(self, registry) -> None:
        """A condition that does not hold: no generation spent, nothing logged."""
        await registry.register_user_agent("u1", "a", object())
        before = registry.generation
        assert await registry.detach_session_if("u1", lambda _s: False) == (True, None)
        assert registry.generation == before

    async def test_a_cleanup_logs_a_removal(self, registry, fill) -> None:
        """trigger_cleanup detaches the session: the user is removed, the totals drop."""
        await fill("u1", 3)
        await fill("u2", 2)
        before = registry.generation
        await registry.lifecycle_manager.trigger_cleanup("u1")
        assert changed_since(registry, before).removed == {"u1"}
        assert registry.totals == (1, 2)

    async def test_backdating_a_session_logs_it(self, registry, clock) -> None:
        """created_at and created_timestamp set by a caller: the created time changed."""
        session = await registry.get_user_session("u1")
        before = registry.generation
        session.created_at = datetime.fromtimestamp(clock(), UTC) - timedelta(hours=2)
        assert changed_since(registry, before).changed == {"u1"}
        middle = registry.generation
        session.created_timestamp = clock() - 60
        assert changed_since(registry, middle).changed == {"u1"}

    async def test_a_dropped_session_changes_nothing_any_more(self, registry, clock) -> None:
        """Backdating a session the registry let go of logs nothing and moves no total."""
        session = await registry.get_user_session("u1")
        await registry.detach_session("u1")
        before = registry.generation
        session.created_timestamp = clock() - 60
        assert registry.generation == before

    async def test_a_user_gone_and_back_is_changed_not_removed(self, registry) -> None:
        """Removed, then registered again in a fresh session: present now, so changed."""
        await registry.register_user_agent("u1", "a", object())
        before = registry.generation
        await registry.unregister_user_agent("u1", "a")
        await registry.register_user_agent("u1", "b", object())
        changes = changed_since(registry, before)
        assert (changes.changed, changes.removed) == ({"u1"}, frozenset())

    async def test_nothing_changed_is_an_empty_change_set(self, registry) -> None:
        """Asked from the current generation: no ids at all, the same generation."""
        await registry.register_user_agent("u1", "a", object())
        now = registry.generation
        assert changed_since(registry, now) == Changes(
            registry.epoch, now, now, frozenset(), frozenset()
        )


class TestUnknownGenerations:
    def test_each_registry_has_its_own_epoch(self) -> None:
        """A restarted worker is a new registry: its epoch differs, so its changes do not apply."""
        first, second = AgentRegistry(), AgentRegistry()
        assert first.epoch != second.epoch
        assert second.changes_since(0, first.epoch) is None
        assert second.changes_since(0) is not None  # no epoch given: this registry's own

    async def test_a_generation_in_the_future_is_unknown(self, registry) -> None:
        """A generation the registry never reached (another process's): full snapshot."""
        await registry.register_user_agent("u1", "a", object())
        assert registry.changes_since(registry.generation + 1) is None
        assert registry.changes_since(-1) is None

    async def test_a_reader_far_behind_gets_none_and_the_log_stays_bounded(self, registry) -> None:
        """Past the log's room the oldest generations are forgotten: asking from one of them
        is unknown (the reader takes a full snapshot), and the log holds at most its bound."""
        start = registry.generation
        for n in range(3 * LOG_MIN):
            await registry.register_user_agent(f"u{n}", "a", object())
        for n in range(3 * LOG_MIN):
            await registry.unregister_user_agent(f"u{n}", "a")
        assert registry.changes_since(start) is None
        assert len(registry) == 0
        assert registry.log_size <= 2 * LOG_MIN
        recent = registry.generation - 10
        assert len(changed_since(registry, recent).removed) == 10

    async def test_a_mass_removal_leaves_no_lasting_log(self) -> None:
        """100,000 users gone: the log shrinks with the session map, to its floor."""
        registry = AgentRegistry(clock=FakeClock())
        users = 100_000
        for n in range(users):
            await registry.register_user_agent(f"u{n}", "a", object())
        for n in range(users):
            await registry.unregister_user_agent(f"u{n}", "a")
        assert registry.log_size <= 2 * LOG_MIN

    async def test_the_generation_in_the_log_reads_every_change_after_it(self, registry) -> None:
        """Each generation still kept gives exactly the users changed after it."""
        marks = []
        for n in range(50):
            marks.append(registry.generation)
            await registry.register_user_agent(f"u{n % 7}", f"a{n}", object())
        for n, mark in enumerate(marks):
            expected = {f"u{m % 7}" for m in range(n, 50)}
            assert changed_since(registry, mark).changed == expected


class TestMostUsers:
    async def test_past_most_users_changed_or_gone_is_none(self, registry) -> None:
        """`most`: past that many users changed or gone, None (a full snapshot answers); at
        it, the changes, every user once however often it changed."""
        start = registry.generation
        for n in range(4):
            await registry.register_user_agent(f"u{n}", "a", object())
            await registry.register_user_agent(f"u{n}", "b", object())
        await registry.detach_session("u0")
        assert registry.changes_since(start, most=3) is None
        changes = registry.changes_since(start, registry.epoch, most=4)
        assert changes is not None
        assert (changes.changed, changes.removed) == ({"u1", "u2", "u3"}, {"u0"})
        assert changes.users == 4
        assert registry.changes_since(registry.generation, most=0) is not None  # none changed

    async def test_a_reader_far_behind_stops_reading_past_most(self, registry, monkeypatch) -> None:
        """A sidecar far behind (a mass change since it asked) costs the worker's loop the
        log up to `most` users, not the whole log since its generation in one step (100,000
        users changed: 23 ms, 0.25 ms read to 5,000)."""
        monkeypatch.setattr(changes_module, "_READ_STEP", 8)
        start = registry.generation
        for n in range(1000):
            await registry.register_user_agent(f"u{n}", "a", object())
        read = 0

        class Counted(list[str]):
            def __getitem__(self, index):  # type: ignore[no-untyped-def]
                nonlocal read
                got = super().__getitem__(index)
                read += len(got) if isinstance(index, slice) else 1
                return got

        registry._log._ids = Counted(registry._log._ids)  # type: ignore[attr-defined]
        logged = registry.generation - start
        per_user = logged // 1000  # a session's creation and its agent: one change each
        assert registry.changes_since(start, most=20) is None
        assert 20 * per_user < read <= 21 * per_user + 8  # one step past the 21st user
        read = 0
        assert len(changed_since(registry, start).changed) == 1000  # unbounded: all read
        assert read == logged


class TestTotals:
    async def test_totals_follow_every_kind_of_change(self, registry, clock) -> None:
        """Users and agents, exact after registrations, removals, a detach and a cleanup."""
        assert registry.totals == (0, 0)
        for n in range(3):
            await registry.register_user_agent("u1", f"a{n}", object())
        await registry.register_user_agent("u2", "a", object())
        await registry.get_user_session("u3")
        assert registry.totals == (3, 4)
        await registry.unregister_user_agent("u1", "a0")
        await registry.unregister_user_agent("u1", "missing")
        assert registry.totals == (3, 3)
        await registry.detach_session("u2")
        assert registry.totals == (2, 2)
        await registry.lifecycle_manager.trigger_cleanup("u1")
        assert registry.totals == (1, 0)


operation = st.one_of(
    st.tuples(st.just("register"), st.integers(0, 4), st.integers(0, 3)),
    st.tuples(st.just("unregister"), st.integers(0, 4), st.integers(0, 3)),
    st.tuples(st.just("session"), st.integers(0, 4)),
    st.tuples(st.just("detach"), st.integers(0, 4)),
    st.tuples(st.just("cleanup"), st.integers(0, 4), st.booleans()),
    st.tuples(st.just("backdate"), st.integers(0, 4)),
    st.tuples(st.just("yield")),
    st.tuples(st.just("mark")),
)


async def play(operations: list[tuple]) -> None:
    """Any operations, cleanups racing the rest: totals exact at every step, and every
    generation marked reads back exactly the users whose figures differ since then."""
    clock = FakeClock()
    registry = AgentRegistry(clock=clock, agent_close_timeout=5)
    cleanups = []
    marks: list[tuple[int, dict[str, tuple[int, float, int]]]] = []
    for op, *args in operations:
        user = f"u{args[0]}" if args else ""
        if op == "register":
            with contextlib.suppress(DuplicateAgentError):
                await registry.register_user_agent(user, f"a{args[1]}", SlowAgent())
        elif op == "unregister":
            await registry.unregister_user_agent(user, f"a{args[1]}")
        elif op == "session":
            await registry.get_user_session(user)
        elif op == "detach":
            await registry.detach_session(user)
        elif op == "cleanup":
            task = registry.lifecycle_manager.trigger_cleanup(user, if_violating=args[1])
            cleanups.append(asyncio.ensure_future(task))
        elif op == "backdate" and (session := registry.get_session(user)) is not None:
            session.created_timestamp -= 7200
        elif op == "mark":
            marks.append((registry.generation, figures(registry)))
        await asyncio.sleep(0)
        assert_totals_exact(registry)
        assert_marks_read_back(registry, marks)
    await asyncio.gather(*cleanups)
    assert_totals_exact(registry)
    assert_marks_read_back(registry, marks)


def figures(registry: AgentRegistry) -> dict[str, tuple[int, float, int]]:
    """What an exporter shows of each user (and which session object it is)."""
    return {s.user_id: (s.agent_count, s.created_timestamp, id(s)) for s in registry.sessions()}


def assert_totals_exact(registry: AgentRegistry) -> None:
    sessions = registry.sessions()
    assert registry.totals == (len(sessions), sum(s.agent_count for s in sessions))


def assert_marks_read_back(registry: AgentRegistry, marks: list) -> None:
    now = figures(registry)
    for generation, then in marks:
        changes = changed_since(registry, generation)
        assert changes.changed <= now.keys()
        assert not changes.removed & now.keys()
        differing = {u for u, f in now.items() if then.get(u) != f}
        assert differing <= changes.changed, "a user changed since the mark is not listed"
        assert then.keys() - now.keys() <= changes.removed, "a user gone is not listed"


class TestAnyHistory:
    @settings(max_examples=300, deadline=None)
    @given(st.lists(operation, max_size=30))
    def test_totals_are_exact_and_changes_complete_under_any_history(self, operations) -> None:
        """Registrations, removals, detaches, racing cleanups, backdating: totals exact and
        the changes since every marked generation cover every difference."""
        asyncio.run(play(operations))

    async def test_a_cleanup_racing_a_registration_logs_both(self, registry, clock) -> None:
        """A registration while the cleanup closes the old agents: the user is in `changed`
        (a fresh session), the totals count only the new agent."""
        for n in range(3):
            await registry.register_user_agent("u1", f"a{n}", SlowAgent())
        before = registry.generation
        cleanup = asyncio.ensure_future(registry.lifecycle_manager.trigger_cleanup("u1"))
        await asyncio.sleep(0)  # detached; its agents are closing
        await registry.register_user_agent("u1", "fresh", RecordingAgent())
        await cleanup
        changes = changed_since(registry, before)
        assert (changes.changed, changes.removed) == ({"u1"}, frozenset())
        assert registry.totals == (1, 1)


@pytest.mark.parametrize("count", [0, 1, 5])
async def test_draining_a_live_session_keeps_the_totals(registry, count) -> None:
    """drain() on a session still in the registry (not how cleanup uses it) is logged."""
    for n in range(count):
        await registry.register_user_agent("u1", f"a{n}", object())
    session = await registry.get_user_session("u1")
    before = registry.generation
    session.drain()
    assert registry.totals == (1, 0)
    if count:
        assert changed_since(registry, before).changed == {"u1"}
