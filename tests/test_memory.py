"""Memory truth: cleaned agents are watched until freed; process figures sit beside them."""

from __future__ import annotations

import gc
from dataclasses import replace

from aiohttp import ClientSession
from prometheus_client.parser import text_string_to_metric_families as parse_text

from agent_registry_exporter import Settings, serve_registry, start_exporter
from agent_registry_exporter.common.process import resident_memory_bytes
from agent_registry_exporter.exporting import TEXT, ExporterMetrics, render
from agent_registry_exporter.registry import CleanedAgentTracker
from agent_registry_exporter.sources import WorkerSource

from .conftest import FakeClock, RecordingAgent


def scraped(body: bytes) -> dict[str, float]:
    return {s.name: s.value for f in parse_text(body.decode()) for s in f.samples if not s.labels}


class TestCleanedAgentsAlive:
    async def test_a_referenced_agent_is_alive_after_the_grace_and_gone_once_released(
        self, registry, clock, fill
    ) -> None:
        """Held by the test: not counted within the grace, counted after it, gone when dropped."""
        agents = await fill("u1", 3)
        held = agents[0]
        del agents
        await registry.lifecycle_manager.trigger_cleanup("u1")
        assert held.closes == 1
        assert registry.snapshot(leak_grace_seconds=60).cleaned_agents_alive == 0
        clock.advance(61)
        assert registry.snapshot(leak_grace_seconds=60).cleaned_agents_alive == 1
        assert registry.lifecycle_manager.cleaned_agents.alive() == [held]
        del held
        gc.collect()
        assert registry.snapshot(leak_grace_seconds=60).cleaned_agents_alive == 0
        assert len(registry.lifecycle_manager.cleaned_agents) == 0

    async def test_an_agent_freed_by_the_collector_is_not_counted(
        self, registry, clock, fill
    ) -> None:
        """An agent in a reference cycle counts until a collection frees it."""
        (agent,) = await fill("u1", 1)
        agent.myself = agent  # type: ignore[attr-defined]
        del agent
        gc.disable()
        try:
            await registry.lifecycle_manager.trigger_cleanup("u1")
            clock.advance(120)
            assert registry.snapshot(leak_grace_seconds=60).cleaned_agents_alive == 1
        finally:
            gc.enable()
        gc.collect()
        assert registry.snapshot(leak_grace_seconds=60).cleaned_agents_alive == 0

    async def test_a_single_agent_cleanup_is_watched_too(self, registry, clock, fill) -> None:
        """cleanup_agent_resources hands its agent to the tracker as well."""
        (agent,) = await fill("u1", 1)
        assert await registry.lifecycle_manager.cleanup_agent_resources("u1", "agent-0")
        clock.advance(61)
        assert registry.snapshot(leak_grace_seconds=60).cleaned_agents_alive == 1
        assert agent.closes == 1

    async def test_agents_without_weak_reference_support_are_counted_untracked(
        self, registry
    ) -> None:
        """Plain object() and int agents cannot be watched: each is counted once."""
        await registry.register_user_agent("u1", "a", object())
        await registry.register_user_agent("u1", "b", 7)
        await registry.register_user_agent("u1", "c", RecordingAgent())
        await registry.lifecycle_manager.trigger_cleanup("u1")
        snapshot = registry.snapshot()
        assert snapshot.cleaned_agents_untracked == 2


class TestSidecarWorker:
    async def test_a_workers_snapshot_carries_its_leaks_with_its_grace_and_its_memory(
        self, registry, clock, fill, socket_dir
    ) -> None:
        """serve_registry(leak_grace_seconds=...) counts held agents; RSS travels along."""
        agents = await fill("u1", 2)
        await registry.lifecycle_manager.trigger_cleanup("u1")
        clock.advance(31)
        handle = await serve_registry(registry, socket_dir, worker="w1", leak_grace_seconds=30)
        client = WorkerSource("w1", handle.path, timeout=10)
        try:
            snapshot = await client.snapshot()
        finally:
            await client.close()
            await handle.stop()
        assert snapshot.cleaned_agents_alive == 2
        assert snapshot.cleaned_agents_untracked == 0
        assert snapshot.resident_memory_bytes is not None
        assert snapshot.resident_memory_bytes > 1 << 20
        assert len(agents) == 2


class TestTrackerBound:
    def test_tracking_stops_at_the_bound_and_counts_the_rest(self) -> None:
        """Past max_tracked, agents are counted as untracked instead of watched."""
        tracker = CleanedAgentTracker(clock=FakeClock(), max_tracked=2)
        kept = [RecordingAgent(str(n)) for n in range(5)]
        tracker.track(kept)
        assert len(tracker) == 2
        assert tracker.untracked_total == 3

    def test_dead_references_free_their_slot(self) -> None:
        """A freed agent leaves the tracker, so a new one can be watched in its place."""
        clock = FakeClock()
        tracker = CleanedAgentTracker(clock=clock, max_tracked=1)
        tracker.track([RecordingAgent()])  # the only reference dies with the call
        survivor = RecordingAgent()
        tracker.track([survivor])
        assert tracker.untracked_total == 0
        clock.advance(10)
        assert tracker.alive_after(5) == 1


class TestExported:
    async def test_the_gauge_is_served_with_the_configured_grace(self, registry, fill) -> None:
        """start_exporter reads leak_grace_seconds: with 0, a held agent shows at once."""
        agents = await fill("u1", 2)
        await registry.lifecycle_manager.trigger_cleanup("u1")
        registry.clock.advance(0.5)
        server = await start_exporter(
            registry, Settings(listen_host="127.0.0.1", listen_port=0, leak_grace_seconds=0)
        )
        try:
            async with ClientSession() as http, http.get(f"{server.url}/metrics") as resp:
                values = scraped(await resp.read())
        finally:
            await server.stop()
        assert values["agent_registry_cleaned_agents_alive"] == 2
        assert values["agent_registry_cleaned_agents_untracked_total"] == 0
        assert len(agents) == 2

    def test_process_and_gc_collectors_sit_beside_the_agents(self, registry) -> None:
        """Resident memory, open fds and collections come from the exporter's own registry."""
        body = render(registry.snapshot(), ExporterMetrics("1"), format=TEXT).body
        values = scraped(body)
        assert values["process_resident_memory_bytes"] > 0
        assert values["process_open_fds"] > 0
        assert b"python_gc_collections_total" in body

    def test_resident_memory_is_read_for_a_snapshot(self) -> None:
        """The figure a sidecar worker puts in its snapshot is this process's RSS."""
        rss = resident_memory_bytes()
        assert rss is not None
        assert 1 << 20 < rss < 1 << 40

    def test_snapshot_memory_is_rendered_only_when_present(self, registry) -> None:
        """A worker's resident memory appears as agent_registry_resident_memory_bytes."""
        metrics = ExporterMetrics("1")
        plain = render(registry.snapshot(), metrics, format=TEXT).body
        assert b"agent_registry_resident_memory_bytes" not in plain
        with_rss = replace(registry.snapshot(), resident_memory_bytes=4096)
        body = render(with_rss, metrics, format=TEXT).body
        assert scraped(body)["agent_registry_resident_memory_bytes"] == 4096
