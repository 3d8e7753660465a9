"""Operators relabel `instance` to the pod name: three replicas like pods (127.0.0.2-4, one
port), the real Prometheus rewriting each target's `instance` to `pod-a`, `pod-b`, `pod-c`,
the shipped rules joining each replica's advertised address, the real Alertmanager posting to
one replica only: every leak is cleaned once on its owner, nothing healthy touched."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from agent_registry_exporter.testing import wait_until_async
from agent_registry_exporter.testing.fleet import LocalFleet, Replica
from agent_registry_exporter.testing.stack import LocalStack, missing_binaries

from ..conftest import RecordingAgent, add_agents
from .conftest import stack_running

pytestmark = [pytest.mark.e2e, pytest.mark.processes, pytest.mark.asyncio(loop_scope="session")]

PODS = {"127.0.0.2": "pod-a", "127.0.0.3": "pod-b", "127.0.0.4": "pod-c"}


def pod_name_relabelling() -> list[dict[str, Any]]:
    """`instance` becomes the pod's name, as a kubernetes_sd relabelling to
    `__meta_kubernetes_pod_name` does: the address is no longer in any label but `address`."""
    return [
        {
            "source_labels": ["__address__"],
            "regex": rf"{re.escape(host)}:\d+",
            "target_label": "instance",
            "replacement": pod,
        }
        for host, pod in PODS.items()
    ]


@dataclass
class RelabelledFleet:
    fleet: LocalFleet
    stack: LocalStack

    @property
    def replicas(self) -> list[Replica]:
        return self.fleet.replicas

    def pod(self, replica: Replica) -> str:
        return PODS[replica.address.rsplit(":", 1)[0]]

    def outcomes(self, user_id: str) -> dict[str, list[str]]:
        return {r.address: r.outcomes(user_id) for r in self.replicas}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def relabelled(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RelabelledFleet]:
    missing = missing_binaries()
    assert not missing, f"{missing} are installed by `make test` (Debian packages)"
    token = secrets.token_urlsafe(24)
    fleet = LocalFleet(tuple(PODS), token, settings={"cleanup_burst": 1000})
    await fleet.start()
    stack = LocalStack(
        workdir=tmp_path_factory.mktemp("relabelled"),
        targets=fleet.targets,
        token=token,
        webhook_address=fleet.targets[0],  # one replica receives every alert
        relabel_configs=pod_name_relabelling(),
    )
    try:
        async with stack_running(request, stack):
            yield RelabelledFleet(fleet, stack)
    finally:
        await fleet.stop()


def closes(agents: list[RecordingAgent]) -> set[int]:
    return {a.closes for a in agents}


async def advertised(relabelled: RelabelledFleet) -> dict[str, str]:
    """instance -> address of every agent_registry_exporter_info series, once all three are
    scraped (so the cleanup rules can join each one)."""

    async def info() -> dict[str, str]:
        series = await asyncio.to_thread(relabelled.stack.query, "agent_registry_exporter_info")
        return {s["metric"]["instance"]: s["metric"]["address"] for s in series}

    async def all_three() -> dict[str, str] | None:
        found = await info()
        return found if len(found) == len(PODS) else None

    return await wait_until_async(all_three, timeout=30, message="every replica's info scraped")


async def test_prometheus_sees_pod_names_and_each_replicas_address(relabelled) -> None:
    """The relabelling is real: `instance` is a pod name, `address` the replica's own."""
    assert await advertised(relabelled) == {
        relabelled.pod(r): r.address for r in relabelled.replicas
    }


async def test_every_leak_is_cleaned_once_on_its_owner(relabelled) -> None:
    """Leaks on all three replicas (one user id leaking on one, healthy on the others), every
    alert posted to pod-a: each leaking session cleaned exactly once, by the replica holding
    it, routed by `address`; no alert dropped as an unknown instance; healthy ones untouched."""
    await advertised(relabelled)
    replicas = relabelled.replicas
    leaks: dict[str, tuple[Replica, list[RecordingAgent]]] = {}
    healthy: list[tuple[Replica, str, list[RecordingAgent]]] = []
    for n, replica in enumerate(replicas):
        for k in range(2):
            user = f"leak-{n}-{k}"
            leaks[user] = (replica, await add_agents(replica.registry, user, 60))
        healthy.append((replica, f"calm-{n}", await add_agents(replica.registry, f"calm-{n}", 5)))
    old = replicas[2]
    leaks["stale-2"] = (old, await add_agents(old.registry, "stale-2", 3, age_hours=26))
    for replica in replicas:
        if replica is replicas[1]:
            leaks["shared"] = (replica, await add_agents(replica.registry, "shared", 60))
        else:
            healthy.append((replica, "shared", await add_agents(replica.registry, "shared", 5)))

    # A decision is recorded once its cleanup has finished, after the session was detached;
    # the replica that forwarded it records its own once the owner has answered, later (a
    # loaded machine once asserted in between: no "forwarded" yet).
    await wait_until_async(
        lambda: all(
            r.registry.get_session(u) is None
            and relabelled.fleet.cleaned(u)
            and (r is replicas[0] or "forwarded" in replicas[0].outcomes(u))
            for u, (r, _) in leaks.items()
        ),
        timeout=45,
        message="every leaking session cleaned and its decision recorded",
    )

    for user, (owner, agents) in leaks.items():
        assert closes(agents) == {1}, user
        cleaned = [where for where, _ in relabelled.fleet.cleaned(user)]
        assert cleaned == [owner.address], (user, relabelled.outcomes(user))
        (decision,) = [d for _, d in owner.decisions if d.outcome.value == "cleaned"
                       and d.user_id == user]  # fmt: skip
        assert (decision.instance, decision.address) == (relabelled.pod(owner), owner.address)
        if owner is not replicas[0]:
            assert "forwarded" in replicas[0].outcomes(user), user
    for replica, user, agents in healthy:
        assert closes(agents) == {0}, (replica.address, user)
        session = replica.registry.get_session(user)
        assert session is not None
        assert session.agent_count == 5
    every = [o for u in leaks for os in relabelled.outcomes(u).values() for o in os]
    assert "unknown_instance" not in every
    assert "other_instance" not in every
