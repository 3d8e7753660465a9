"""The registry and lifecycle manager: one session map, the seed system's monitoring contract."""

from __future__ import annotations

import gc
import json
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from agent_registry_exporter import AgentLifecycleManager, AgentRegistry, Thresholds
from agent_registry_exporter.registry import DuplicateAgentError

from .conftest import FakeClock


class TestOriginalScenario:
    async def test_fifteen_old_sessions_are_all_reported_too_old(self, registry, fill) -> None:
        """15 users with 12 agents each, 26 h old: 15 age issues, every user 'warning'."""
        for i in range(15):
            await fill(f"user{i}", 12, age_hours=26)

        report = await registry.monitor_all_users()

        assert report["total_users"] == 15
        assert report["total_agents"] == 180
        assert report["global_issues"] == ["Session too old: 26.0h"] * 15
        assert {r["status"] for r in report["users"].values()} == {"warning"}

    async def test_lifecycle_manager_reads_the_registry_it_was_given(self, registry, fill) -> None:
        """The manager sees the registry's sessions: never 'no_session' for a live user."""
        await fill("u1", 3)
        assert registry.lifecycle_manager.registry is registry
        result = await registry.lifecycle_manager.monitor_memory_usage("u1")
        assert result["status"] == "healthy"
        assert result["metrics"]["agent_count"] == 3

    def test_there_is_exactly_one_session_map(self, registry) -> None:
        """No second copy of the sessions hides in the lifecycle manager."""
        manager_state = vars(registry.lifecycle_manager)
        assert not any(isinstance(v, dict) for v in manager_state.values())


class TestThresholdChecks:
    @pytest.mark.parametrize(("agents", "issues"), [(50, []), (51, ["Too many agents: 51"])])
    async def test_agent_limit_is_exceeded_only_above_it(self, registry, fill, agents, issues):
        """50 agents is fine, 51 is reported."""
        await fill("u1", agents)
        result = await registry.lifecycle_manager.monitor_memory_usage("u1")
        assert result["issues"] == issues
        assert result["status"] == ("warning" if issues else "healthy")

    async def test_session_exactly_at_the_age_limit_is_fine(self, registry, fill, clock) -> None:
        """A session exactly 24 h old is not reported; a second later it is."""
        await fill("u1", 1, age_hours=24)
        result = await registry.lifecycle_manager.monitor_memory_usage("u1")
        assert result["issues"] == []
        clock.advance(1)
        result = await registry.lifecycle_manager.monitor_memory_usage("u1")
        assert result["issues"] == ["Session too old: 24.0h"]

    async def test_both_issues_are_reported_together(self, registry, fill) -> None:
        """A session over both limits lists both issues in the seed wording."""
        await fill("u1", 60, age_hours=30)
        result = await registry.lifecycle_manager.monitor_memory_usage("u1")
        assert result["issues"] == ["Too many agents: 60", "Session too old: 30.0h"]

    async def test_total_limit_is_a_global_issue(self, registry, fill) -> None:
        """More than 500 agents in the registry adds the total issue."""
        for i in range(11):
            await fill(f"u{i}", 46)  # 506 agents, every user under 50
        report = await registry.monitor_all_users()
        assert report["global_issues"] == ["Too many agents in total: 506"]

    async def test_exactly_the_total_limit_is_fine(self, registry, fill) -> None:
        """500 agents in total is not an issue."""
        for i in range(10):
            await fill(f"u{i}", 50)
        report = await registry.monitor_all_users()
        assert report["total_agents"] == 500
        assert report["global_issues"] == []

    async def test_custom_thresholds_are_used(self, clock) -> None:
        """The registry's own Thresholds decide, not the defaults."""
        registry = AgentRegistry(thresholds=Thresholds(agents_per_user=2), clock=clock)
        for n in range(3):
            await registry.register_user_agent("u1", f"a{n}", object())
        result = await registry.lifecycle_manager.monitor_memory_usage("u1")
        assert result["issues"] == ["Too many agents: 3"]


class TestMonitorStatuses:
    async def test_unknown_user_is_no_session_and_is_not_created(self, registry) -> None:
        """Monitoring never creates a session."""
        result = await registry.lifecycle_manager.monitor_memory_usage("ghost")
        assert result["status"] == "no_session"
        assert registry.get_session("ghost") is None

    async def test_manager_without_registry_says_so(self) -> None:
        """A manager built without a registry answers 'no_registry'."""
        result = await AgentLifecycleManager().monitor_memory_usage("u1")
        assert result["status"] == "no_registry"

    async def test_monitoring_failure_is_an_error_status_not_an_exception(
        self, registry, fill, monkeypatch
    ) -> None:
        """monitor_memory_usage never raises."""
        await fill("u1", 1)

        def broken(*_: Any) -> Any:
            raise RuntimeError("boom")

        monkeypatch.setattr(registry, "get_session", broken)
        result = await registry.lifecycle_manager.monitor_memory_usage("u1")
        assert result["status"] == "error"
        assert "boom" in result["error"]


class TestSeedDict:
    async def test_warning_dict_is_the_seed_systems_key_for_key(self, registry, fill) -> None:
        """status, user_id, metrics, issues: in that order, plain str and list, nothing more."""
        await fill("u1", 60, age_hours=26)
        result = await registry.lifecycle_manager.monitor_memory_usage("u1")
        assert list(result) == ["status", "user_id", "metrics", "issues"]
        assert type(result["status"]) is str
        assert type(result["issues"]) is list
        session = registry.get_session("u1")
        assert json.dumps(result) == json.dumps(
            {
                "status": "warning",
                "user_id": "u1",
                "metrics": session.get_metrics(),
                "issues": ["Too many agents: 60", "Session too old: 26.0h"],
            }
        )

    @pytest.mark.parametrize("status", ["no_session", "no_registry"])
    async def test_dict_without_a_session_is_empty_but_complete(self, registry, status) -> None:
        """No session (or no registry): empty metrics and issues, no error key."""
        manager = registry.lifecycle_manager if status == "no_session" else AgentLifecycleManager()
        result = await manager.monitor_memory_usage("ghost")
        assert json.dumps(result) == json.dumps(
            {"status": status, "user_id": "ghost", "metrics": {}, "issues": []}
        )

    async def test_error_dict_adds_the_error_last(self, registry, fill, monkeypatch) -> None:
        """A failed check: the four keys, then `error` naming the exception."""

        def broken(*_: Any) -> Any:
            raise RuntimeError("boom")

        monkeypatch.setattr(registry, "get_session", broken)
        result = await registry.lifecycle_manager.monitor_memory_usage("u1")
        assert json.dumps(result) == json.dumps(
            {"status": "error", "user_id": "u1", "metrics": {}, "issues": [],
             "error": "RuntimeError: boom"}
        )  # fmt: skip

    async def test_report_holds_each_users_seed_dict(self, registry, fill) -> None:
        """monitor_all_users' `users` are the very dicts monitor_memory_usage answers."""
        await fill("u1", 60)
        report = await registry.monitor_all_users()
        assert report["users"] == {
            "u1": await registry.lifecycle_manager.monitor_memory_usage("u1")
        }
        assert list(report) == ["total_users", "total_agents", "global_issues", "users"]


class TestThresholdValidation:
    @pytest.mark.parametrize("field", ["agents_per_user", "session_age_seconds", "total_agents"])
    @pytest.mark.parametrize("value", [0, -1])
    def test_zero_or_negative_limit_is_rejected(self, field: str, value: int) -> None:
        """A limit must be greater than 0, and the error names it."""
        with pytest.raises(ValidationError) as info:
            Thresholds(**{field: value})
        assert info.value.errors()[0]["loc"] == (field,)
        assert "greater than 0" in str(info.value)

    def test_unknown_threshold_is_rejected(self) -> None:
        """A misspelt limit is an error, not silently ignored."""
        with pytest.raises(ValidationError, match="agents_per_usr"):
            Thresholds(agents_per_usr=3)  # type: ignore[call-arg]


class TestSessions:
    async def test_created_at_is_utc_aware_and_settable(self, registry, clock) -> None:
        """Backdating a session changes its reported uptime."""
        session = await registry.get_user_session("u1")
        assert session.created_at.tzinfo is not None
        session.created_at = datetime.fromtimestamp(clock(), UTC) - timedelta(hours=2)
        assert session.get_metrics()["uptime_seconds"] == pytest.approx(7200)

    async def test_naive_created_at_is_rejected(self, registry) -> None:
        """A naive datetime would silently shift by the local offset."""
        session = await registry.get_user_session("u1")
        with pytest.raises(ValueError, match="timezone-aware"):
            session.created_at = datetime(2026, 1, 1)

    async def test_registering_the_same_agent_id_twice_is_refused(self, registry) -> None:
        """A second agent under the same id would leak the first."""
        await registry.register_user_agent("u1", "a", object())
        with pytest.raises(DuplicateAgentError):
            await registry.register_user_agent("u1", "a", object())

    async def test_empty_user_id_is_refused(self, registry) -> None:
        """Every session belongs to a named user."""
        with pytest.raises(ValueError, match="user_id"):
            await registry.register_user_agent("", "a", object())

    @pytest.mark.parametrize(
        "user_id",
        [json.loads('"mallory\\ud800"'), "\udfff", b"bytes-id", None, 42],
        ids=["lone-high-surrogate", "lone-low-surrogate", "bytes", "none", "int"],
    )
    async def test_user_id_that_is_not_utf8_text_is_refused_where_it_enters(
        self, registry, user_id
    ) -> None:
        """Attack: an id no scrape can encode never gets into the registry."""
        with pytest.raises(ValueError, match="user_id"):
            await registry.register_user_agent(user_id, "a", object())
        with pytest.raises(ValueError, match="user_id"):
            await registry.get_user_session(user_id)
        assert len(registry) == 0

    async def test_control_characters_and_any_script_are_valid_ids(self, registry) -> None:
        """Valid Unicode text is a valid id, whatever it holds."""
        for user_id in ("tab\there", "nul\x00", "emoji-\U0001f600", "\u202eright-to-left"):
            await registry.register_user_agent(user_id, "a", object())
        assert len(registry) == 4

    async def test_unregister_returns_the_agent(self, registry) -> None:
        """Unregistering hands the agent back; the session stays while it holds others."""
        agent = object()
        await registry.register_user_agent("u1", "a", agent)
        await registry.register_user_agent("u1", "b", object())
        assert await registry.unregister_user_agent("u1", "a") is agent
        assert await registry.unregister_user_agent("u1", "a") is None
        assert registry.get_session("u1") is not None

    async def test_get_metrics_has_the_seed_keys(self, registry, clock: FakeClock) -> None:
        """get_metrics keeps the original keys."""
        await registry.register_user_agent("u1", "a", object())
        clock.advance(30)
        metrics = (await registry.get_user_session("u1")).get_metrics()
        assert metrics["user_id"] == "u1"
        assert metrics["agent_count"] == 1
        assert metrics["uptime_seconds"] == 30
        assert metrics["created_at"].endswith("+00:00")


class TestEmptySessions:
    async def test_session_is_dropped_when_its_last_agent_is_unregistered(self, registry) -> None:
        """Finding 1: a user whose agents all left is no longer in the registry."""
        await registry.register_user_agent("u1", "a", object())
        await registry.register_user_agent("u1", "b", object())
        await registry.unregister_user_agent("u1", "a")
        assert len(registry) == 1
        await registry.unregister_user_agent("u1", "b")
        assert len(registry) == 0
        assert registry.get_session("u1") is None
        assert registry.snapshot().sessions == ()

    async def test_cleanup_of_one_agent_drops_the_emptied_session(self, registry) -> None:
        """`cleanup_agent_resources` on the last agent leaves no empty session behind."""
        await registry.register_user_agent("u1", "a", object())
        assert await registry.lifecycle_manager.cleanup_agent_resources("u1", "a")
        assert registry.get_session("u1") is None

    async def test_empty_sessions_never_reach_the_age_alert(self, registry, clock) -> None:
        """A user gone for 25 h is no 'Session too old' issue (nor a cleanup target)."""
        for n in range(3):
            await registry.register_user_agent(f"u{n}", "a", object())
            await registry.unregister_user_agent(f"u{n}", "a")
        clock.advance(25 * 3600)
        report = await registry.monitor_all_users()
        assert report["total_users"] == 0
        assert report["global_issues"] == []

    async def test_get_user_session_still_creates_an_empty_one(self, registry) -> None:
        """The seed API: asking for a session creates it, agents or not."""
        session = await registry.get_user_session("u1")
        assert registry.get_session("u1") is session
        assert session.agent_count == 0
        assert not session.dropped

    async def test_a_held_dropped_session_cannot_take_agents_unseen(self, registry) -> None:
        """Holding the object of a dropped session, a caller's next agent lands in a fresh
        session the registry exports; the old object says it was dropped."""
        held = await registry.get_user_session("u1")
        await registry.register_user_agent("u1", "a", object())
        await registry.unregister_user_agent("u1", "a")
        assert held.dropped
        newcomer = object()
        await registry.register_user_agent("u1", "b", newcomer)
        fresh = registry.get_session("u1")
        assert fresh is not None
        assert fresh is not held
        assert not fresh.dropped
        assert dict(fresh.agents) == {"b": newcomer}
        assert held.agent_count == 0
        assert [s.user_id for s in registry.snapshot().sessions] == ["u1"]

    async def test_a_detached_session_is_marked_dropped(self, registry) -> None:
        """A cleanup's detached session is dropped too: the registry no longer holds it."""
        held = await registry.get_user_session("u1")
        await registry.register_user_agent("u1", "a", object())
        await registry.lifecycle_manager.trigger_cleanup("u1")
        assert held.dropped
        assert registry.get_session("u1") is None

    async def test_unregistering_an_unknown_agent_keeps_a_session_created_empty(
        self, registry
    ) -> None:
        """Only an agent leaving empties a session: a miss does not drop a fresh one."""
        session = await registry.get_user_session("u1")
        assert await registry.unregister_user_agent("u1", "nobody") is None
        assert registry.get_session("u1") is session

    async def test_memory_of_removed_users_comes_back(self, clock) -> None:
        """Registering then removing 20,000 one-agent users gives their memory back, the
        session map's included (a dict does not shrink when emptied)."""
        registry = AgentRegistry(clock=clock)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for n in range(20_000):
                await registry.register_user_agent(f"user-{n:06d}", "a", object())
            peak = tracemalloc.get_traced_memory()[0]
            for n in range(20_000):
                await registry.unregister_user_agent(f"user-{n:06d}", "a")
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert len(registry) == 0
        assert after - before < 0.02 * (peak - before), (before, peak, after)
