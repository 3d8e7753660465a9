"""The whole loop on the real binaries: a session goes bad, Prometheus sees it, a rule fires,
Alertmanager calls the webhook, the session is cleaned, the alert resolves."""

from __future__ import annotations

import asyncio

import pytest

from agent_registry_exporter.testing import wait_until_async

from ..conftest import add_agents
from .conftest import Harness

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]


def firing(alerts: list[dict], alertname: str, **labels: str) -> list[dict]:
    return [
        a
        for a in alerts
        if a["labels"]["alertname"] == alertname
        and a.get("state", a.get("status", {}).get("state")) in ("firing", "active")
        and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


def cleanups_decided(h: Harness, users: set[str] | dict[str, object]) -> bool:
    """Each user's cleanup was decided `cleaned`: recorded after its agents were closed, while
    the session is detached before (waiting for the detach alone races the closes)."""
    return {d.user_id for d in h.decisions_for(set(users)) if d.outcome == "cleaned"} == set(users)


async def prometheus_alerts(h: Harness) -> list[dict]:
    return await asyncio.to_thread(h.stack.prometheus_alerts)


async def alertmanager_alerts(h: Harness) -> list[dict]:
    return await asyncio.to_thread(h.stack.alertmanager_alerts)


async def test_original_scenario_cleans_exactly_the_old_sessions(harness, registry) -> None:
    """15 users x 12 agents, 26 h old, beside healthy ones: those 15 are cleaned, alerts resolve."""
    old = {f"old{i:02d}": await add_agents(registry, f"old{i:02d}", 12, 26) for i in range(15)}
    healthy = {f"ok{i}": await add_agents(registry, f"ok{i}", 3, 1) for i in range(5)}

    await wait_until_async(
        lambda: cleanups_decided(harness, old), timeout=45, message="old sessions cleaned"
    )

    for user, agents in healthy.items():
        assert registry.get_session(user).agent_count == 3, user
        assert {a.closes for a in agents} == {0}
    for agents in old.values():
        assert {a.closes for a in agents} == {1}
    cleaned = {
        d.user_id
        for d in harness.decisions_for(set(old))
        if d.outcome == "cleaned" and d.alertname == "AgentRegistrySessionTooOld"
    }
    assert cleaned == set(old)
    assert not harness.decisions_for(set(healthy))

    async def resolved() -> bool:
        prom = firing(await prometheus_alerts(harness), "AgentRegistrySessionTooOld")
        am = firing(await alertmanager_alerts(harness), "AgentRegistrySessionTooOld")
        return not prom and not am

    await wait_until_async(
        resolved, timeout=30, message="AgentRegistrySessionTooOld resolved in both"
    )


async def test_user_over_the_agent_limit_is_cleaned(harness, registry) -> None:
    """60 agents fire AgentRegistryTooManyAgentsPerUser and the session is cleaned."""
    agents = await add_agents(registry, "greedy", 60)
    bystander = await add_agents(registry, "calm", 50)

    await wait_until_async(
        lambda: cleanups_decided(harness, {"greedy"}), timeout=30, message="greedy cleaned"
    )

    (decision,) = [d for d in harness.decisions_for({"greedy"}) if d.outcome == "cleaned"]
    assert decision.alertname == "AgentRegistryTooManyAgentsPerUser"
    assert decision.agents_cleaned == 60
    assert decision.instance == harness.instance
    assert {a.closes for a in agents} == {1}
    assert registry.get_session("calm").agent_count == 50
    assert {a.closes for a in bystander} == {0}


async def test_total_limit_alerts_but_cleans_nothing(harness, registry) -> None:
    """506 agents across 11 healthy users: the total alert fires in both, no session is touched."""
    users = {f"mid{i:02d}": await add_agents(registry, f"mid{i:02d}", 46) for i in range(11)}

    async def total_alert_reached_alertmanager() -> bool:
        alerts = await alertmanager_alerts(harness)
        return bool(firing(alerts, "AgentRegistryTooManyAgentsTotal", instance=harness.instance))

    await wait_until_async(
        total_alert_reached_alertmanager, timeout=30, message="total alert in Alertmanager"
    )
    (alert,) = firing(
        await prometheus_alerts(harness),
        "AgentRegistryTooManyAgentsTotal",
        instance=harness.instance,
    )
    assert float(alert["value"]) == 506
    assert alert["labels"]["severity"] == "critical"
    await asyncio.sleep(3)  # longer than group_wait + a scrape: a cleanup would have happened
    assert len(registry) == 11
    assert all({a.closes for a in agents} == {0} for agents in users.values())
    assert not harness.decisions_for(set(users))


async def test_failed_receiver_is_retried_and_cleans_once(harness, registry) -> None:
    """The receiver answers 5xx once (injected); Alertmanager retries; one cleanup happens."""
    harness.source.failing_cleanups = 1
    agents = await add_agents(registry, "flaky", 70)

    await wait_until_async(
        lambda: cleanups_decided(harness, {"flaky"}), timeout=40, message="flaky cleaned"
    )

    outcomes = [d.outcome.value for d in harness.decisions_for({"flaky"})]
    assert outcomes[0] == "error"
    assert outcomes.count("cleaned") == 1
    assert {a.closes for a in agents} == {1}
    assert harness.source.failing_cleanups == 0


async def test_killed_exporter_raises_exporter_down(harness, registry) -> None:
    """Kill the second exporter process: AgentRegistryExporterDown fires for its instance."""
    victim = harness.victim
    assert victim.process is not None
    instance = victim.address
    victim.process.kill()
    victim.process.wait(10)

    async def down_in_both() -> bool:
        prom = firing(
            await prometheus_alerts(harness), "AgentRegistryExporterDown", instance=instance
        )
        am = firing(
            await alertmanager_alerts(harness), "AgentRegistryExporterDown", instance=instance
        )
        return bool(prom and am)

    await wait_until_async(
        down_in_both, timeout=30, message="AgentRegistryExporterDown in Prometheus and Alertmanager"
    )
    up = await asyncio.to_thread(harness.stack.query, f'up{{instance="{instance}"}}')
    assert up[0]["value"][1] == "0"
    assert not firing(
        await prometheus_alerts(harness), "AgentRegistryExporterDown", instance=harness.instance
    )
