"""Sidecar deltas over any history (hypothesis): what the sidecar renders from the deltas
it applied, with a renderer that takes each delta's changes into its cache, is byte for
byte what a fresh render of a full snapshot of the same registry gives.

A real registry served on a real socket, the sidecar's real worker client: registrations,
unregistrations, conditional and unconditional cleanups, backdated sessions, sidecar and
worker restarts, interleaved with scrapes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from agent_registry_exporter import AgentRegistry, RegistrySnapshot, Thresholds, serve_registry
from agent_registry_exporter.exporting import OPENMETRICS, TEXT, ExporterMetrics, Renderer, render
from agent_registry_exporter.sources import WorkerSource

from .conftest import FakeClock, RecordingAgent
from .test_render_cache import single_member
from .test_socket_api import snapshot_answer

USERS = ("u0", "u1", "u2", "u\n3", "u4")
LIMITS = Thresholds(agents_per_user=2, session_age_seconds=3600)


def registry_families_only() -> ExporterMetrics:
    metrics = ExporterMetrics("1")
    metrics.registry = CollectorRegistry()
    return metrics


METRICS = registry_families_only()


def as_sidecar(part: RegistrySnapshot) -> RegistrySnapshot:
    """What the sidecar renders: one part per worker, here one."""
    # The worker's resident memory moves between two answers: not what is compared here.
    part = dataclasses.replace(part, resident_memory_bytes=None)
    return RegistrySnapshot(
        taken_at=part.taken_at, thresholds=part.thresholds, sessions=part.sessions, workers=(part,)
    )


def body(renderer: Renderer | None, snapshot: RegistrySnapshot, options: dict[str, Any]) -> bytes:
    draw = render if renderer is None else renderer.render
    rendered = draw(as_sidecar(snapshot), METRICS, **options)
    return single_member(rendered.body) if rendered.gzipped else rendered.body


step = st.one_of(
    st.tuples(st.just("register"), st.sampled_from(USERS), st.integers(1, 3)),
    st.tuples(st.just("unregister"), st.sampled_from(USERS), st.integers(0, 4)),
    st.tuples(st.just("cleanup"), st.sampled_from(USERS), st.booleans()),
    st.tuples(st.just("age"), st.sampled_from(USERS), st.sampled_from([0.5, 2.0])),
    st.tuples(st.just("scrape"), st.booleans(), st.booleans(), st.sampled_from([3, 1000])),
    st.tuples(st.just("scrape"), st.just(True), st.just(True), st.just(1000)),
    st.tuples(st.just("sidecar restarts")),
    st.tuples(st.just("worker restarts")),
)


class Play:
    def __init__(self, socket_dir: Path) -> None:
        self.socket_dir = socket_dir
        self.clock = FakeClock()
        self.registry = AgentRegistry(thresholds=LIMITS, clock=self.clock)
        self.names = 0
        self.renderer = Renderer(chunk_users=2)  # tiny chunks: boundaries everywhere

    async def start(self) -> None:
        self.handle = await serve_registry(self.registry, self.socket_dir, worker="w0")
        self.client = WorkerSource("w0", self.handle.path, timeout=30)

    async def stop(self) -> None:
        await self.client.close()
        await self.handle.stop()

    async def act(self, action: str, *args: Any) -> None:
        registry, manager = self.registry, self.registry.lifecycle_manager
        if action == "register":
            for _ in range(args[1]):
                self.names += 1
                await registry.register_user_agent(args[0], f"a{self.names}", RecordingAgent())
        elif action == "unregister":
            session = registry.get_session(args[0])
            if session is not None and session.agents:
                agents = list(session.agents)
                await registry.unregister_user_agent(args[0], agents[args[1] % len(agents)])
        elif action == "cleanup":
            await manager.trigger_cleanup(args[0], if_violating=args[1])
        elif action == "age":
            session = registry.get_session(args[0])
            if session is not None:
                session.created_timestamp = self.clock() - args[1] * LIMITS.session_age_seconds
        elif action == "sidecar restarts":
            await self.client.close()
            self.client = WorkerSource("w0", self.handle.path, timeout=30)
        elif action == "worker restarts":  # same slot name, a new registry: a new epoch
            await self.handle.stop()
            self.registry = AgentRegistry(thresholds=LIMITS, clock=self.clock)
            self.handle = await serve_registry(self.registry, self.socket_dir, worker="w0")
        elif action == "scrape":
            await self.scrape(*args)

    async def scrape(self, openmetrics: bool, gzipped: bool, cap: int) -> None:
        self.clock.advance(15)
        ours = await self.client.snapshot()
        full = (await snapshot_answer(self.handle.path)).snapshot
        assert [tuple(s) for s in ours.sessions] == [
            (s.user_id, s.agent_count, s.created_timestamp) for s in self.registry.sessions()
        ]
        options = {
            "format": OPENMETRICS if openmetrics else TEXT,
            "gzipped": gzipped,
            "max_user_series": cap,
        }
        full = dataclasses.replace(full, worker="w0")
        assert body(self.renderer, ours, options) == body(None, full, options)


async def play(steps: list[tuple[Any, ...]]) -> dict[str, int]:
    with tempfile.TemporaryDirectory(prefix="ars-") as directory:
        history = Play(Path(directory))
        await history.start()
        try:
            for action, *args in [*steps, ("scrape", True, True, 1000)]:
                await history.act(action, *args)
            return dict(history.client.answers)
        finally:
            await history.stop()


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


class TestAnyHistoryOverTheSocket:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(steps=st.lists(step, max_size=25))
    def test_deltas_render_a_full_snapshots_body(self, loop, steps) -> None:
        """After every scrape: the rows are the registry's, in its order, and the body is
        the one a full snapshot renders; no delta ever misfits."""
        answers = loop.run(play(steps))
        assert "mismatch" not in answers

    def test_a_long_quiet_history_is_served_by_deltas(self, loop) -> None:
        """Many scrapes, few changes: one full snapshot, then deltas only."""
        scrape = ("scrape", True, True, 1000)
        steps = [("register", "u0", 2), scrape] + [scrape] * 5
        steps += [("unregister", "u0", 0), scrape, ("register", "u1", 1), scrape]
        assert loop.run(play(steps)) == {"full": 1, "delta": 8}

    def test_the_sidecars_renderer_takes_each_delta_into_its_cache(self, loop) -> None:
        """The renderer's cache of the worker is brought forward delta by delta: the state
        its first (full) walk left is updated in place, never rebuilt by another walk."""

        async def scrapes() -> None:
            with tempfile.TemporaryDirectory(prefix="ars-") as directory:
                history = Play(Path(directory))
                await history.start()
                try:
                    for n in range(200):
                        await history.act("register", f"user{n}", 1)
                    states = []
                    for n in range(3):
                        await history.act("register", f"user{n}", 1)
                        await history.scrape(True, True, 1000)
                        state = history.renderer._deflated.by_worker["w0"].delta
                        assert state is not None
                        assert (state.epoch, state.generation) == (
                            history.registry.epoch,
                            history.registry.generation,
                        )
                        states.append(state)
                    assert states[0] is states[1] is states[2]
                    assert history.client.answers == {"full": 1, "delta": 2}
                finally:
                    await history.stop()

        loop.run(scrapes())
