"""The metric catalogue: the one list of families, and exactly what the exporter serves."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

from agent_registry_exporter import RegistrySnapshot, SessionRow, SidecarSource, Thresholds
from agent_registry_exporter.artifacts import render_metrics_markdown
from agent_registry_exporter.cli import main
from agent_registry_exporter.exporting import (
    CATALOGUE,
    OPENMETRICS,
    ExporterMetrics,
    Family,
    Kind,
    catalogue,
    render,
)
from agent_registry_exporter.http.security import CertificateExpiry
from agent_registry_exporter.http.security.certificates import Validity

from .conftest import T0

ROOT = Path(__file__).parent.parent
_METRIC = re.compile(r"\b(?:agent_registry|process|python_gc)_[a-z0-9_]*[a-z0-9]\b")


class _ServingACertificate:
    """A web config watcher's stand-in, serving a certificate valid until 2031."""

    def current(self) -> object:
        validity = Validity(datetime(2025, 1, 1, tzinfo=UTC), datetime(2031, 1, 1, tzinfo=UTC))
        return SimpleNamespace(certificate=validity)


def served_families(tmp_path: Path) -> dict:
    """Every family one sidecar scrape can hold, each optional one present, by name."""
    metrics = ExporterMetrics("1")
    metrics.cleanups.labels(trigger="webhook", result="cleaned").inc()
    metrics.webhook_requests.labels(code="200").inc()
    metrics.auth_failures.labels(reason="bad_password").inc()
    metrics.registry.register(SidecarSource(tmp_path))
    metrics.registry.register(CertificateExpiry(_ServingACertificate()))  # type: ignore[arg-type]
    worker = RegistrySnapshot(
        taken_at=T0,
        thresholds=Thresholds(),
        sessions=[SessionRow("u1", 3, T0 - 5)],
        cleaned_agents_alive=1,
        cleaned_agents_untracked=2,
        resident_memory_bytes=3,
        worker="w0",
    )
    snapshot = dataclasses.replace(worker, worker=None, workers=(worker,))
    body = render(snapshot, metrics, format=OPENMETRICS).body.decode()
    return {f.name: f for f in parse_om(body) if not f.name.startswith(catalogue.FOREIGN_PREFIXES)}


class TestServedIsCatalogued:
    def test_every_family_served_is_catalogued_and_every_catalogued_one_is_served(
        self, tmp_path
    ) -> None:
        """A family added to the exporter without a catalogue entry fails here, and back."""
        assert sorted(served_families(tmp_path)) == sorted(f.name for f in CATALOGUE)

    def test_help_type_and_unit_of_every_served_family_are_the_catalogues(self, tmp_path) -> None:
        """Whoever writes a family (fast writer, prometheus_client, sidecar), it reads these."""
        for name, served in served_families(tmp_path).items():
            entry = catalogue.family(name)
            assert (served.documentation, served.type, served.unit) == (
                entry.help,
                entry.kind.value,
                entry.unit,
            ), name

    def test_labels_of_every_served_series_are_the_catalogues(self, tmp_path) -> None:
        """Registry families carry `worker` in sidecar mode beside their own labels."""
        for name, served in served_families(tmp_path).items():
            entry = catalogue.family(name)
            expected = set(entry.labels)
            if entry.writer is catalogue.Writer.REGISTRY:
                expected.add("worker")
            for sample in served.samples:
                le = {"le"} if sample.name.endswith("_bucket") else set()
                assert set(sample.labels) == expected | le, sample


class TestFamily:
    def test_a_counter_is_named_without_total_and_selected_with_it(self) -> None:
        """OpenMetrics names the family, PromQL the `_total` series."""
        assert catalogue.CLEANUPS.name == "agent_registry_cleanups"
        assert catalogue.CLEANUPS.sample == "agent_registry_cleanups_total"
        assert catalogue.family("agent_registry_cleanups_total") is catalogue.CLEANUPS
        assert catalogue.USERS.sample == "agent_registry_users"

    def test_a_gauge_is_not_found_under_a_total_name(self) -> None:
        """`_total` is a counter's suffix only."""
        with pytest.raises(KeyError, match="agent_registry_users_total"):
            catalogue.family("agent_registry_users_total")

    @pytest.mark.parametrize(
        ("name", "unit", "help_text", "message"),
        [
            ("agent_registry_x_total", "", "X.", "without _total"),
            ("other_x", "", "X.", "agent_registry_"),
            ("agent_registry_x", "seconds", "X.", "must end with its unit"),
            ("agent_registry_x", "", 'say "x".', "one plain sentence"),
            ("agent_registry_x", "", "no full stop", "one plain sentence"),
        ],
    )
    def test_a_malformed_entry_is_refused(self, name, unit, help_text, message) -> None:
        """Names, units and help texts are checked where the catalogue is written."""
        with pytest.raises(ValueError, match=message):
            Family(name, Kind.GAUGE, help_text, catalogue.Writer.EXPORTER, unit=unit)


def _queried(text: str) -> set[str]:
    return {m for m in _METRIC.findall(text) if not m.startswith(catalogue.FOREIGN_PREFIXES)}


class TestArtifactsQueryTheCatalogue:
    def test_every_series_the_rules_select_is_catalogued(self) -> None:
        """A renamed family breaks the rule file here, not silently in Prometheus."""
        rules = yaml.safe_load((ROOT / "alerts/agent-registry.rules.yml").read_text())
        exprs = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
        samples = {s for f in CATALOGUE for s in f.series}
        assert _queried(exprs) <= samples
        assert _queried(exprs)  # the pattern does find them

    def test_every_series_the_dashboard_selects_is_catalogued(self) -> None:
        """The same for every panel query and variable of the committed dashboard."""
        board = json.loads((ROOT / "grafana/agent-registry.json").read_text())
        queried = _queried(json.dumps(board))
        assert queried <= {s for f in CATALOGUE for s in (f.name, *f.series)}
        assert catalogue.USER_AGENTS.sample in queried


class TestMetricsPage:
    def test_committed_metrics_page_equals_the_rendering(self) -> None:
        """docs/metrics.md is generated from the catalogue; regenerate with `make rules`."""
        committed = (ROOT / "docs/metrics.md").read_text(encoding="utf-8")
        assert committed == render_metrics_markdown(), "docs/metrics.md drifted: make rules"

    def test_the_cli_prints_the_page(self, capsys) -> None:
        """`agent-registry-exporter metrics-doc` is what `make rules` writes."""
        assert main(["metrics-doc"]) == 0
        assert capsys.readouterr().out == render_metrics_markdown()

    def test_every_family_has_its_row(self) -> None:
        """A family added to the catalogue shows up on the page without more work."""
        page = render_metrics_markdown()
        for family in CATALOGUE:
            assert f"| `{family.sample}` | {family.kind} |" in page
