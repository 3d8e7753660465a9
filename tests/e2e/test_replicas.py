"""Three replicas like pods (127.0.0.2-4, one port), the real Prometheus scraping each, a
pair of real Alertmanagers (unclustered: each delivers every notification) posting to a
round-robin proxy (the Service): every leak is cleaned once, on the replica that holds it."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from aiohttp import ClientSession

from agent_registry_exporter.testing import wait_until_async
from agent_registry_exporter.testing.fleet import LocalFleet, Replica
from agent_registry_exporter.testing.stack import LocalStack, missing_binaries

from ..conftest import RecordingAgent, add_agents, counting_listener
from .conftest import stack_running

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


@dataclass
class FleetStack:
    fleet: LocalFleet
    stack: LocalStack

    @property
    def replicas(self) -> list[Replica]:
        return self.fleet.replicas

    @property
    def port(self) -> int:
        return int(self.replicas[0].address.rsplit(":", 1)[1])

    async def prometheus_fires_for(self, users: set[str]) -> bool:
        alerts = await asyncio.to_thread(self.stack.prometheus_alerts)
        return any(a["labels"].get("user_id") in users for a in alerts)

    def outcomes(self, user_id: str) -> dict[str, list[str]]:
        return {r.address: r.outcomes(user_id) for r in self.replicas}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fleet_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FleetStack]:
    missing = missing_binaries()
    assert not missing, f"{missing} are installed by `make test` (Debian packages)"
    token = secrets.token_urlsafe(24)
    fleet = LocalFleet(HOSTS, token, settings={"cleanup_burst": 1000})
    await fleet.start()
    assert fleet.proxy is not None
    stack = LocalStack(
        workdir=tmp_path_factory.mktemp("fleet"),
        targets=fleet.targets,
        token=token,
        webhook_address=fleet.proxy.address,
        alertmanager_pair=True,
    )
    try:
        async with stack_running(request, stack):
            yield FleetStack(fleet, stack)
    finally:
        await fleet.stop()


def closes(agents: list[RecordingAgent]) -> set[int]:
    return {a.closes for a in agents}


async def test_every_leak_is_cleaned_once_on_the_replica_that_holds_it(fleet_stack) -> None:
    """Leaks on all three replicas (one user id leaking on one, healthy on two), every alert
    delivered twice: each leaking session cleaned exactly once by its owner, the second
    delivery deduped there, every healthy one untouched."""
    replicas = fleet_stack.replicas
    leaks: dict[str, tuple[Replica, list[RecordingAgent]]] = {}
    healthy: list[tuple[Replica, str, list[RecordingAgent]]] = []
    for n, replica in enumerate(replicas):
        for k in range(2):
            user = f"leak-{n}-{k}"
            leaks[user] = (replica, await add_agents(replica.registry, user, 60))
        healthy.append((replica, f"calm-{n}", await add_agents(replica.registry, f"calm-{n}", 5)))
    stale = replicas[2]
    leaks["stale-2"] = (stale, await add_agents(stale.registry, "stale-2", 3, age_hours=26))
    owner_of_shared = replicas[1]
    for replica in replicas:
        if replica is owner_of_shared:
            leaks["shared"] = (replica, await add_agents(replica.registry, "shared", 60))
        else:
            healthy.append((replica, "shared", await add_agents(replica.registry, "shared", 5)))

    await wait_until_async(
        lambda: all(r.registry.get_session(u) is None for u, (r, _) in leaks.items()),
        timeout=45,
        message="every leaking session cleaned",
    )

    async def resolved() -> bool:
        return not await fleet_stack.prometheus_fires_for(set(leaks))

    def both_deliveries_answered() -> bool:
        # The pair's second delivery of each alert is a duplicate: at the owner, directly or
        # forwarded, or at a replica still forwarding the first.
        return all(any("duplicate" in o for o in fleet_stack.outcomes(u).values()) for u in leaks)

    await wait_until_async(resolved, timeout=30, message="the leak alerts resolved")
    await wait_until_async(
        both_deliveries_answered, timeout=30, message="each second delivery deduped by its owner"
    )
    for user, (owner, agents) in leaks.items():
        assert closes(agents) == {1}, user
        assert [where for where, _ in fleet_stack.fleet.cleaned(user)] == [owner.address], (
            user,
            fleet_stack.outcomes(user),
        )
    for replica, user, agents in healthy:
        assert closes(agents) == {0}, (replica.address, user)
        session = replica.registry.get_session(user)
        assert session is not None
        assert session.agent_count == 5
    forwarded = [o for u in leaks for os in fleet_stack.outcomes(u).values() for o in os]
    assert "forwarded" in forwarded, "no alert reached a replica other than its owner"


async def test_forged_instance_is_never_contacted(fleet_stack) -> None:
    """An alert forged into Alertmanager for 127.0.0.9:<port> (a listener the test owns):
    answered unknown_instance, no connection to it, nothing cleaned."""
    victims = [await add_agents(r.registry, "forged-victim", 5) for r in fleet_stack.replicas]
    now = datetime.now(UTC)
    forged = [
        {
            "labels": {
                "alertname": "AgentRegistryTooManyAgentsPerUser",
                "remediation": "cleanup",
                "severity": "warning",
                "job": "agent-registry-exporter",
                "user_id": "forged-victim",
                "instance": f"127.0.0.9:{fleet_stack.port}",
            },
            "annotations": {"summary": "forged"},
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=10)).isoformat(),
        }
    ]
    url = f"{fleet_stack.stack.alertmanager_url}/api/v2/alerts"

    def answered() -> bool:
        return any("unknown_instance" in o for o in fleet_stack.outcomes("forged-victim").values())

    async with counting_listener("127.0.0.9", fleet_stack.port) as listener:
        async with ClientSession() as http, http.post(url, json=forged) as resp:
            assert resp.status == 200, await resp.text()
        await wait_until_async(
            answered, timeout=30, message="the forged alert answered unknown_instance"
        )

    assert listener.connections == 0
    assert all(closes(agents) == {0} for agents in victims)
    assert all(
        set(o) <= {"unknown_instance", "duplicate"}
        for o in fleet_stack.outcomes("forged-victim").values()
    )


async def test_stopped_replica_alerts_are_retried_and_cleaned_once_back(fleet_stack) -> None:
    """The owner is down when its alert is delivered: the delivery fails (5xx or refused),
    Alertmanager retries, and once the owner is back the session is cleaned there, once."""
    fleet = fleet_stack.fleet
    proxy = fleet.proxy
    assert proxy is not None
    owner = fleet.replicas[2]
    refused_before, held_before = proxy.refused[owner.address], proxy.held
    proxy.pause()  # the delivery waits in "the Service" while the owner goes down
    try:
        agents = await add_agents(owner.registry, "late", 60)
        await wait_until_async(
            lambda: proxy.held > held_before, timeout=30, message="a delivery held in the Service"
        )
        await owner.stop()
    finally:
        proxy.resume()

    def delivery_failed() -> bool:
        failed_forwards = [
            o for r in fleet.replicas for o in r.outcomes("late") if o in ("error", "timeout")
        ]
        return bool(failed_forwards) or proxy.refused[owner.address] > refused_before

    await wait_until_async(
        delivery_failed, timeout=30, message="a delivery for the stopped owner failed"
    )
    assert owner.registry.get_session("late") is not None
    assert closes(agents) == {0}

    await owner.start()
    # The decision is recorded once the agents are closed; the detach comes before that.
    await wait_until_async(lambda: bool(fleet.cleaned("late")), timeout=45, message="late cleaned")
    assert owner.registry.get_session("late") is None
    assert closes(agents) == {1}
    assert [where for where, _ in fleet.cleaned("late")] == [owner.address]
