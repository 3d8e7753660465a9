"""The population histograms: exact counts at every bound, the configured limit included."""

from __future__ import annotations

import math
import shutil
import subprocess
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from agent_registry_exporter import RegistrySnapshot, SessionRow, Thresholds
from agent_registry_exporter.exporting import OPENMETRICS, TEXT, ExporterMetrics, render
from agent_registry_exporter.exporting.histograms import (
    AGE_BUCKETS,
    AGENT_BUCKETS,
    age_histogram,
    agents_histogram,
    bounds_with,
)

from .conftest import T0


class TestBounds:
    def test_the_limit_is_added_when_it_is_not_a_bucket(self) -> None:
        """Limit 50 is a bucket already; 30 and 90,000 s become one."""
        assert bounds_with(AGENT_BUCKETS, 50) == AGENT_BUCKETS
        assert 30.0 in bounds_with(AGENT_BUCKETS, 30)
        assert bounds_with(AGE_BUCKETS, 90_000) == (*AGE_BUCKETS[:4], 90_000.0, *AGE_BUCKETS[4:])


class TestExact:
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(0, 400), max_size=40_000), st.integers(1, 300))
    def test_agent_buckets_count_every_session_at_or_below_each_bound(self, counts, limit):
        """Cumulative counts, the sum and the count equal counting by hand (slices too)."""
        h = agents_histogram(counts, limit)
        assert h.cumulative == (*(sum(c <= b for c in counts) for b in h.bounds), len(counts))
        assert h.total == sum(counts)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.floats(-10, 900_000), max_size=2000), st.floats(60, 700_000))
    def test_age_buckets_count_ages_as_the_gauge_prints_them(self, ages, limit) -> None:
        """An age exactly at a bound counts in it (le); ages are `now - created`."""
        created = [T0 - a for a in [*ages, 3600.0, 86_400.0]]
        h = age_histogram(created, T0, limit)
        printed = [T0 - c for c in created]
        assert h.cumulative == (*(sum(a <= b for a in printed) for b in h.bounds), len(created))
        # As close as summing the printed ages one by one can be (error bound of that sum).
        bound = len(printed) * 2.0**-53 * math.fsum(map(abs, printed))
        assert abs(h.total - math.fsum(printed)) <= bound

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.floats(0, 1.0), max_size=6000), st.floats(0, 1.0))
    def test_the_age_sum_is_the_sum_of_the_printed_ages_at_any_instant(self, ages, fraction):
        """Young sessions, a scrape at a fractional second, past one slice: the sum is as
        exact as adding the printed ages (not `len * now - sum(created)`, which cancels)."""
        now = T0 + fraction
        created = [now - a for a in ages]
        printed = [now - c for c in created]
        total = age_histogram(created, now, 90_000).total
        assert abs(total - math.fsum(printed)) <= len(printed) * 2.0**-53 * math.fsum(printed)

    def test_a_nan_creation_time_from_a_hostile_worker_is_in_no_bucket(self) -> None:
        """A worker's snapshot may carry NaN times: that age (printed NaN) is at most no bound,
        and the others are still counted exactly (NaN sorted among them broke the order)."""
        created = [T0 - 5000.0, math.nan, T0 - 100.0, T0 - 50_000.0, T0 - 4000.0] * 3
        h = age_histogram(created, T0, 90_000)
        printed = [T0 - c for c in created]
        assert h.cumulative == (*(sum(a <= b for a in printed) for b in h.bounds), len(created))
        assert math.isnan(h.total)

    def test_sessions_created_at_the_scrape_sum_to_no_age(self) -> None:
        """20,000 sessions all created at the scrape's instant: every age printed 0, and so
        is their sum (`len * now - sum(created)` made it 2.2 s; 100 sessions, a negative sum)."""
        now = T0 + 0.1
        for sessions in (100, 20_000):
            assert age_histogram([now] * sessions, now, 90_000).total == 0.0


class TestSlices:
    def test_many_sessions_are_counted_across_slices(self) -> None:
        """Past one slice (16,384 sessions) every session is counted once."""
        counts = [n % 300 for n in range(50_000)]
        h = agents_histogram(counts, 50)
        assert h.cumulative == (*(sum(c <= b for c in counts) for b in h.bounds), 50_000)


def rendered_families(snapshot, openmetrics: bool) -> dict:
    metrics = ExporterMetrics("1")
    metrics.registry = CollectorRegistry()
    body = render(snapshot, metrics, format=OPENMETRICS if openmetrics else TEXT).body.decode()
    parse = parse_om if openmetrics else parse_text
    return {f.name: f for f in parse(body)}


class TestRendered:
    @pytest.mark.parametrize("openmetrics", [False, True])
    def test_both_histograms_describe_every_session_past_the_cap(self, openmetrics) -> None:
        """Buckets, sum and count over all sessions, though the cap exports only 10 users;
        the configured limits are buckets too."""
        limits = Thresholds(agents_per_user=30, session_age_seconds=90_000)
        rows = [SessionRow(f"u{n}", n % 40, T0 - 1000.0 * n) for n in range(200)]
        snapshot = RegistrySnapshot(taken_at=T0, thresholds=limits, sessions=rows)
        metrics = ExporterMetrics("1")
        metrics.registry = CollectorRegistry()
        body = render(
            snapshot, metrics, format=OPENMETRICS if openmetrics else TEXT, max_user_series=10
        ).body
        parse = parse_om if openmetrics else parse_text
        families = {f.name: f for f in parse(body.decode())}
        agents = families["agent_registry_session_agents"]
        assert agents.type == "histogram"
        buckets = {s.labels["le"]: s.value for s in agents.samples if s.name.endswith("_bucket")}
        assert buckets["30.0"] == sum(n % 40 <= 30 for n in range(200))
        assert buckets["+Inf"] == 200
        by_name = {s.name: s.value for s in agents.samples if not s.name.endswith("_bucket")}
        assert by_name["agent_registry_session_agents_sum"] == sum(n % 40 for n in range(200))
        ages = families["agent_registry_session_age_seconds"]
        age_buckets = {s.labels["le"]: s.value for s in ages.samples if "le" in s.labels}
        assert age_buckets["90000.0"] == 91  # ages 0, 1000, ..., 90000 s
        assert age_buckets["86400.0"] == 87

    def test_each_worker_has_its_own_histograms(self) -> None:
        """Sidecar mode: one set of buckets per worker, labelled, never merged."""

        def part(worker: str, count: int) -> RegistrySnapshot:
            rows = [SessionRow(f"{worker}-{n}", count, T0) for n in range(5)]
            return RegistrySnapshot(T0, Thresholds(), rows, worker=worker)

        workers = (part("w0", 1), part("w1", 7))
        snapshot = replace(workers[0], worker=None, workers=workers, sessions=[])
        families = rendered_families(snapshot, openmetrics=True)
        at_most_five = {
            s.labels["worker"]: s.value
            for s in families["agent_registry_session_agents"].samples
            if s.labels.get("le") == "5.0"
        }
        assert at_most_five == {"w0": 5, "w1": 0}

    @pytest.mark.processes
    def test_promtool_accepts_the_histograms(self) -> None:
        """The text format with the histograms passes `promtool check metrics`."""
        rows = [SessionRow(f"u{n}", n, T0 - n) for n in range(30)]
        metrics = ExporterMetrics("1")
        metrics.registry = CollectorRegistry()
        text = render(RegistrySnapshot(T0, Thresholds(), rows), metrics, format=TEXT).body
        promtool = shutil.which("promtool")
        assert promtool, "promtool is installed by `make test` (Debian package prometheus)"
        done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
        assert done.returncode == 0, done.stdout + done.stderr
