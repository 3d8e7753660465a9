"""Rendering: both formats parse back to the registry's values, for any user id."""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from agent_registry_exporter import RegistrySnapshot, SessionRow, Thresholds
from agent_registry_exporter.exporting import (
    FORMATS,
    OPENMETRICS,
    TEXT,
    ExporterMetrics,
    Format,
    choose_format,
    render,
    wants_gzip,
)
from agent_registry_exporter.exporting import catalogue as c
from agent_registry_exporter.exporting.writer import COUNT, SECONDS, lines, user_line

from .conftest import DATA, T0

UGLY_IDS = ["plain", 'quote"inside', "back\\slash", "new\nline", "日本語-ユーザー", "trailing\\"]
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def snapshot_of(rows: list[SessionRow], thresholds: Thresholds | None = None) -> RegistrySnapshot:
    return RegistrySnapshot(taken_at=T0, thresholds=thresholds or Thresholds(), sessions=rows)


def samples(text: str, fmt: Format) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    parse = parse_om if fmt is OPENMETRICS else parse_text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parse(text)
        for s in family.samples
    }


def user_value(parsed: dict, name: str, user: str) -> float:
    return parsed[(name, (("user_id", user),))]


@pytest.fixture
def metrics() -> ExporterMetrics:
    return ExporterMetrics("9.9.9")


class TestRoundTrip:
    @pytest.mark.parametrize("fmt", FORMATS, ids=["openmetrics", "text"])
    def test_ugly_user_ids_parse_back_to_their_values(self, metrics, fmt) -> None:
        """Quotes, backslashes, newlines and non-ASCII ids survive both formats."""
        rows = [SessionRow(uid, n + 1, T0 - 100 * n) for n, uid in enumerate(UGLY_IDS)]
        body = render(snapshot_of(rows), metrics, format=fmt).body.decode()
        parsed = samples(body, fmt)
        for n, uid in enumerate(UGLY_IDS):
            assert user_value(parsed, "agent_registry_user_agents", uid) == n + 1
            assert user_value(parsed, "agent_registry_user_session_age_seconds", uid) == 100 * n
            created = "agent_registry_user_session_created_timestamp_seconds"
            assert user_value(parsed, created, uid) == T0 - 100 * n
        assert parsed[("agent_registry_agents", ())] == sum(range(1, len(UGLY_IDS) + 1))
        assert parsed[("agent_registry_users", ())] == len(UGLY_IDS)

    @settings(max_examples=60, deadline=None)
    @given(
        ids=st.lists(
            st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12),
            min_size=1,
            max_size=8,
            unique=True,
        ),
        fmt=st.sampled_from(FORMATS),
    )
    def test_any_user_id_gives_a_valid_scrape(self, ids: list[str], fmt: Format) -> None:
        """Whatever the ids, the output parses and totals equal the per-user sum."""
        rows = [SessionRow(uid, len(uid), T0) for uid in ids]
        body = render(snapshot_of(rows), ExporterMetrics("1"), format=fmt).body
        parsed = samples(body.decode(), fmt)
        per_user = [user_value(parsed, "agent_registry_user_agents", uid) for uid in ids]
        assert per_user == [len(uid) for uid in ids]
        assert parsed[("agent_registry_agents", ())] == sum(per_user)

    def test_thresholds_are_exported_from_the_snapshot(self, metrics) -> None:
        """The threshold gauges carry the registry's Thresholds, not defaults."""
        limits = Thresholds(agents_per_user=7, session_age_seconds=60, total_agents=70)
        body = render(snapshot_of([], limits), metrics, format=TEXT).body.decode()
        parsed = samples(body, TEXT)
        assert parsed[("agent_registry_threshold", (("threshold", "agents_per_user"),))] == 7
        assert parsed[("agent_registry_threshold", (("threshold", "session_age_seconds"),))] == 60
        assert parsed[("agent_registry_threshold", (("threshold", "total_agents"),))] == 70

    def test_self_metrics_are_appended_once_and_openmetrics_ends_with_eof(self, metrics) -> None:
        """One # EOF, at the very end; the build info is there."""
        body = render(snapshot_of([]), metrics, format=OPENMETRICS).body.decode()
        assert body.endswith("# EOF\n")
        assert body.count("# EOF") == 1
        assert 'agent_registry_exporter_build_info{version="9.9.9"} 1.0' in body

    def test_gzip_body_decompresses_to_the_plain_body(self, metrics) -> None:
        """The gzipped scrape is the same text."""
        snap = snapshot_of([SessionRow("u1", 3, T0)])
        plain = render(snap, metrics, format=TEXT).body
        zipped = render(snap, metrics, format=TEXT, gzipped=True)
        assert zipped.gzipped
        # The exporter's own figures move between renders; compare the registry's part.
        own = b"# HELP process_"
        assert gzip.decompress(zipped.body).split(own)[0] == plain.split(own)[0]


class TestPercentSigns:
    """A chunk's lines are one %-template filled in one call: a `%` in a label is text."""

    PERCENT_IDS = ("100%", "%s", "%d%%", "%(name)s", "%.3f", "a%")

    @pytest.mark.parametrize("fmt", FORMATS, ids=["openmetrics", "text"])
    def test_percent_signs_in_ids_and_the_worker_parse_back(self, metrics, fmt) -> None:
        rows = [SessionRow(uid, n + 1, T0 - 10 * n) for n, uid in enumerate(self.PERCENT_IDS)]
        worker = dataclasses.replace(snapshot_of(rows), worker="w%s%")
        sidecar = dataclasses.replace(snapshot_of([]), workers=(worker,))
        parsed = samples(render(sidecar, metrics, format=fmt).body.decode(), fmt)
        for n, uid in enumerate(self.PERCENT_IDS):
            labels = (("user_id", uid), ("worker", "w%s%"))
            assert parsed[("agent_registry_user_agents", labels)] == n + 1
            assert parsed[("agent_registry_user_session_age_seconds", labels)] == 10 * n

    def test_lines_fill_each_label_and_value_in_order(self) -> None:
        """The same text as one `line % (label, value)` per user, whatever the labels hold."""
        labels = ["plain", "%s", "%%", "100%d", 'q\\"', "\ud800", "%"]
        for worker in ("", 'worker="a%sb%",'):
            for value_format in (COUNT, SECONDS):
                line = user_line(c.USER_AGENTS, worker, value_format)
                values = [n * 1.25 if value_format is SECONDS else n for n in range(len(labels))]
                expected = "".join(line % pair for pair in zip(labels, values, strict=True))
                assert lines(line, labels, values) == expected
                assert lines(line, labels, iter(values)) == expected
        assert lines(user_line(c.USER_AGENTS, "", COUNT), [], []) == ""

    def test_lines_refuse_labels_and_values_of_different_lengths(self) -> None:
        line = user_line(c.USER_AGENTS, "", COUNT)
        with pytest.raises(ValueError, match="2 labels but 1 values"):
            lines(line, ["a", "b"], [1])


class TestUnencodableIds:
    @pytest.mark.parametrize("fmt", FORMATS, ids=["openmetrics", "text"])
    def test_lone_surrogate_id_already_in_a_snapshot_does_not_break_the_scrape(
        self, metrics, fmt
    ) -> None:
        """Attack: `mallory\\ud800` reached a snapshot; every other user is still exported."""
        mallory = json.loads('"mallory\\ud800"')
        rows = [SessionRow("alice", 3, T0), SessionRow(mallory, 5, T0), SessionRow("bob", 7, T0)]
        body = render(snapshot_of(rows), metrics, format=fmt).body.decode()
        parsed = samples(body, fmt)
        assert user_value(parsed, "agent_registry_user_agents", "alice") == 3
        assert user_value(parsed, "agent_registry_user_agents", "bob") == 7
        # The unencodable code point is spelled out, so the series stays distinct.
        assert user_value(parsed, "agent_registry_user_agents", "mallory\\ud800") == 5
        assert parsed[("agent_registry_agents", ())] == 15


class TestSeriesCap:
    def test_violating_users_are_kept_and_the_rest_counted(self, metrics) -> None:
        """With a cap of 3, the two violators and the nearest healthy user stay; totals exact."""
        rows = [SessionRow(f"ok{n}", n, T0) for n in range(10)]
        rows.append(SessionRow("many", 60, T0))
        rows.append(SessionRow("old", 1, T0 - 25 * 3600))
        body = render(snapshot_of(rows), metrics, format=TEXT, max_user_series=3).body
        parsed = samples(body.decode(), TEXT)
        exported = {
            dict(labels)["user_id"]
            for name, labels in parsed
            if name == "agent_registry_user_agents"
        }
        assert exported == {"many", "old", "ok9"}
        assert parsed[("agent_registry_user_series_omitted", ())] == 9
        assert parsed[("agent_registry_agents", ())] == sum(range(10)) + 61
        assert parsed[("agent_registry_users", ())] == 12

    def test_no_cap_reached_means_nothing_omitted(self, metrics) -> None:
        """Below the cap every user is exported."""
        rows = [SessionRow(f"u{n}", 1, T0) for n in range(5)]
        body = render(snapshot_of(rows), metrics, format=TEXT, max_user_series=5).body
        assert b"agent_registry_user_series_omitted 0\n" in body


class TestSessionAge:
    def test_age_family_can_be_turned_off(self, metrics) -> None:
        """export_session_age=False drops the age family; the created timestamp stays."""
        rows = [SessionRow("u1", 2, T0 - 50)]
        body = render(
            snapshot_of(rows), metrics, format=TEXT, export_session_age=False
        ).body.decode()
        parsed = samples(body, TEXT)
        assert "agent_registry_user_session_age_seconds" not in body
        created = "agent_registry_user_session_created_timestamp_seconds"
        assert user_value(parsed, created, "u1") == T0 - 50
        assert user_value(parsed, "agent_registry_user_agents", "u1") == 2


class TestNegotiation:
    def test_prometheus_accept_header_gets_openmetrics(self) -> None:
        """Prometheus 2.42's Accept header selects OpenMetrics."""
        assert choose_format(PROMETHEUS_ACCEPT) is OPENMETRICS

    @pytest.mark.parametrize("accept", ["", "*/*", "text/plain;version=0.0.4", "text/html"])
    def test_anything_else_gets_text(self, accept: str) -> None:
        """Browsers, curl and old scrapers get text 0.0.4."""
        assert choose_format(accept) is TEXT

    @pytest.mark.parametrize(
        ("header", "expected"),
        [("gzip", True), ("deflate, gzip;q=0.5", True), ("gzip;q=0", False), ("br", False)],
    )
    def test_gzip_only_when_accepted(self, header: str, expected: bool) -> None:
        """gzip is used when offered, not when refused with q=0."""
        assert wants_gzip(header) is expected

    def test_content_types_name_the_format_versions(self) -> None:
        """The content types are the ones Prometheus expects."""
        assert TEXT.content_type == "text/plain; version=0.0.4; charset=utf-8"
        assert OPENMETRICS.content_type.startswith("application/openmetrics-text; version=1.0.0")


# Timings, creation stamps, and the process and garbage-collector figures of this very test.
_VOLATILE = re.compile(
    r"^(agent_registry_exporter_scrape_duration_seconds|\S+_created(\{[^}]*\})?"
    r"|(process|python_gc)_\w+(\{[^}]*\})?) .*$",
    re.M,
)


class TestGolden:
    def test_text_output_matches_the_golden_file(self, metrics) -> None:
        """The whole text scrape is pinned (timings and creation stamps masked)."""
        rows = [SessionRow(uid, n * 20, T0 - n * 36_000) for n, uid in enumerate(UGLY_IDS)]
        metrics.cleanups.labels(trigger="webhook", result="cleaned").inc(2)
        snapshot = dataclasses.replace(
            snapshot_of(rows),
            cleaned_agents_alive=2,
            cleaned_agents_untracked=1,
            resident_memory_bytes=123_456_789,
        )
        body = render(snapshot, metrics, format=TEXT).body.decode()
        masked = _VOLATILE.sub(lambda m: f"{m.group(0).split(' ')[0]} <masked>", body)
        golden = (DATA / "metrics-golden.prom").read_text(encoding="utf-8")
        assert masked == golden


class TestPromtool:
    @pytest.fixture
    def promtool(self) -> str:
        path = shutil.which("promtool")
        assert path, "promtool is installed by `make test` (Debian package prometheus)"
        return path

    def body(self, metrics: ExporterMetrics, fmt: Format) -> bytes:
        rows = [SessionRow(uid, 3, T0 - 10) for uid in UGLY_IDS]
        metrics.cleanups.labels(trigger="webhook", result="cleaned").inc()
        metrics.webhook_requests.labels(code="200").inc()
        return render(snapshot_of(rows), metrics, format=fmt).body

    @pytest.mark.processes
    def test_text_output_passes_promtool_check_metrics(self, promtool, metrics) -> None:
        """promtool's linter finds nothing in the text format."""
        done = subprocess.run(
            [promtool, "check", "metrics"], input=self.body(metrics, TEXT), capture_output=True
        )
        assert done.returncode == 0, done.stdout + done.stderr

    @pytest.mark.processes
    def test_openmetrics_output_has_no_lint_but_the_known_counter_mismatch(
        self, promtool, metrics
    ) -> None:
        """promtool 2.42 lints with the classic parser: OpenMetrics counters read as help-less.

        Every other finding would be a real problem, so only that one is allowed.
        """
        done = subprocess.run(
            [promtool, "check", "metrics"],
            input=self.body(metrics, OPENMETRICS),
            capture_output=True,
        )
        findings = [line for line in done.stdout.decode().splitlines() if line.strip()]
        counters = (
            "agent_registry_cleanups",
            "agent_registry_cleaned_agents",
            "agent_registry_webhook_requests",
        )
        unexpected = [
            f
            for f in findings
            if not (f.endswith("no help text") and f.split()[0].startswith(counters))
        ]
        assert unexpected == []
        assert b"error" not in done.stderr.lower()
