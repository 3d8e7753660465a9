"""Cleanup goes to the worker the alert names; embedded mode acts locally as before."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_registry_exporter import AgentRegistry, InProcessSource, SidecarSource, serve_registry
from agent_registry_exporter.remediation import Outcome, Remediator

from .conftest import add_agents, serving_workers
from .test_remediation import outcomes, payload


@pytest.fixture
async def workers(socket_dir: Path) -> AsyncIterator[dict[str, AgentRegistry]]:
    """Two workers, each holding a session of "greedy" over the agent limit."""
    async with serving_workers(socket_dir, "w1", "w2") as registries:
        for registry in registries.values():
            await add_agents(registry, "greedy", 60)
        yield registries


@pytest.fixture
def remediator(source: SidecarSource) -> Remediator:
    return Remediator(source)


class TestSidecarRouting:
    async def test_alert_cleans_only_the_worker_it_names(self, workers, remediator) -> None:
        """The same user on two workers: the alert for w2 cleans w2's session, not w1's."""
        (decision,) = await remediator.handle(payload("greedy", labels={"worker": "w2"}))
        assert decision.outcome == Outcome.CLEANED
        assert (decision.worker, decision.agents_cleaned) == ("w2", 60)
        assert workers["w2"].get_session("greedy") is None
        assert workers["w1"].get_session("greedy").agent_count == 60

    async def test_worker_rechecks_before_cleaning(self, workers, remediator) -> None:
        """A session that became healthy on its worker is not wiped by a stale alert."""
        for n in range(15):
            await workers["w1"].unregister_user_agent("greedy", f"agent-{n}")
        (decision,) = await remediator.handle(payload("greedy", labels={"worker": "w1"}))
        assert decision.outcome == Outcome.NOT_VIOLATING
        assert workers["w1"].get_session("greedy").agent_count == 45

    async def test_alert_without_worker_touches_nothing(self, workers, remediator) -> None:
        """Sidecar mode with an unlabelled alert: nobody to ask, answered without retry."""
        (decision,) = await remediator.handle(payload("greedy"))
        assert decision.outcome == Outcome.UNKNOWN_WORKER
        assert "no worker label" in decision.detail
        assert all(r.get_session("greedy").agent_count == 60 for r in workers.values())

    async def test_alert_for_an_exited_worker_is_not_retried(self, workers, remediator) -> None:
        """No socket for that worker: its sessions ended with it; unknown_worker, not 5xx."""
        (decision,) = await remediator.handle(payload("greedy", labels={"worker": "w9"}))
        assert decision.outcome == Outcome.UNKNOWN_WORKER
        assert not decision.outcome.retry_helps

    async def test_worker_that_stops_answering_is_an_error_to_retry(
        self, socket_dir, remediator
    ) -> None:
        """A socket nobody listens on: error (5xx), so Alertmanager retries."""
        registry = AgentRegistry()
        await add_agents(registry, "greedy", 60)
        handle = await serve_registry(registry, socket_dir, worker="w3")
        await handle._runner.cleanup()  # type: ignore[union-attr]  # dies, socket left behind
        (decision,) = await remediator.handle(payload("greedy", labels={"worker": "w3"}))
        assert decision.outcome == Outcome.ERROR
        assert decision.outcome.retry_helps
        assert registry.get_session("greedy").agent_count == 60


class TestEmbeddedRouting:
    async def test_alert_naming_a_worker_is_not_acted_on_locally(self, registry) -> None:
        """One registry in-process: an alert meant for a worker never cleans it."""
        await add_agents(registry, "greedy", 60)
        remediator = Remediator(InProcessSource(registry))
        decisions = await remediator.handle(payload("greedy", labels={"worker": "w1"}))
        assert outcomes(decisions) == ["unknown_worker"]
        assert registry.get_session("greedy").agent_count == 60
        (decision,) = await remediator.handle(payload("greedy"))
        assert decision.outcome == Outcome.CLEANED
