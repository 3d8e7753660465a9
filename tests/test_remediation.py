"""The remediation policy without HTTP: rate limit, breaker, dry-run, timeouts, storms, races."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import ClientSession

from agent_registry_exporter import (
    AgentRegistry,
    InProcessSource,
    MonitorResult,
    Settings,
    Status,
    start_exporter,
)
from agent_registry_exporter.registry import CleanupResult
from agent_registry_exporter.remediation import (
    Decision,
    Outcome,
    RemediationPolicy,
    Remediator,
    TokenBucket,
)
from agent_registry_exporter.remediation.payload import WebhookPayload
from agent_registry_exporter.testing import wait_until_async

from .conftest import (
    FakeClock,
    HangingAgent,
    RecordingAgent,
    add_agents,
    assert_kept_or_closed_once,
)

STARTS = "2026-11-27T20:07:48.84Z"


def payload(*users: str, alertname: str = "AgentRegistryTooManyAgentsPerUser", **kw: Any):
    """A firing payload as Alertmanager would send it (parsed from JSON, like the endpoint)."""
    return WebhookPayload.model_validate_json(
        json.dumps(
            {
                "version": "4",
                "status": "firing",
                "alerts": [
                    {
                        "status": "firing",
                        "labels": {
                            "alertname": alertname,
                            "remediation": "cleanup",
                            "user_id": user,
                            "instance": kw.get("instance", "127.0.0.1:8464"),
                            **kw.get("labels", {}),
                        },
                        "startsAt": kw.get("starts", STARTS),
                        "fingerprint": f"fp-{alertname}-{user}",
                    }
                    for user in users
                ],
            }
        )
    )


async def leak(registry: AgentRegistry, user: str, agents: int = 51) -> list[RecordingAgent]:
    """A user over the default agent limit."""
    return await add_agents(registry, user, agents)


def outcomes(decisions) -> list[str]:
    return [d.outcome.value for d in decisions]


class FlakySource(InProcessSource):
    """Fault injection: the first `failures` cleanups raise before touching anything."""

    def __init__(self, registry: AgentRegistry, failures: int) -> None:
        super().__init__(registry)
        self.failures = failures
        self.calls = 0

    async def cleanup_user(self, user_id: str, *, if_violating: bool = True) -> CleanupResult:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("registry API unavailable")
        return await super().cleanup_user(user_id, if_violating=if_violating)


class AnsweringSource(InProcessSource):
    """A source whose monitoring answers whatever the test says (a third party's source)."""

    def __init__(self, registry: AgentRegistry, answer: Any) -> None:
        super().__init__(registry)
        self.answer = answer

    async def monitor_user(self, user_id: str) -> Any:
        return self.answer


class TestVerification:
    @pytest.mark.parametrize(
        ("result", "outcome", "detail"),
        [
            (MonitorResult(Status.HEALTHY, "leaky"), "not_violating", "no threshold exceeded"),
            (MonitorResult(Status.NO_SESSION, "leaky"), "no_session", "has no session"),
            (MonitorResult(Status.NO_REGISTRY, "leaky"), "error", "answered 'no_registry'"),
            (MonitorResult.failed("leaky", "worker w1: gone"), "error", "worker w1: gone"),
        ],
        ids=["healthy", "no_session", "no_registry", "error"],
    )
    async def test_only_a_warning_is_cleaned(self, registry, result, outcome, detail) -> None:
        """The policy acts on Status.WARNING alone; each other status says why not."""
        await leak(registry, "leaky", 60)
        remediator = Remediator(AnsweringSource(registry, result))
        (decision,) = await remediator.handle(payload("leaky"))
        assert decision.outcome.value == outcome
        assert detail in decision.detail
        assert registry.get_session("leaky").agent_count == 60

    async def test_warning_is_cleaned(self, registry) -> None:
        """Status.WARNING: the cleanup runs (and re-checks under the registry lock)."""
        await leak(registry, "leaky", 60)
        warning = MonitorResult(Status.WARNING, "leaky", issues=("Too many agents: 60",))
        remediator = Remediator(AnsweringSource(registry, warning))
        assert outcomes(await remediator.handle(payload("leaky"))) == ["cleaned"]
        assert registry.get_session("leaky") is None

    async def test_source_still_answering_a_dict_is_an_error_naming_the_change(
        self, registry
    ) -> None:
        """A third-party source not migrated yet: nothing cleaned, the detail says what to do."""
        await leak(registry, "leaky", 60)
        old = {"status": "warning", "user_id": "leaky", "metrics": {}, "issues": []}
        remediator = Remediator(AnsweringSource(registry, old))
        (decision,) = await remediator.handle(payload("leaky"))
        assert decision.outcome is Outcome.ERROR
        assert "monitor_user answered a dict, not a MonitorResult" in decision.detail
        assert registry.get_session("leaky").agent_count == 60


class TestTokenBucket:
    def test_burst_then_refill(self) -> None:
        """`burst` at once, then one more per 1/rate seconds."""
        clock = FakeClock(0)
        bucket = TokenBucket(rate_per_second=2, burst=3, clock=clock)
        assert [bucket.try_take() for _ in range(4)] == [True, True, True, False]
        clock.advance(0.5)
        assert [bucket.try_take() for _ in range(2)] == [True, False]
        clock.advance(100)
        assert sum(bucket.try_take() for _ in range(10)) == 3


class TestPolicy:
    async def test_rate_limit_defers_the_rest_and_a_later_delivery_acts(self, registry) -> None:
        """Burst 2: two users cleaned, the third deferred, then cleaned once tokens refill."""
        clock = FakeClock(0)
        for user in ("a", "b", "c"):
            await leak(registry, user)
        remediator = Remediator(
            InProcessSource(registry),
            RemediationPolicy(cleanup_burst=2, cleanup_rate_per_minute=6, breaker_min_users=99),
            clock=clock,
        )
        first = await remediator.handle(payload("a", "b", "c"))
        assert outcomes(first) == ["cleaned", "cleaned", "rate_limited"]
        assert registry.get_session("c").agent_count == 51
        clock.advance(10)  # one token at 6/min
        second = await remediator.handle(payload("a", "b", "c"))
        assert outcomes(second) == ["duplicate", "duplicate", "cleaned"]
        assert len(registry) == 0

    async def test_breaker_refuses_a_payload_cleaning_most_users(self, registry) -> None:
        """12 of 15 users in one payload is over the 50% share: nothing is cleaned."""
        leaky = [f"u{n}" for n in range(12)]
        for user in leaky:
            await leak(registry, user)
        for n in range(3):
            await leak(registry, f"ok{n}", 2)
        remediator = Remediator(InProcessSource(registry), RemediationPolicy(breaker_min_users=10))
        decisions = await remediator.handle(payload(*leaky))
        assert set(outcomes(decisions)) == {"breaker_open"}
        assert "12 of 15" in decisions[0].detail
        assert len(registry) == 15

    async def test_breaker_ignores_small_payloads(self, registry) -> None:
        """Below breaker_min_users a payload may clean every user of a small registry."""
        await leak(registry, "only")
        remediator = Remediator(InProcessSource(registry), RemediationPolicy(breaker_min_users=10))
        assert outcomes(await remediator.handle(payload("only"))) == ["cleaned"]

    async def test_dry_run_decides_but_touches_nothing(self, registry) -> None:
        """Dry-run reports what it would do and leaves every agent alone."""
        agents = await leak(registry, "a")
        remediator = Remediator(InProcessSource(registry), RemediationPolicy(dry_run=True))
        decisions = await remediator.handle(payload("a", "ghost"))
        assert outcomes(decisions) == ["dry_run", "no_session"]
        assert registry.get_session("a").agent_count == 51
        assert {a.closes for a in agents} == {0}

    async def test_two_alerts_for_one_user_share_one_cleanup(self, registry, clock) -> None:
        """Too many agents and too old together: one cleanup, both alerts report it."""
        await leak(registry, "a", 60)
        session = registry.get_session("a")
        session.created_at = datetime.fromtimestamp(clock(), UTC) - timedelta(hours=30)
        remediator = Remediator(InProcessSource(registry), RemediationPolicy(cleanup_burst=1))
        both = WebhookPayload.model_validate(
            {
                "version": "4",
                "status": "firing",
                "alerts": [
                    *payload("a").model_dump(by_alias=True)["alerts"],
                    *payload("a", alertname="AgentRegistrySessionTooOld").model_dump(by_alias=True)[
                        "alerts"
                    ],
                ],
            }
        )
        decisions = await remediator.handle(both)
        assert outcomes(decisions) == ["cleaned", "cleaned"]
        assert [d.agents_cleaned for d in decisions] == [60, 60]

    async def test_dedupe_cache_is_bounded(self, registry) -> None:
        """The oldest handled alert is forgotten once the cache is full."""
        remediator = Remediator(InProcessSource(registry), RemediationPolicy(dedupe_cache_size=2))
        for user in ("a", "b", "c"):
            await leak(registry, user)
            await remediator.handle(payload(user))
        assert len(remediator._handled) == 2
        await leak(registry, "a")
        assert outcomes(await remediator.handle(payload("a"))) == ["cleaned"]


class TestFailures:
    async def test_failed_cleanup_is_retried_and_acts_only_on_what_is_left(self, registry):
        """First attempt raises (5xx-worthy); the retry cleans; a done alert is not redone."""
        done_agents = await leak(registry, "done")
        flaky_agents = await leak(registry, "flaky")
        source = FlakySource(registry, failures=0)
        remediator = Remediator(source)
        assert outcomes(await remediator.handle(payload("done"))) == ["cleaned"]
        source.failures, source.calls = 1, 0

        first = await remediator.handle(payload("done", "flaky"))
        assert outcomes(first) == ["duplicate", "error"]
        assert Outcome.ERROR.retry_helps
        assert registry.get_session("flaky").agent_count == 51

        retry = await remediator.handle(payload("done", "flaky"))
        assert outcomes(retry) == ["duplicate", "cleaned"]
        assert {a.closes for a in done_agents + flaky_agents} == {1}

    async def test_agent_close_errors_are_an_error_outcome(self, registry) -> None:
        """A session whose agent fails to close is detached but reported as error."""

        class Broken:
            async def aclose(self) -> None:
                raise OSError("gone")

        await leak(registry, "a")
        await registry.register_user_agent("a", "broken", Broken())
        decisions = await Remediator(InProcessSource(registry)).handle(payload("a"))
        assert outcomes(decisions) == ["error"]
        assert decisions[0].agents_cleaned == 51
        assert "broken" in decisions[0].detail
        assert registry.get_session("a") is None

    async def test_slow_cleanup_times_out_but_finishes_in_the_background(
        self, clock, caplog
    ) -> None:
        """The answer comes within the budget; the started cleanup still completes and is logged."""
        gate = asyncio.Event()

        class GatedAgent(RecordingAgent):
            async def aclose(self) -> None:
                await gate.wait()  # held until the webhook has answered
                self.closes += 1

        registry = AgentRegistry(clock=clock, agent_close_timeout=60)
        agents = await leak(registry, "slow")
        gated = GatedAgent()
        await registry.register_user_agent("slow", "gated", gated)
        remediator = Remediator(
            InProcessSource(registry), RemediationPolicy(cleanup_timeout_seconds=0.1)
        )
        decisions = await remediator.handle(payload("slow"))  # returns while the agent is held
        assert outcomes(decisions) == ["timeout"]
        assert "still running" in decisions[0].detail
        assert registry.get_session("slow") is None
        assert gated.closes == 0

        gate.set()
        (task,) = remediator._background
        result = await task
        await asyncio.sleep(0)  # let the done-callback run
        assert result.agents_cleaned == 52
        assert {a.closes for a in [*agents, gated]} == {1}
        assert not remediator._background
        (late,) = [r for r in caplog.records if r.getMessage() == "late cleanup finished"]
        assert late.fields == {"user_id": "slow", "agents_cleaned": 52, "errors": 0}

    async def test_cleanups_not_started_in_time_are_left_untouched(self, clock) -> None:
        """With one worker and a short budget, queued users keep their sessions."""
        registry = AgentRegistry(clock=clock, agent_close_timeout=0.3)
        for user in ("a", "b", "c"):
            await leak(registry, user)
            await registry.register_user_agent(user, "hang", HangingAgent())
        remediator = Remediator(
            InProcessSource(registry),
            RemediationPolicy(cleanup_concurrency=1, cleanup_timeout_seconds=0.1),
        )
        decisions = await remediator.handle(payload("a", "b", "c"))
        assert outcomes(decisions) == ["timeout"] * 3
        assert "nothing was touched" in decisions[2].detail
        assert registry.get_session("c").agent_count == 52
        await asyncio.gather(*remediator._background)


class TestStorm:
    async def test_thousand_alerts_respect_the_rate_limit_and_scrapes_continue(self, clock) -> None:
        """1,000 violating users of 2,000: 20 cleaned, and /metrics serves during the cleanups.

        No stopwatch: each cleaned session holds an agent whose close waits until a scrape
        started after the cleanups began has been answered, so the webhook can only answer
        `cleaned` if scraping went on meanwhile (a blocked scrape leaves it `timeout`).
        """
        closing, scraped = asyncio.Event(), asyncio.Event()

        class ScrapeGatedAgent(RecordingAgent):
            async def aclose(self) -> None:
                closing.set()
                await scraped.wait()
                self.closes += 1

        registry = AgentRegistry(clock=clock, agent_close_timeout=120)
        gated = []
        for n in range(1000):
            await leak(registry, f"bad{n:04d}", 50)
            gated.append(agent := ScrapeGatedAgent())
            await registry.register_user_agent(f"bad{n:04d}", "gated", agent)
            await leak(registry, f"ok{n:04d}", 1)
        server = await start_exporter(
            registry,
            Settings(
                listen_host="127.0.0.1",
                listen_port=0,
                webhook_token="t",
                cleanup_timeout_seconds=120,  # a bound on a broken run, not the assertion
            ),
        )
        body = payload(*(f"bad{n:04d}" for n in range(1000))).model_dump_json(by_alias=True)
        statuses: list[int] = []
        try:
            async with ClientSession() as http:

                async def scrape_until(done: asyncio.Event) -> None:
                    while not done.is_set():
                        during = closing.is_set()
                        async with http.get(f"{server.url}/metrics") as resp:
                            statuses.append(resp.status)
                            await resp.read()
                        if during and resp.status == 200:
                            scraped.set()
                        await asyncio.sleep(0)

                done = asyncio.Event()
                scraper = asyncio.create_task(scrape_until(done))
                async with http.post(
                    f"{server.url}/webhook/alertmanager",
                    data=body,
                    headers={"Authorization": "Bearer t"},
                ) as resp:
                    answer = await resp.json()
                    status = resp.status
                done.set()
                await scraper
        finally:
            await server.stop()

        assert status == 429
        assert answer["summary"] == {"cleaned": 20, "rate_limited": 980}
        assert len(registry) == 2000 - 20
        assert sum(agent.closes for agent in gated) == 20
        assert set(statuses) == {200}

    async def test_thousand_alerts_covering_every_user_trip_the_breaker(self, clock) -> None:
        """1,000 of 1,000 users in one payload: the breaker holds, nothing is cleaned."""
        registry = AgentRegistry(clock=clock)
        for n in range(1000):
            await leak(registry, f"bad{n:04d}")
        remediator = Remediator(InProcessSource(registry))
        decisions = await remediator.handle(payload(*(f"bad{n:04d}" for n in range(1000))))
        assert set(outcomes(decisions)) == {"breaker_open"}
        assert len(registry) == 1000


class TestRaces:
    async def test_webhook_cleanups_racing_registration_lose_no_agent(self, clock) -> None:
        """Agents registered while webhooks clean: each is kept or closed exactly once."""
        registry = AgentRegistry(clock=clock, agent_close_timeout=1)
        remediator = Remediator(
            InProcessSource(registry),
            RemediationPolicy(cleanup_burst=10_000, breaker_min_users=10_000),
        )
        made: list[RecordingAgent] = []
        stop = asyncio.Event()

        async def register(user: str) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                agent = RecordingAgent(f"{user}/{n}")
                made.append(agent)
                await registry.register_user_agent(user, f"{user}-{n}", agent)
                await asyncio.sleep(0)

        async def deliver() -> None:
            for round_ in range(30):
                starts = f"2026-11-27T20:{round_:02d}:00Z"
                await remediator.handle(payload("u1", "u2", "u3", starts=starts))
                await asyncio.sleep(0.002)
            stop.set()

        async def scrape() -> None:
            while not stop.is_set():
                snapshot = registry.snapshot()
                counts = [s.agent_count for s in snapshot.sessions]
                assert all(c >= 0 for c in counts)
                await asyncio.sleep(0)

        await asyncio.gather(register("u1"), register("u2"), register("u3"), deliver(), scrape())
        assert_kept_or_closed_once(registry, made)
        assert any(a.closes for a in made)

    async def test_victim_made_healthy_while_waiting_for_a_cleanup_slot_is_not_wiped(
        self, clock
    ) -> None:
        """Attack: the victim turns healthy while eight slow cleanups hold every slot."""
        stage = await _SlotsHeld.build(clock)
        registry, remediator = stage.registry, stage.remediator
        victim = await leak(registry, "victim", 55)
        handling = await stage.deliver_while_slots_are_held("victim")

        for n in range(50):
            await registry.unregister_user_agent("victim", f"agent-{n}")
        newcomer = RecordingAgent("victim/new")
        await registry.register_user_agent("victim", "new", newcomer)
        assert (await registry.lifecycle_manager.monitor_memory_usage("victim"))["status"] == (
            "healthy"
        )
        stage.release.set()
        decisions = await handling

        assert outcomes(decisions) == ["cleaned"] * 8 + ["not_violating"]
        assert registry.get_session("victim").agent_count == 6
        assert newcomer.closes == 0
        assert all(a.closes == 0 for a in victim)
        # Not remembered as handled: the same alert is checked again at its next delivery.
        assert not any(fingerprint.endswith("-victim") for fingerprint, _ in remediator._handled)

    async def test_victim_cleaned_elsewhere_then_back_with_one_agent_is_not_wiped(
        self, clock
    ) -> None:
        """Attack: the victim is cleaned by someone else meanwhile and registers one new agent."""
        stage = await _SlotsHeld.build(clock)
        registry = stage.registry
        old = await leak(registry, "victim", 55)
        handling = await stage.deliver_while_slots_are_held("victim")

        await registry.lifecycle_manager.trigger_cleanup("victim")
        newcomer = RecordingAgent("victim/new")
        await registry.register_user_agent("victim", "new", newcomer)
        stage.release.set()
        decisions = await handling

        assert outcomes(decisions)[-1] == "not_violating"
        assert dict(registry.get_session("victim").agents) == {"new": newcomer}
        assert newcomer.closes == 0
        assert {a.closes for a in old} == {1}


_SLOW_USERS = [f"slow-{n}" for n in range(8)]


class _SlotsHeld:
    """Eight violating users whose agents close only on `release`: every cleanup slot busy."""

    def __init__(self, registry: AgentRegistry) -> None:
        self.registry = registry
        self.remediator = Remediator(
            InProcessSource(registry),
            RemediationPolicy(cleanup_concurrency=8, cleanup_timeout_seconds=60),
        )
        self.release = asyncio.Event()
        self.closing = 0

    @classmethod
    async def build(cls, clock: FakeClock) -> _SlotsHeld:
        stage = cls(AgentRegistry(clock=clock, agent_close_timeout=60))

        class SlowAgent(RecordingAgent):
            async def aclose(self) -> None:
                stage.closing += 1
                await stage.release.wait()
                self.closes += 1

        for user in _SLOW_USERS:
            await leak(stage.registry, user)
            await stage.registry.register_user_agent(user, "slow", SlowAgent())
        return stage

    async def deliver_while_slots_are_held(self, victim: str) -> asyncio.Task[list[Decision]]:
        """One payload naming the slow users then `victim`; returns once every slot is busy."""
        handling = asyncio.create_task(self.remediator.handle(payload(*_SLOW_USERS, victim)))
        await wait_until_async(lambda: self.closing == len(_SLOW_USERS))
        return handling
