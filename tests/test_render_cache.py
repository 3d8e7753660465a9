"""Rendering only what changed: whatever the history, the body is a full render's body."""

from __future__ import annotations

import gzip
import random
import uuid
import zlib
from array import array
from dataclasses import replace
from itertools import pairwise

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

from agent_registry_exporter import RegistrySnapshot, SessionRow, Thresholds
from agent_registry_exporter.exporting import (
    FORMATS,
    OPENMETRICS,
    TEXT,
    ExporterMetrics,
    Renderer,
    render,
)
from agent_registry_exporter.exporting.chunks import spans
from agent_registry_exporter.exporting.columns import SLICE, session_columns, sliced_sum
from agent_registry_exporter.exporting.selection import select_indexes
from agent_registry_exporter.registry import SessionColumns
from agent_registry_exporter.sources import decode_snapshot

from .conftest import ENGINES, T0, loopback_exporter
from .test_snapshot_codec import encode, with_header

OWN = b"# HELP process_"  # the exporter's own figures move between renders: compared apart


def single_member(body: bytes) -> bytes:
    """The text of a gzip body that must be exactly one member (what curl reads whole)."""
    stream = zlib.decompressobj(31)
    text = stream.decompress(body)
    assert stream.eof, "the gzip member does not end"
    assert stream.unused_data == b"", "more than one gzip member"
    return text


def registry_part(rendered) -> bytes:
    body = single_member(rendered.body) if rendered.gzipped else rendered.body
    return body.split(OWN)[0]


def deflated_chunks(renderer: Renderer) -> dict:
    """The deflated chunks an in-process (single registry) renderer keeps."""
    return renderer._deflated.by_worker[None].chunks


def reused_pieces(first, second) -> set[int]:
    """The pieces of `second` sent as they were in `first` (the fixed gzip header aside,
    and single bytes, which Python shares)."""
    ids = [{id(p) for p in body.parts[1:] if len(p) > 1} for body in (first, second)]
    return ids[0] & ids[1]


def snapshot_of(rows: dict[str, SessionRow], now: float = T0) -> RegistrySnapshot:
    return RegistrySnapshot(taken_at=now, thresholds=Thresholds(), sessions=list(rows.values()))


def sidecar_snapshot_of(rows: dict[str, SessionRow], now: float) -> RegistrySnapshot:
    """Two workers sharing the users, named to try the label escaping (and a stray %)."""
    listed = list(rows.values())
    workers = tuple(
        replace(snapshot_of({r.user_id: r for r in listed[n::2]}, now), worker=name)
        for n, name in enumerate(['w"1%d', "w2"])
    )
    return replace(snapshot_of(rows, now), workers=workers)


ids = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=6)
change = st.one_of(
    st.tuples(st.just("add"), ids, st.integers(0, 80), st.floats(0, 200_000)),
    st.tuples(st.just("remove"), st.integers(0, 1000)),
    st.tuples(st.just("count"), st.integers(0, 1000), st.integers(0, 80)),
    st.tuples(st.just("recreate"), st.integers(0, 1000), st.floats(0, 200_000)),
    st.tuples(
        st.just("render"),
        st.booleans(),
        st.booleans(),
        st.sampled_from([3, 10, 1000]),
        st.booleans(),
        st.booleans(),
        st.sampled_from([0.0, 0.0, 0.5]),
    ),
)


class TestSameBodyAsAFullRender:
    @pytest.mark.parametrize("engine", ENGINES)
    @settings(max_examples=100, deadline=None)
    @given(st.lists(change, max_size=60))
    def test_any_sequence_of_changes_renders_a_full_renders_body(self, engine, changes) -> None:
        """After adds, removals, count changes and re-created sessions, byte for byte.

        Renders alternate between formats, encodings, caps, with and without the age family,
        and between one registry and a sidecar's two workers; every gzip body is one member.
        """
        rows: dict[str, SessionRow] = {}
        renderer = Renderer(chunk_users=2, engine=engine)  # tiny chunks: boundaries everywhere
        metrics = ExporterMetrics("1")
        now = T0
        for op, *args in [*changes, ("render", True, True, 1000, True, False, 0.0)]:
            keys = list(rows)
            if op == "add" and args[0] not in rows:
                rows[args[0]] = SessionRow(args[0], args[1], T0 - args[2])
            elif op == "remove" and keys:
                del rows[keys[args[0] % len(keys)]]
            elif op == "count" and keys:
                user = keys[args[0] % len(keys)]
                rows[user] = rows[user]._replace(agent_count=args[1])
            elif op == "recreate" and keys:
                user = keys[args[0] % len(keys)]
                del rows[user]
                rows[user] = SessionRow(user, 1, T0 - args[1])
            elif op == "render":
                openmetrics, gzipped, cap, age, sidecar, pressure = args
                now += 15
                options = dict(
                    format=OPENMETRICS if openmetrics else TEXT,
                    gzipped=gzipped,
                    max_user_series=cap,
                    export_session_age=age,
                    user_series_min_pressure=pressure,
                )
                snapshot = (sidecar_snapshot_of if sidecar else snapshot_of)(rows, now)
                ours = renderer.render(snapshot, metrics, **options)
                full = render(snapshot, metrics, **options)  # default engine, nothing cached
                assert registry_part(ours) == registry_part(full)

    def test_prometheus_client_parses_a_body_of_reused_pieces(self) -> None:
        """Pieces compressed at an earlier scrape, spliced into one member, parse as
        OpenMetrics to every user's series."""
        rows = {f"u{n}": SessionRow(f"u{n}", n % 7, T0 - n) for n in range(300)}
        renderer = Renderer(chunk_users=16)
        metrics = ExporterMetrics("1")
        first = renderer.render(snapshot_of(rows), metrics, format=OPENMETRICS, gzipped=True)
        rows["u5"] = rows["u5"]._replace(agent_count=40)
        rendered = renderer.render(snapshot_of(rows), metrics, format=OPENMETRICS, gzipped=True)
        assert len(reused_pieces(first, rendered)) > 10
        families = {f.name: f for f in parse_om(single_member(rendered.body).decode())}
        agents = {
            s.labels["user_id"]: s.value for s in families["agent_registry_user_agents"].samples
        }
        assert len(agents) == 300
        assert agents["u5"] == 40


class TestEncodings:
    @pytest.mark.parametrize("engine", ENGINES)
    @pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
    def test_gzip_is_a_single_member_in_both_formats(self, engine, fmt) -> None:
        """curl --compressed reads only the first member: every gzip scrape is one, cached
        pieces included, and its trailer holds the CRC and length of the whole text."""
        rows = {f"u{n}": SessionRow(f"u{n}", 1, T0) for n in range(500)}
        renderer = Renderer(chunk_users=16, engine=engine)
        for _ in range(2):
            rendered = renderer.render(
                snapshot_of(rows), ExporterMetrics("1"), format=fmt, gzipped=True
            )
        text = single_member(rendered.body)
        assert text.count(b"agent_registry_user_agents{") == 500
        assert gzip.decompress(rendered.body) == text  # checks the CRC-32 and the length

    def test_a_render_racing_another_starts_afresh_and_is_still_exact(self) -> None:
        """While one render holds the cache, a second renders without it, same body."""
        rows = {f"u{n}": SessionRow(f"u{n}", n % 5, T0 - n) for n in range(200)}
        renderer = Renderer(chunk_users=16)
        metrics = ExporterMetrics("1")
        options = {"format": OPENMETRICS, "gzipped": True}
        renderer.render(snapshot_of(rows), metrics, **options)
        held = {key: chunk.agents_data for key, chunk in deflated_chunks(renderer).items()}
        rows["u3"] = rows["u3"]._replace(agent_count=44)
        with renderer._deflated.lock:
            racing = renderer.render(snapshot_of(rows), metrics, **options)
        untouched = {key: chunk.agents_data for key, chunk in deflated_chunks(renderer).items()}
        assert untouched == held  # the holder's cache was not touched
        assert registry_part(racing) == registry_part(render(snapshot_of(rows), metrics, **options))


class TestMinPressure:
    def test_only_notable_users_get_series_and_the_rest_are_counted_omitted(self) -> None:
        """At 0.5, users under half of both limits are left out; totals count everyone and
        the omitted gauge counts every user not exported."""
        rows = {f"calm{n}": SessionRow(f"calm{n}", 3, T0 - 60) for n in range(500)}
        rows["busy"] = SessionRow("busy", 30, T0 - 60)  # 30 of 50 agents: 0.6
        rows["old"] = SessionRow("old", 1, T0 - 50_000)  # 50,000 of 86,400 s: 0.58
        rows["over"] = SessionRow("over", 51, T0)  # a violator
        metrics = _own_metrics_left_out()
        body = render(
            snapshot_of(rows), metrics, format=OPENMETRICS, user_series_min_pressure=0.5
        ).body.decode()
        families = {f.name: f for f in parse_om(body)}
        exported = {s.labels["user_id"] for s in families["agent_registry_user_agents"].samples}
        assert exported == {"busy", "old", "over"}
        (omitted,) = families["agent_registry_user_series_omitted"].samples
        assert omitted.value == 500
        (users,) = families["agent_registry_users"].samples
        (agents,) = families["agent_registry_agents"].samples
        assert (users.value, agents.value) == (503, 500 * 3 + 30 + 1 + 51)

    def test_the_cap_still_bounds_the_notable_users_violators_first(self) -> None:
        """More notable users than the cap: the cap keeps the highest pressures."""
        rows = {f"near{n}": SessionRow(f"near{n}", 40, T0) for n in range(20)}
        rows["over"] = SessionRow("over", 70, T0)
        body = render(
            snapshot_of(rows),
            _own_metrics_left_out(),
            format=OPENMETRICS,
            max_user_series=5,
            user_series_min_pressure=0.5,
        ).body.decode()
        families = {f.name: f for f in parse_om(body)}
        exported = [s.labels["user_id"] for s in families["agent_registry_user_agents"].samples]
        assert "over" in exported
        assert len(exported) == 5
        assert families["agent_registry_user_series_omitted"].samples[0].value == 16


def _own_metrics_left_out() -> ExporterMetrics:
    metrics = ExporterMetrics("1")
    metrics.registry = CollectorRegistry()
    return metrics


class TestColumns:
    def test_sessions_past_one_slice_read_into_whole_columns(self) -> None:
        """Read a slice at a time (the GIL is handed over between slices), the columns hold
        every session once, in order, for live rows and a worker's packed columns alike."""
        rows = [SessionRow(f"u{n}", n % 7, T0 - n) for n in range(2 * SLICE + 5)]
        expected = (
            [r.user_id for r in rows],
            [r.agent_count for r in rows],
            [r.created_timestamp for r in rows],
        )
        packed = SessionColumns(expected[0], array("q", expected[1]), array("d", expected[2]))
        assert session_columns(rows) == expected
        assert session_columns(packed) == expected
        assert sliced_sum(expected[1]) == sum(expected[1])

    def test_a_workers_columns_render_as_its_rows_do(self) -> None:
        """A sidecar worker's packed columns (arrays) give the rows' body, cached or not."""
        rows = {f"u{n}": SessionRow(f"u{n}", n % 9, T0 - 7 * n) for n in range(500)}
        listed = list(rows.values())
        columns = SessionColumns(
            [r.user_id for r in listed],
            array("q", [r.agent_count for r in listed]),
            array("d", [r.created_timestamp for r in listed]),
        )
        metrics = ExporterMetrics("1")
        options = {"format": OPENMETRICS, "gzipped": True, "max_user_series": 100}
        renderer = Renderer(chunk_users=16)
        by_columns = replace(snapshot_of(rows), sessions=columns)
        for _ in range(2):
            ours = renderer.render(by_columns, metrics, **options)
            assert registry_part(ours) == registry_part(
                render(snapshot_of(rows), metrics, **options)
            )


class TestPrivateIds:
    def test_a_new_label_function_relabels_every_user(self) -> None:
        """A new hashing key (a new label function) never leaves an old label cached."""
        rows = {f"u{n}": SessionRow(f"u{n}", n % 4, T0 - n) for n in range(300)}
        renderer = Renderer(chunk_users=16)
        metrics = ExporterMetrics("1")
        options = {"format": OPENMETRICS, "gzipped": True}
        old_key = replace(snapshot_of(rows), user_label=lambda user: "h:old-" + user)
        new_key = replace(snapshot_of(rows), user_label=lambda user: "h:new-" + user)
        renderer.render(old_key, metrics, **options)
        ours = registry_part(renderer.render(new_key, metrics, **options))
        assert ours == registry_part(render(new_key, metrics, **options))
        assert b"h:old-" not in ours

    def test_only_changed_chunks_hash_their_ids_again(self) -> None:
        """Unchanged users are not hashed again at the next scrape."""
        rows = {f"u{n}": SessionRow(f"u{n}", 1, T0) for n in range(300)}
        hashed: list[str] = []

        def label(user: str) -> str:
            hashed.append(user)
            return "h:" + user

        renderer = Renderer(chunk_users=16)
        metrics = ExporterMetrics("1")
        renderer.render(replace(snapshot_of(rows), user_label=label), metrics, format=OPENMETRICS)
        assert len(hashed) == 300
        # The middle user of a chunk of three or more (chunk ends follow the ids' hashes,
        # which change with the process's hash seed): its chunk's other users are hashed again.
        ids = list(rows)
        lo, hi = next((lo, hi) for lo, hi in spans(ids, 16) if hi - lo >= 3)
        del rows[ids[(lo + hi) // 2]]
        hashed.clear()
        renderer.render(replace(snapshot_of(rows), user_label=label), metrics, format=OPENMETRICS)
        assert 0 < len(hashed) < 100  # the removed user's chunk only


class TestReuse:
    def rows(self, n: int) -> dict[str, SessionRow]:
        rng = random.Random(7)
        return {
            uid: SessionRow(uid, rng.randint(0, 9), T0 - rng.random() * 80_000)
            for uid in (str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(n))
        }

    def test_unchanged_users_send_the_same_pieces_again(self) -> None:
        """A second scrape of an unchanged registry reuses every cached piece as it is."""
        rows = self.rows(3000)
        renderer = Renderer(chunk_users=64)
        metrics = ExporterMetrics("1")
        first = renderer.render(snapshot_of(rows), metrics, format=OPENMETRICS, gzipped=True)
        second = renderer.render(snapshot_of(rows), metrics, format=OPENMETRICS, gzipped=True)
        reused = reused_pieces(first, second)
        chunks = len(deflated_chunks(renderer))
        assert chunks > 10
        assert len(reused) == 2 * chunks

    def test_one_changed_user_re_renders_one_chunk(self) -> None:
        """A count change re-encodes the agent lines of that user's chunk, nothing else."""
        rows = self.rows(3000)
        renderer = Renderer(chunk_users=64)
        metrics = ExporterMetrics("1")
        first = renderer.render(snapshot_of(rows), metrics, format=OPENMETRICS, gzipped=True)
        user = list(rows)[1234]
        rows[user] = rows[user]._replace(agent_count=99)
        second = renderer.render(snapshot_of(rows), metrics, format=OPENMETRICS, gzipped=True)
        reused = reused_pieces(first, second)
        assert len(reused) == 2 * len(deflated_chunks(renderer)) - 1

    def test_cache_holds_at_most_the_stable_families_of_one_body(self) -> None:
        """Cached bytes never exceed the body: old chunks are dropped at each render."""
        rows = self.rows(2000)
        renderer = Renderer(chunk_users=64)
        metrics = ExporterMetrics("1")
        for step in range(5):
            for user in list(rows)[step::7]:
                rows[user] = rows[user]._replace(agent_count=step)
            rendered = renderer.render(snapshot_of(rows), metrics, format=OPENMETRICS, gzipped=True)
            assert 0 < renderer.cached_bytes < rendered.size

    def test_chunk_length_must_be_a_power_of_two(self) -> None:
        """Boundaries are a hash mask: other lengths are refused."""
        with pytest.raises(ValueError, match="power of two"):
            Renderer(chunk_users=100)


class TestSpans:
    def test_removing_a_user_changes_only_its_chunk(self) -> None:
        """Content-defined boundaries: the chunks after a removal do not shift."""
        users = [f"user-{n}" for n in range(5000)]
        cut = list(spans(users, 32))
        # Ends follow the ids' str hashes, which change with the hash seed. A chunk of the
        # longest length (4 x 32) may have been cut there, not by a hash: a removal before
        # such a cut moves it. So: the first user of a chunk ended by a hash, after one too
        # (PYTHONHASHSEED=20 once removed users[2500] from a run of cut chunks: 3 changed).
        lo, hi = next(
            (lo, hi)
            for (before_lo, lo), (_, hi) in pairwise(cut)
            if lo >= 2500 and lo - before_lo < 128 and 2 <= hi - lo < 128
        )
        chunk = tuple(users[lo:hi])
        before = {tuple(users[a:b]) for a, b in cut}
        del users[lo]
        after = {tuple(users[a:b]) for a, b in spans(users, 32)}
        assert after - before == {chunk[1:]}
        assert before - after == {chunk}
        assert sum(len(c) for c in after) == len(users)


class TestSelection:
    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.integers(0, 120) | st.integers(250, 600),
                st.sampled_from([0.0, 3600.0]) | st.floats(0, 300_000),
            ),
            max_size=60,
        ),
        st.integers(1, 70),
        st.booleans(),
        st.sampled_from([1, 50]),
    )
    def test_selection_is_the_top_by_pressure_with_ties_by_position(
        self, users, keep, in_creation_order, agents_per_user
    ) -> None:
        """The fast selection equals sorting every user by pressure, earliest first on ties."""
        if in_creation_order:  # the registry's usual order, which takes the fast path
            users = sorted(users, key=lambda u: -u[1])
        counts = [c for c, _ in users]
        created = [T0 - age for _, age in users]
        limits = Thresholds(agents_per_user=agents_per_user)
        expected = by_sorting_everyone(counts, created, keep, limits)
        assert select_indexes(counts, created, T0, limits, keep) == expected

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.integers(0, 120),
                st.sampled_from([0.0, 1800.0, 43_200.0]) | st.floats(-100, 300_000),
            ),
            max_size=60,
        ),
        st.integers(1, 70),
        st.booleans(),
        st.sampled_from([0.25, 0.5, 1.0]),
    )
    def test_min_pressure_keeps_only_users_that_close_to_a_limit(
        self, users, keep, in_creation_order, min_pressure
    ) -> None:
        """With user_series_min_pressure, only users at least that fraction of a threshold
        are candidates; the cap then keeps the top of them, violators first."""
        if in_creation_order:
            users = sorted(users, key=lambda u: -u[1])
        counts = [c for c, _ in users]
        created = [T0 - age for _, age in users]
        limits = Thresholds(agents_per_user=10, session_age_seconds=86_400)
        expected = by_sorting_everyone(counts, created, keep, limits, min_pressure)
        assert select_indexes(counts, created, T0, limits, keep, min_pressure) == expected

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.integers(0, 60) | st.integers(0, 2**63 - 1),
                st.floats(-1e5, 1e5) | st.floats(allow_nan=False),  # any float64 but NaN
            ),
            max_size=40,
        ),
        st.integers(1, 45),
        st.booleans(),
        st.floats(1e-300, 1e300),
        st.sampled_from([0.0, 0.5]),
    )
    def test_any_float_a_hostile_worker_sends_is_ranked_exactly(
        self, users, keep, in_creation_order, age_limit, min_pressure
    ) -> None:
        """A worker's columns carry any float64 (an infinite or 1e300-old creation time, a
        count of 2**63 - 1) and an age limit of any finite size: the selection is still the
        reference's. Before, a tiny limit or a created of -1e300 looped forever finding the
        least count of the bound's pressure (adding 1 to ~1e300 changes no float), -inf
        raised OverflowError and -1e20 an IndexError (the age cut's millisecond lost to
        rounding left fewer candidates than kept users)."""
        if in_creation_order:
            users = sorted(users, key=lambda u: u[1])
        counts = [c for c, _ in users]
        created = [t for _, t in users]
        limits = Thresholds(agents_per_user=50, session_age_seconds=age_limit)
        expected = by_sorting_everyone(counts, created, keep, limits, min_pressure)
        assert select_indexes(counts, created, T0, limits, keep, min_pressure) == expected

    @pytest.mark.parametrize("limit", [1e-300, 5e-324, 1e300])
    def test_nan_creation_times_and_extreme_limits_neither_hang_nor_fail(self, limit) -> None:
        """A NaN creation time ranks nowhere in particular (it has no pressure), and an age
        limit so small that its inverse is infinite makes pressures NaN: the choice is still
        made, of at most `keep` distinct users."""
        created = [float("nan") if i % 3 else T0 - i for i in range(60)]
        counts = [60 if i in (4, 7) else 1 for i in range(60)]
        limits = Thresholds(agents_per_user=50, session_age_seconds=limit)
        for column in (created, created[::-1]):
            chosen = select_indexes(counts, column, T0, limits, 10)
            assert chosen == sorted(set(chosen))
            assert len(chosen) <= 10
            assert all(0 <= i < 60 for i in chosen)

    @pytest.mark.parametrize(
        ("created", "limit"),
        [(-1e300, 86_400.0), (-1e20, 86_400.0), (float("-inf"), 86_400.0), (1.0, 1e-300)],
    )
    def test_a_hostile_workers_answer_renders_under_the_cap(self, created, limit) -> None:
        """Decoded from a worker's answer as the sidecar gets it: a column of absurd
        creation times, or a 1e-300 s age limit, rendered with more users than the cap. It
        hung the render thread (holding its slot and the cache) or failed every scrape."""
        rows = [SessionRow(f"u{i}", 1, created if i < 12 else 1.0 + i) for i in range(20)]
        limits = Thresholds(session_age_seconds=limit).model_dump()
        _, snapshot = decode_snapshot(with_header(encode(rows), thresholds=limits))
        body = render(snapshot, ExporterMetrics("1"), format=TEXT, max_user_series=10).body
        assert body.decode().count("agent_registry_user_agents{") == 10

    @pytest.mark.parametrize("in_creation_order", [True, False])
    def test_a_few_violators_among_many_users_are_found(self, in_creation_order) -> None:
        """Many users, a handful over the agent limit: every one of them is kept."""
        rng = random.Random(3)
        ages = [rng.random() * 80_000 for _ in range(20_000)]
        if in_creation_order:
            ages.sort(reverse=True)
        counts = [rng.randint(0, 10) for _ in ages]
        for i in rng.sample(range(len(ages)), 40):
            counts[i] = rng.choice([51, 60, 75, 300])
        created = [T0 - age for age in ages]
        chosen = select_indexes(counts, created, T0, Thresholds(), 1000)
        assert chosen == by_sorting_everyone(counts, created, 1000)
        assert {i for i, n in enumerate(counts) if n > 50} <= set(chosen)


def by_sorting_everyone(
    counts: list[int],
    created: list[float],
    keep: int,
    limits: Thresholds | None = None,
    min_pressure: float = 0.0,
) -> list[int]:
    """The reference: every user's pressure, sorted, earliest position first on ties; with
    `min_pressure`, only the users at least that close to a limit."""
    limits = limits or Thresholds()

    def pressure(i: int) -> float:
        return max(
            counts[i] * (1.0 / limits.agents_per_user),
            (T0 - created[i]) * (1.0 / limits.session_age_seconds),
        )

    eligible = [i for i in range(len(counts)) if not min_pressure or pressure(i) >= min_pressure]
    return sorted(sorted(eligible, key=pressure, reverse=True)[:keep])


class TestServedWithMinPressure:
    async def test_the_setting_reaches_the_served_scrape(self, registry) -> None:
        """Settings(user_series_min_pressure=0.5): /metrics leaves the calm user out."""
        for n in range(3):
            await registry.register_user_agent("calm", f"a{n}", object())
        for n in range(30):
            await registry.register_user_agent("busy", f"a{n}", object())
        server = await loopback_exporter(registry, user_series_min_pressure=0.5)
        try:
            url = f"http://127.0.0.1:{server.port}/metrics"
            async with aiohttp.ClientSession() as client, client.get(url) as resp:
                body = await resp.text()
        finally:
            await server.stop()
        assert 'agent_registry_user_agents{user_id="busy"} 30' in body
        assert 'user_id="calm"' not in body
        assert "agent_registry_user_series_omitted 1" in body
