"""Rendering from the registry's changes: only the touched chunks, still a full render's body."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_registry_exporter import (
    AgentRegistry,
    RegistrySnapshot,
    SessionRow,
    Settings,
    Thresholds,
    create_app,
)
from agent_registry_exporter.exporting import (
    OPENMETRICS,
    TEXT,
    ExporterMetrics,
    Rendered,
    Renderer,
    chunk_index,
    render,
)
from agent_registry_exporter.exporting import parts as parts_module
from agent_registry_exporter.exporting import renderer as renderer_module
from agent_registry_exporter.sources import (
    InProcessSource,
    PrivateIdSource,
    SidecarSource,
    UserIdHasher,
    WorkerSource,
    peek,
)

from .conftest import ENGINES, FakeClock, serving_workers
from .test_render_cache import registry_part, reused_pieces

LIMITS = Thresholds(agents_per_user=3, session_age_seconds=3600)


def full(snapshot: RegistrySnapshot) -> RegistrySnapshot:
    """The same moment with nothing known of changes: what a first scrape renders."""
    rows = [SessionRow(s.user_id, s.agent_count, s.created_timestamp) for s in snapshot.sessions]
    plain = replace(
        snapshot, sessions=rows, changes=None, changed_rows=None, epoch=None, generation=None
    )
    if snapshot.workers is None:
        return plain
    return replace(plain, workers=tuple(map(full, snapshot.workers)))


def cache_of(renderer: Renderer, worker: str | None = None, gzipped: bool = True):
    caches = renderer._deflated if gzipped else renderer._text
    return caches.by_worker[worker]


class _Walked(Exception):
    pass


def refuse_full_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A render that reads every user (the columns, the chunk boundaries) fails."""

    def walked(*args: Any, **kwargs: Any) -> None:
        raise _Walked("walked every user")

    monkeypatch.setattr(renderer_module.RegistryView, "of", walked)
    monkeypatch.setattr(renderer_module, "spans", walked)


def delta_render_is_full(
    monkeypatch: pytest.MonkeyPatch,
    renderer: Renderer,
    snapshot: RegistrySnapshot,
    metrics: ExporterMetrics,
    **options: Any,
) -> Rendered:
    """`renderer`'s render of `snapshot`, which may not read every user (every patch of the
    test undone after it), and whose registry part is a full render's."""
    refuse_full_walk(monkeypatch)
    ours = renderer.render(snapshot, metrics, **options)
    monkeypatch.undo()
    assert registry_part(ours) == registry_part(render(full(snapshot), metrics, **options))
    return ours


async def registry_of(users: int, clock: FakeClock) -> AgentRegistry:
    registry = AgentRegistry(thresholds=LIMITS, clock=clock)
    for n in range(users):
        for a in range(n % 3 + 1):
            await registry.register_user_agent(f"user-{n:04d}", f"a{a}", object())
        clock.advance(1)
    return registry


class TestOtherReadersOfTheSource:
    """The renderer is not the source's only reader: the readiness probe, the webhook's
    private-id search and its circuit breaker take snapshots too. None of them may take
    the changes the next scrape renders from (it would walk every user again)."""

    async def test_a_readiness_probe_between_scrapes_leaves_the_scrape_its_changes(
        self, aiohttp_client, monkeypatch
    ) -> None:
        """/-/ready (Kubernetes asks it more often than Prometheus scrapes) between two
        scrapes: the second scrape still renders from the changes, and shows them."""
        clock = FakeClock()
        registry = await registry_of(200, clock)
        client = await aiohttp_client(create_app(InProcessSource(registry), Settings()))
        assert (await client.get("/metrics")).status == 200
        await registry.register_user_agent("user-0005", "extra", object())
        assert (await client.get("/-/ready")).status == 200
        await registry.register_user_agent("user-0006", "extra", object())
        refuse_full_walk(monkeypatch)
        scraped = await client.get("/metrics")
        body = await scraped.text()
        assert scraped.status == 200, body
        assert 'agent_registry_user_agents{user_id="user-0005"} 4' in body
        assert 'agent_registry_user_agents{user_id="user-0006"} 2' in body

    async def test_a_private_id_search_between_renders_leaves_the_render_its_changes(
        self, monkeypatch
    ) -> None:
        """The webhook's search for a hashed label reads the sessions: the next render
        still takes every change since the one before, and is a full render's body."""
        clock = FakeClock()
        registry = await registry_of(200, clock)
        hasher = UserIdHasher(b"k" * 32)
        source, renderer = PrivateIdSource(InProcessSource(registry), hasher), Renderer()
        metrics = ExporterMetrics("1")
        renderer.render(await source.snapshot(), metrics, format=TEXT)
        await registry.register_user_agent("user-0005", "extra", object())
        await source.look_up([hasher.digest("someone-gone")])  # known to no render: a search
        await registry.unregister_user_agent("user-0100", "a0")
        snapshot = await source.snapshot()
        delta_render_is_full(monkeypatch, renderer, snapshot, metrics, format=TEXT)

    async def test_a_search_through_a_workers_sessions_leaves_the_sidecar_its_delta(
        self, socket_dir, monkeypatch
    ) -> None:
        """Sidecar mode: the webhook's search reads a worker through its socket. The next
        scrape's delta still reaches back to the last scrape, and renders a full body."""
        async with serving_workers(socket_dir, "w0") as registries:
            registry = registries["w0"]
            for n in range(200):
                await registry.register_user_agent(f"user-{n:04d}", "a0", object())
            worker = WorkerSource("w0", socket_dir / "worker-w0.sock")
            renderer, metrics = Renderer(), ExporterMetrics("1")
            try:
                renderer.render(await worker.snapshot(), metrics, format=TEXT)
                await registry.register_user_agent("user-0005", "extra", object())
                seen = await peek(worker)
                assert "newcomer" not in seen.sessions.user_ids
                await registry.register_user_agent("newcomer", "a0", object())
                await registry.unregister_user_agent("user-0100", "a0")
                snapshot = await worker.snapshot()
            finally:
                await worker.close()
        ours = delta_render_is_full(monkeypatch, renderer, snapshot, metrics, format=TEXT)
        assert b'user_id="user-0005"} 2' in ours.body

    async def test_a_count_of_every_workers_users_leaves_the_sidecar_its_deltas(
        self, socket_dir, monkeypatch
    ) -> None:
        """Sidecar mode: the circuit breaker counts the users of every worker between two
        scrapes. The next scrape still renders each worker from its delta."""
        async with serving_workers(socket_dir, "w0", "w1") as registries:
            for name, registry in registries.items():
                for n in range(100):
                    await registry.register_user_agent(f"{name}-{n:04d}", "a0", object())
            source = SidecarSource(socket_dir, timeout=30)
            renderer, metrics = Renderer(), ExporterMetrics("1")
            try:
                renderer.render(await source.snapshot(), metrics, format=TEXT)
                await registries["w0"].register_user_agent("w0-0005", "extra", object())
                assert len((await peek(source)).sessions) == 200
                await registries["w1"].unregister_user_agent("w1-0007", "a0")
                snapshot = await source.snapshot()
            finally:
                await source.close()
        delta_render_is_full(monkeypatch, renderer, snapshot, metrics, format=TEXT)


class TestOnlyTheChangedChunks:
    async def test_a_delta_render_does_not_walk_every_user(self, monkeypatch) -> None:
        """After a first full render, a scrape with changes reads only them, and its body is
        a full render's."""
        clock = FakeClock()
        registry = await registry_of(300, clock)
        source, renderer, metrics = (
            InProcessSource(registry),
            Renderer(chunk_users=16),
            ExporterMetrics("1"),
        )
        options = {"format": OPENMETRICS, "gzipped": True}
        first = renderer.render(await source.snapshot(), metrics, **options)
        await registry.register_user_agent("user-0005", "extra", object())
        await registry.unregister_user_agent("user-0100", "a0")  # its only agent: removed
        await registry.register_user_agent("newcomer", "a", object())
        (await registry.get_user_session("user-0200")).created_timestamp -= 100
        snapshot = await source.snapshot()
        ours = delta_render_is_full(monkeypatch, renderer, snapshot, metrics, **options)
        # The untouched chunks' pieces went out again as they were: most of the body.
        assert len(reused_pieces(first, ours)) >= 2 * (len(cache_of(renderer).order) - 6)

    async def test_totals_come_from_the_registry(self, monkeypatch) -> None:
        """The agents total of a delta render is the registry's incremental one."""
        clock = FakeClock()
        registry = await registry_of(50, clock)
        source, renderer, metrics = (
            InProcessSource(registry),
            Renderer(chunk_users=4),
            ExporterMetrics("1"),
        )
        renderer.render(await source.snapshot(), metrics, format=TEXT)
        await registry.register_user_agent("user-0001", "x", object())
        snapshot = await source.snapshot()
        snapshot = replace(snapshot, totals=(snapshot.totals[0], 12345))
        body = renderer.render(snapshot, metrics, format=TEXT).body
        assert b"\nagent_registry_agents 12345\n" in body

    async def test_a_snapshot_from_another_registry_is_walked_in_full(self) -> None:
        """A restarted worker (new epoch, same worker name): its changes are not applied to
        the old registry's cache; the render reads every user and is exact."""
        clock = FakeClock()
        old = await registry_of(40, clock)
        renderer, metrics = Renderer(chunk_users=4), ExporterMetrics("1")
        renderer.render(await InProcessSource(old).snapshot(), metrics, format=TEXT)
        new = await registry_of(30, clock)
        source = InProcessSource(new)
        await source.snapshot()
        await new.register_user_agent("user-0003", "x", object())
        snapshot = await source.snapshot()
        assert snapshot.changes is not None
        assert snapshot.changes.since > 0
        ours = renderer.render(snapshot, metrics, format=TEXT)
        assert registry_part(ours) == registry_part(render(full(snapshot), metrics, format=TEXT))
        assert cache_of(renderer, gzipped=False).delta.epoch == new.epoch

    async def test_scrapes_alternating_formats_each_catch_up_from_the_changes(
        self, monkeypatch
    ) -> None:
        """Text and gzip scrapes in turn (two caches, each a scrape behind): each catches up
        from the last snapshots' changes, without walking every user."""
        clock = FakeClock()
        registry = await registry_of(100, clock)
        source, renderer = InProcessSource(registry), Renderer(chunk_users=8)
        metrics = ExporterMetrics("1")
        kinds = [{"format": TEXT}, {"format": OPENMETRICS, "gzipped": True}]
        for options in kinds:
            renderer.render(await source.snapshot(), metrics, **options)
        refuse_full_walk(monkeypatch)
        rendered = []
        for n in range(6):
            await registry.register_user_agent(f"user-{n:04d}", "more", object())
            await registry.unregister_user_agent(f"user-{50 + n:04d}", "a0")
            options = kinds[n % 2]
            snapshot = await source.snapshot()
            rendered.append((renderer.render(snapshot, metrics, **options), full(snapshot)))
        monkeypatch.undo()
        for n, (ours, frozen) in enumerate(rendered):
            expected = render(frozen, metrics, **kinds[n % 2])
            assert registry_part(ours) == registry_part(expected)

    async def test_counts_past_a_byte_render_as_a_full_render(self, monkeypatch) -> None:
        """Chunks keep agent counts a byte each while they fit: a count past 255 read by a
        walk, set by a delta, brought by a new user, merged, then walked again: each body
        is a full render's."""
        clock = FakeClock()
        registry = await registry_of(40, clock)
        source, renderer = InProcessSource(registry), Renderer(chunk_users=4)
        metrics, options = ExporterMetrics("1"), {"format": OPENMETRICS, "gzipped": True}

        async def grow(user_id: str, agents: int) -> None:
            for a in range(agents):
                await registry.register_user_agent(user_id, f"x{a}", object())

        await grow("user-0001", 300)
        renderer.render(await source.snapshot(), metrics, **options)
        await grow("user-0020", 260)
        await grow("newcomer", 257)
        for n in range(28, 40):
            await registry.detach_session(f"user-{n:04d}")
        snapshot = await source.snapshot()
        ours = delta_render_is_full(monkeypatch, renderer, snapshot, metrics, **options)
        await grow("user-0002", 256)
        await registry.unregister_user_agent("user-0001", "x0")
        snapshot = full(await source.snapshot())  # no changes known: the cache is walked
        ours = renderer.render(snapshot, metrics, **options)
        assert registry_part(ours) == registry_part(render(snapshot, metrics, **options))
        assert b'agent_registry_user_agents{user_id="user-0001"} 301' in registry_part(ours)

    async def test_changes_no_cache_needs_are_not_kept(self) -> None:
        """One kind of scrape only (Prometheus'): after each render no cache is behind, so
        the renderer keeps no snapshot's changes (a mass removal leaves nothing behind)."""
        clock = FakeClock()
        registry = await registry_of(200, clock)
        source, renderer = InProcessSource(registry), Renderer(chunk_users=8)
        metrics, options = ExporterMetrics("1"), {"format": OPENMETRICS, "gzipped": True}
        renderer.render(await source.snapshot(), metrics, **options)
        for n in range(150):
            await registry.detach_session(f"user-{n:04d}")
        snapshot = await source.snapshot()
        assert snapshot.changes is not None
        assert len(snapshot.changes.removed) == 150
        ours = renderer.render(snapshot, metrics, **options)
        assert registry_part(ours) == registry_part(render(full(snapshot), metrics, **options))
        assert renderer._history.held() == 0

    async def test_changes_a_cache_behind_needs_are_kept(self) -> None:
        """A text cache a scrape behind the gzip one: the last changes are kept for it."""
        clock = FakeClock()
        registry = await registry_of(50, clock)
        source, renderer, metrics = InProcessSource(registry), Renderer(), ExporterMetrics("1")
        renderer.render(await source.snapshot(), metrics, format=TEXT)
        renderer.render(await source.snapshot(), metrics, format=OPENMETRICS, gzipped=True)
        await registry.register_user_agent("user-0001", "more", object())
        renderer.render(await source.snapshot(), metrics, format=OPENMETRICS, gzipped=True)
        assert renderer._history.held() == 1
        renderer.render(await source.snapshot(), metrics, format=TEXT)
        assert renderer._history.held() == 0

    async def test_a_render_failing_midway_leaves_no_stale_piece(self) -> None:
        """A label that raises while the changes are taken in (a private-id hash failing):
        the render fails, and the next one is still exactly a full render's body."""
        clock = FakeClock()
        registry = await registry_of(60, clock)
        source, renderer = InProcessSource(registry), Renderer(chunk_users=4)
        metrics = ExporterMetrics("1")
        failing = {"on": False}

        def label(user_id: str) -> str:
            if failing["on"] and user_id == "newcomer":
                raise RuntimeError("hash key unavailable")
            return f"h-{user_id}"

        def labelled(snapshot: RegistrySnapshot) -> RegistrySnapshot:
            return replace(snapshot, user_label=label)

        renderer.render(labelled(await source.snapshot()), metrics, format=TEXT)
        for n in range(0, 60, 3):
            await registry.unregister_user_agent(f"user-{n:04d}", "a0")
        await registry.register_user_agent("newcomer", "a", object())
        failing["on"] = True
        with pytest.raises(RuntimeError, match="hash key"):
            renderer.render(labelled(await source.snapshot()), metrics, format=TEXT)
        failing["on"] = False
        await registry.register_user_agent("user-0001", "more", object())
        snapshot = labelled(await source.snapshot())
        ours = renderer.render(snapshot, metrics, format=TEXT)
        assert registry_part(ours) == registry_part(render(full(snapshot), metrics, format=TEXT))

    async def test_a_walk_failing_midway_leaves_no_stale_piece(self) -> None:
        """The same failure while every user is read (a snapshot without changes)."""
        clock = FakeClock()
        registry = await registry_of(60, clock)
        renderer, metrics = Renderer(chunk_users=4), ExporterMetrics("1")
        failing = {"on": False}

        def label(user_id: str) -> str:
            if failing["on"] and user_id == "newcomer":
                raise RuntimeError("hash key unavailable")
            return f"h-{user_id}"

        def frozen() -> RegistrySnapshot:
            return replace(full(registry.snapshot()), user_label=label)

        renderer.render(frozen(), metrics, format=TEXT)
        for n in range(60):
            await registry.register_user_agent(f"user-{n:04d}", "more", object())
        await registry.register_user_agent("newcomer", "a", object())
        failing["on"] = True
        with pytest.raises(RuntimeError, match="hash key"):
            renderer.render(frozen(), metrics, format=TEXT)
        failing["on"] = False
        snapshot = frozen()
        ours = renderer.render(snapshot, metrics, format=TEXT)
        assert registry_part(ours) == registry_part(render(snapshot, metrics, format=TEXT))

    async def test_chunks_left_small_are_merged(self) -> None:
        """Removing most users of every chunk, a scrape at a time, does not leave a body of
        one-user pieces."""
        clock = FakeClock()
        registry = await registry_of(256, clock)
        source, renderer, metrics = (
            InProcessSource(registry),
            Renderer(chunk_users=16),
            ExporterMetrics("1"),
        )
        renderer.render(await source.snapshot(), metrics, format=TEXT)
        for n in range(256):
            if n % 8:
                await registry.detach_session(f"user-{n:04d}")
                if n % 16 == 1:
                    renderer.render(await source.snapshot(), metrics, format=TEXT)
        snapshot = await source.snapshot()
        ours = renderer.render(snapshot, metrics, format=TEXT)
        assert registry_part(ours) == registry_part(render(full(snapshot), metrics, format=TEXT))
        order = cache_of(renderer, gzipped=False).order
        assert sum(len(c.user_ids) for c in order) == 32
        assert len(order) <= 8


step = st.one_of(
    st.tuples(st.just("register"), st.integers(0, 9), st.integers(0, 2)),
    st.tuples(st.just("unregister"), st.integers(0, 9), st.integers(0, 2)),
    st.tuples(st.just("session"), st.integers(0, 9)),
    st.tuples(st.just("cleanup"), st.integers(0, 9), st.booleans()),
    st.tuples(st.just("backdate"), st.integers(0, 9)),
    st.tuples(st.just("restart"), st.integers(0, 1)),
    st.tuples(st.just("skip"), st.integers(0, 1)),  # a snapshot taken and never rendered
    st.tuples(
        st.just("render"),
        st.booleans(),  # OpenMetrics
        st.booleans(),  # gzip
        st.sampled_from([4, 1000, 1000, 1000]),  # the cap
        st.booleans(),  # the age family
        st.sampled_from([0.0, 0.0, 0.0, 0.0, 0.5]),
    ),
)


class _Worker:
    uncopied = 0  # the source's delta_renders_up_to: sessions left uncopied up to this many

    def __init__(self, name: str | None, clock: FakeClock) -> None:
        self.name, self.clock = name, clock
        self.restart()

    def restart(self) -> None:
        self.registry = AgentRegistry(thresholds=LIMITS, clock=self.clock, agent_close_timeout=5)
        self.source = InProcessSource(self.registry, delta_renders_up_to=self.uncopied)

    async def snapshot(self) -> RegistrySnapshot:
        return replace(await self.source.snapshot(), worker=self.name)


async def play(steps: list[tuple[Any, ...]], engine: Any, sidecar: bool) -> None:
    clock = FakeClock()
    workers = [_Worker("w0", clock), _Worker('w"1', clock)] if sidecar else [_Worker(None, clock)]
    renderer, metrics = Renderer(chunk_users=4, engine=engine), ExporterMetrics("1")
    cleanups = []
    for op, *args in [*steps, ("render", True, True, 1000, True, 0.0)]:
        worker = workers[(args[0] if args else 0) % len(workers)]
        registry, user = worker.registry, f"u{args[0]}" if args else ""
        clock.advance(7)
        if op == "register":
            if (
                registry.get_session(user) is None
                or f"a{args[1]}" not in registry.get_session(user).agents
            ):
                await registry.register_user_agent(user, f"a{args[1]}", object())
        elif op == "unregister":
            await registry.unregister_user_agent(user, f"a{args[1]}")
        elif op == "session":
            await registry.get_user_session(user)
        elif op == "cleanup":
            task = registry.lifecycle_manager.trigger_cleanup(user, if_violating=args[1])
            cleanups.append(asyncio.ensure_future(task))
        elif op == "backdate" and (session := registry.get_session(user)) is not None:
            session.created_timestamp -= 1800
        elif op == "restart":
            workers[args[0] % len(workers)].restart()
        elif op == "skip":
            await workers[args[0] % len(workers)].snapshot()
        elif op == "render":
            openmetrics, gzipped, cap, age, pressure = args
            options = dict(
                format=OPENMETRICS if openmetrics else TEXT,
                gzipped=gzipped,
                max_user_series=cap,
                export_session_age=age,
                user_series_min_pressure=pressure,
            )
            parts = [await w.snapshot() for w in workers]
            snapshot = replace(parts[0], workers=tuple(parts)) if sidecar else parts[0]
            ours = renderer.render(snapshot, metrics, **options)
            assert registry_part(ours) == registry_part(render(full(snapshot), metrics, **options))
        await asyncio.sleep(0)
    await asyncio.gather(*cleanups)


class TestAnyHistoryOverDeltas:
    @pytest.mark.parametrize("engine", ENGINES)
    @pytest.mark.parametrize("sidecar", [False, True], ids=["one registry", "two workers"])
    @settings(max_examples=150, deadline=None)
    @given(st.lists(step, max_size=50))
    def test_any_history_renders_a_full_renders_body(self, engine, sidecar, steps) -> None:
        """Registrations, removals, empty sessions, racing cleanups, backdating, restarted
        workers (a new epoch), snapshots never rendered, caps, formats: byte for byte."""
        asyncio.run(play(steps, engine, sidecar))

    @pytest.mark.parametrize("engine", ENGINES)
    @settings(max_examples=100, deadline=None)
    @given(st.lists(step, max_size=50))
    def test_any_history_renders_a_full_renders_body_folding_the_index_at_every_change(
        self, engine, steps
    ) -> None:
        """The same when the cache's user-to-chunk index folds its pending additions and
        removals into its sorted part at every change (at 100,000 users: every ~100 scrapes)."""
        with mock.patch.object(chunk_index, "_PENDING_MIN", 0):
            asyncio.run(play(steps, engine, False))

    @pytest.mark.parametrize("engine", ENGINES)
    @settings(max_examples=60, deadline=None)
    @given(st.lists(step, max_size=50))
    def test_any_history_renders_a_full_renders_body_with_a_helper_compressing_every_text(
        self, engine, steps
    ) -> None:
        """The same when every fresh text of a gzip body goes to the helper thread (at
        100,000 users only the batches of the age family do)."""
        with mock.patch.object(parts_module, "BATCH", 1):
            asyncio.run(play(steps, engine, True))

    @pytest.mark.parametrize("engine", ENGINES)
    @pytest.mark.parametrize("sidecar", [False, True], ids=["one registry", "two workers"])
    @settings(max_examples=60, deadline=None)
    @given(st.lists(step, max_size=50))
    def test_any_history_renders_a_full_renders_body_leaving_the_sessions_uncopied(
        self, engine, sidecar, steps
    ) -> None:
        """The same when the snapshots with changes keep only the number of sessions and the
        last ones (what the embedded server's source does while every user is exported)."""
        with mock.patch.object(_Worker, "uncopied", 1000):
            asyncio.run(play(steps, engine, sidecar))
