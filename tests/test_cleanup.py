"""trigger_cleanup: detach first, close every agent once, survive bad agents, lose nothing."""

from __future__ import annotations

import asyncio
import threading

from agent_registry_exporter import AgentRegistry
from agent_registry_exporter.testing import wait_until_async

from .conftest import (
    FailingAgent,
    HangingAgent,
    RecordingAgent,
    SyncCloseAgent,
    assert_kept_or_closed_once,
)


class TestTriggerCleanup:
    async def test_every_agent_is_closed_exactly_once(self, registry, fill) -> None:
        """A cleanup closes each agent once and removes the session."""
        agents = await fill("u1", 12)
        result = await registry.lifecycle_manager.trigger_cleanup("u1")
        assert result.found
        assert result.ok
        assert result.agents_cleaned == 12
        assert [a.closes for a in agents] == [1] * 12
        assert registry.get_session("u1") is None

    async def test_other_users_are_untouched(self, registry, fill) -> None:
        """Cleaning one user leaves the others' sessions and agents alone."""
        await fill("u1", 3)
        others = await fill("u2", 4)
        await registry.lifecycle_manager.trigger_cleanup("u1")
        assert registry.get_session("u2").agent_count == 4
        assert all(a.closes == 0 for a in others)

    async def test_unknown_user_is_a_no_op(self, registry) -> None:
        """Cleaning a user without a session reports found=False and raises nothing."""
        result = await registry.lifecycle_manager.trigger_cleanup("ghost")
        assert not result.found
        assert result.agents_cleaned == 0

    async def test_failing_and_hanging_agents_do_not_stop_the_others(self, registry) -> None:
        """One agent raising and one hanging: the rest are closed, both errors are reported."""
        good = [RecordingAgent(f"g{n}") for n in range(5)]
        for n, agent in enumerate(good):
            await registry.register_user_agent("u1", f"good-{n}", agent)
        await registry.register_user_agent("u1", "bad", FailingAgent())
        await registry.register_user_agent("u1", "stuck", stuck := HangingAgent())

        result = await registry.lifecycle_manager.trigger_cleanup("u1")

        # Cut off by the 0.2 s close timeout, not waited for (the hour).
        assert stuck.cut_off
        assert result.errors["stuck"] == "aclose() timed out after 0.2s"
        assert [a.closes for a in good] == [1] * 5
        assert result.agents_cleaned == 5
        assert set(result.errors) == {"bad", "stuck"}
        assert "socket already gone" in result.errors["bad"]
        assert "timed out" in result.errors["stuck"]
        assert registry.get_session("u1") is None

    async def test_sync_close_and_agents_without_close_are_handled(self, registry) -> None:
        """A plain close() is called; an object with nothing to call counts as cleaned."""
        sync = SyncCloseAgent()
        await registry.register_user_agent("u1", "sync", sync)
        await registry.register_user_agent("u1", "plain", object())
        result = await registry.lifecycle_manager.trigger_cleanup("u1")
        assert sync.closed == 1
        assert result.agents_cleaned == 2

    async def test_agent_registered_during_cleanup_lands_in_a_new_session(self, registry) -> None:
        """An agent added while the old session's agents are closing is kept, never closed."""
        release = asyncio.Event()

        closing = asyncio.Event()

        class SlowAgent(RecordingAgent):
            async def aclose(self) -> None:
                closing.set()
                await release.wait()
                self.closes += 1

        slow = SlowAgent()
        await registry.register_user_agent("u1", "old", slow)
        cleanup = asyncio.create_task(registry.lifecycle_manager.trigger_cleanup("u1"))
        await closing.wait()  # the session is detached and its agents are closing
        assert registry.get_session("u1") is None

        newcomer = RecordingAgent("new")
        await registry.register_user_agent("u1", "new", newcomer)
        release.set()
        result = await cleanup

        assert result.agents_cleaned == 1
        assert slow.closes == 1
        assert newcomer.closes == 0
        assert dict(registry.get_session("u1").agents) == {"new": newcomer}

    async def test_concurrent_cleanups_close_each_agent_once(self, registry, fill) -> None:
        """Two cleanups of one user at once: one finds the session, the other a no-op."""
        agents = await fill("u1", 20)
        first, second = await asyncio.gather(
            registry.lifecycle_manager.trigger_cleanup("u1"),
            registry.lifecycle_manager.trigger_cleanup("u1"),
        )
        assert sorted([first.found, second.found]) == [False, True]
        assert [a.closes for a in agents] == [1] * 20

    async def test_cleanup_agent_resources_closes_one_agent(self, registry, fill) -> None:
        """Closing one agent leaves the rest of the session."""
        agents = await fill("u1", 3)
        assert await registry.lifecycle_manager.cleanup_agent_resources("u1", "agent-1")
        assert [a.closes for a in agents] == [0, 1, 0]
        assert registry.get_session("u1").agent_count == 2
        assert not await registry.lifecycle_manager.cleanup_agent_resources("u1", "agent-1")


class TestConditionalCleanup:
    async def test_healthy_session_is_left_untouched(self, registry, fill) -> None:
        """if_violating=True on a healthy session detaches nothing and closes nothing."""
        agents = await fill("u1", 50)
        result = await registry.lifecycle_manager.trigger_cleanup("u1", if_violating=True)
        assert result.found
        assert result.not_violating
        assert result.issues == []
        assert result.agents_cleaned == 0
        assert registry.get_session("u1").agent_count == 50
        assert all(a.closes == 0 for a in agents)

    async def test_violating_session_is_cleaned_and_its_issues_reported(
        self, registry, fill
    ) -> None:
        """The issues seen at the check come back with the result."""
        agents = await fill("u1", 51, age_hours=26)
        result = await registry.lifecycle_manager.trigger_cleanup("u1", if_violating=True)
        assert not result.not_violating
        assert result.issues == ["Too many agents: 51", "Session too old: 26.0h"]
        assert result.agents_cleaned == 51
        assert {a.closes for a in agents} == {1}
        assert registry.get_session("u1") is None

    async def test_unconditional_cleanup_still_cleans_a_healthy_session(
        self, registry, fill
    ) -> None:
        """The default (if_violating=False) keeps the seed's behaviour."""
        agents = await fill("u1", 2)
        result = await registry.lifecycle_manager.trigger_cleanup("u1")
        assert not result.not_violating
        assert result.agents_cleaned == 2
        assert {a.closes for a in agents} == {1}

    async def test_unknown_user_is_not_found_rather_than_not_violating(self, registry) -> None:
        """No session: found=False, and nothing claims the user is healthy."""
        result = await registry.lifecycle_manager.trigger_cleanup("ghost", if_violating=True)
        assert not result.found
        assert not result.not_violating


class TestHostileAgents:
    async def test_close_attribute_that_raises_on_access_is_an_error_not_a_crash(
        self, registry
    ) -> None:
        """Attack: `agent.aclose` is a property that raises; trigger_cleanup still returns."""

        class Booby(RecordingAgent):
            @property
            def aclose(self):  # type: ignore[override]
                raise RuntimeError("trapped attribute")

        good = RecordingAgent("good")
        await registry.register_user_agent("u1", "booby", Booby())
        await registry.register_user_agent("u1", "good", good)
        result = await registry.lifecycle_manager.trigger_cleanup("u1")
        assert result.agents_cleaned == 1
        assert "trapped attribute" in result.errors["booby"]
        assert good.closes == 1
        assert registry.get_session("u1") is None


class TestChurn:
    async def test_registration_and_cleanup_racing_lose_no_agent(self, clock) -> None:
        """Every agent ever registered is either still registered or closed exactly once."""
        registry = AgentRegistry(clock=clock, agent_close_timeout=1)
        made: list[RecordingAgent] = []

        async def producer(user: str) -> None:
            for n in range(200):
                agent = RecordingAgent(f"{user}/{n}")
                made.append(agent)
                await registry.register_user_agent(user, f"a{n}", agent)
                await asyncio.sleep(0)

        async def cleaner() -> None:
            for _ in range(100):
                for user in ("u1", "u2", "u3"):
                    await registry.lifecycle_manager.trigger_cleanup(user)
                await asyncio.sleep(0)

        await asyncio.gather(producer("u1"), producer("u2"), producer("u3"), cleaner())

        assert_kept_or_closed_once(registry, made)


class BlockingCloseAgent:
    """Attack: a synchronous close() that blocks until `unblock` is set, from any thread."""

    def __init__(self, unblock: threading.Event) -> None:
        self.unblock = unblock
        self.closed_on: str | None = None
        self.waited_out = False

    def close(self) -> None:
        self.closed_on = threading.current_thread().name
        # Bounded, so a close run on the loop fails the test instead of hanging it.
        self.waited_out = not self.unblock.wait(timeout=5)


class TestBlockingClose:
    async def test_blocking_sync_close_runs_off_the_event_loop(self, clock) -> None:
        """Three closes blocking until the loop itself releases them: the loop must stay free."""
        registry = AgentRegistry(clock=clock, agent_close_timeout=30)
        unblock = threading.Event()
        agents = [BlockingCloseAgent(unblock) for _ in range(3)]
        for n, agent in enumerate(agents):
            await registry.register_user_agent("u1", f"sync-{n}", agent)
        cleanup = asyncio.create_task(registry.lifecycle_manager.trigger_cleanup("u1"))
        # Only a free loop gets here while the closes block.
        await wait_until_async(lambda: all(a.closed_on for a in agents))
        unblock.set()
        result = await cleanup

        assert result.agents_cleaned == 3
        assert not any(a.waited_out for a in agents)
        assert threading.main_thread().name not in {a.closed_on for a in agents}

    async def test_blocking_sync_close_is_cut_off_by_the_per_agent_timeout(self, clock) -> None:
        """A close that never returns is reported as timed out; the others are closed."""
        registry = AgentRegistry(clock=clock, agent_close_timeout=0.2)
        never = threading.Event()
        stuck = BlockingCloseAgent(never)
        good = RecordingAgent("good")
        await registry.register_user_agent("u1", "stuck", stuck)
        await registry.register_user_agent("u1", "good", good)
        try:
            result = await registry.lifecycle_manager.trigger_cleanup("u1")
        finally:
            never.set()
        assert "timed out after 0.2s" in result.errors["stuck"]
        assert good.closes == 1
        assert result.agents_cleaned == 1


def close_threads() -> int:
    """Threads alive running agents' synchronous closes."""
    return sum(t.name == "agent-close" for t in threading.enumerate())


class TestBlockedCloseThreads:
    """Issue 20, finding 9: 100 close() calls blocking past their timeout left 100 threads,
    with no cap across repeated cleanups (threads 4 -> 103)."""

    async def test_blocked_closes_hold_at_most_the_pool_across_cleanups(self, clock) -> None:
        """Two cleanups of 60 blocking closes each: never more threads than the pool; the
        closes that could not even start are reported as such, not queued forever."""
        registry = AgentRegistry(clock=clock, agent_close_timeout=0.05)
        manager = registry.lifecycle_manager
        release = threading.Event()
        before = close_threads()
        errors: list[str] = []
        try:
            for user in ("u1", "u2"):
                for n in range(60):
                    await registry.register_user_agent(user, f"a{n}", BlockingCloseAgent(release))
                result = await manager.trigger_cleanup(user)
                errors.extend(result.errors.values())
                assert close_threads() - before <= manager.close_threads
        finally:
            release.set()
        assert len(errors) == 120
        not_started = [e for e in errors if "not started" in e]
        assert len(not_started) >= 120 - manager.close_threads
        assert not_started[0] == (
            f"close() not started: all {manager.close_threads} close threads are held by"
            " closes that have not returned"
        )
        await wait_until_async(lambda: close_threads() <= before)

    async def test_the_pool_is_whole_again_once_blocked_closes_return(self, clock) -> None:
        """Threads freed by closes that finally returned serve the next cleanup."""
        registry = AgentRegistry(clock=clock, agent_close_timeout=0.05)
        manager = registry.lifecycle_manager
        release = threading.Event()
        try:
            for n in range(manager.close_threads):
                await registry.register_user_agent("u1", f"a{n}", BlockingCloseAgent(release))
            result = await manager.trigger_cleanup("u1")
            assert all("timed out" in e for e in result.errors.values())
        finally:
            release.set()
        sync = SyncCloseAgent()
        await registry.register_user_agent("u2", "sync", sync)
        # Generous: the freed threads hand their slots back through the loop.
        registry.lifecycle_manager.agent_close_timeout = 30
        result = await manager.trigger_cleanup("u2")
        assert result.ok, result.errors
        assert sync.closed == 1
