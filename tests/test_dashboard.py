"""The Grafana dashboard: committed without drift, and linted like a reviewer would."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_registry_exporter.artifacts.dashboard import UID, render_dashboard, render_dashboard_json
from agent_registry_exporter.artifacts.dashboard.sdk import decode, encode, model
from agent_registry_exporter.cli import main

ROOT = Path(__file__).parent.parent
DASHBOARD_FILE = ROOT / "grafana" / "agent-registry.json"
PROVISIONING = ROOT / "grafana" / "provisioning"
SELECTOR = re.compile(r"\b(agent_registry_\w+|process_\w+|up|ALERTS)\b(\{[^}]*\})?")
PER_USER = ("agent_registry_user_agents", "agent_registry_user_session_created_timestamp_seconds")
# The families a sidecar labels per worker (one registry's truth each).
PER_WORKER = (
    *PER_USER,
    "agent_registry_user_session_age_seconds",
    "agent_registry_users",
    "agent_registry_agents",
    "agent_registry_threshold",
    "agent_registry_user_series_omitted",
    "agent_registry_source_up",
    "agent_registry_source_scrape_duration_seconds",
    "agent_registry_cleaned_agents_alive",
    "agent_registry_cleaned_agents_untracked_total",
    "agent_registry_resident_memory_bytes",
)
CORE_PANELS = {
    "Users",
    "Agents",
    "Users over the agent limit",
    "Sessions over the age limit",
    "Firing alerts",
    "Users and agents per instance",
    "Agents per user against the limit",
    "Users with the most agents",
    "Oldest sessions",
    "Session-age distribution",
    "Agents-per-session distribution",
    "Cleanups per second by trigger and result",
    "Webhook responses by code",
    "Scrape render duration",
    "Users left out by the series cap",
}


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in data_panels(dashboard) for t in p["targets"]]


def substitute(expr: str, instance: str = ".*", worker: str = ".*") -> str:
    """Grafana's variables as the dashboard would send them (All is `.*`)."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$job", "agent-registry-exporter")
        .replace("$instance", instance)
        .replace("$worker", worker)
        .replace("$user_id", ".*")
    )


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return render_dashboard()


class TestDashboardFile:
    def test_committed_json_equals_the_rendering(self) -> None:
        """grafana/agent-registry.json is exactly what `make rules` writes."""
        assert DASHBOARD_FILE.read_text() == render_dashboard_json()

    def test_identity_is_stable_and_read_only(self, dashboard) -> None:
        """A fixed uid (links survive re-imports) and not editable."""
        assert dashboard["uid"] == UID == "agent-registry"
        assert dashboard["editable"] is False

    def test_core_panels_are_there(self, dashboard) -> None:
        """Every question the dashboard promises to answer has its panel."""
        assert {p["title"] for p in data_panels(dashboard)} >= CORE_PANELS


class TestGrafanaSchema:
    def test_committed_json_reads_back_into_the_sdk_model_unchanged(self) -> None:
        """JSON -> the SDK's Dashboard model -> JSON gives the committed file byte for byte."""
        text = DASHBOARD_FILE.read_text()
        assert encode(decode(text)) == text

    def test_read_back_panels_and_queries_are_typed_by_their_plugin(self) -> None:
        """Each panel's options decode to its plugin's class, each target to a Prometheus query."""
        board = decode(DASHBOARD_FILE.read_text())
        panels = [p for p in board.panels or [] if isinstance(p, model.Panel)]
        assert len(panels) == len(data_panels(json.loads(DASHBOARD_FILE.read_text())))
        for panel in panels:
            options = type(panel.options)
            assert options.__module__.endswith(f"models.{panel.type_val}"), panel.title
            for target in panel.targets or []:
                assert type(target).__module__.endswith("models.prometheus"), panel.title

    def test_a_field_outside_grafana_schema_does_not_survive_the_round_trip(self) -> None:
        """The round trip can fail: a key Grafana's schema lacks is dropped on the way back."""
        data = json.loads(DASHBOARD_FILE.read_text())
        data["panels"][1]["fieldConfig"]["defaults"]["units"] = "bytes"  # typo of `unit`
        text = json.dumps(data, indent=2) + "\n"
        assert encode(decode(text)) != text

    def test_dashboard_command_prints_the_committed_json(self, capsys) -> None:
        """`agent-registry-exporter dashboard` (what `make rules` runs) writes the same file."""
        assert main(["dashboard"]) == 0
        assert capsys.readouterr().out == DASHBOARD_FILE.read_text()


class TestWithoutTheSdk:
    """Grafana's SDK is the optional `dashboard` extra: serving never needs it."""

    @staticmethod
    def run_python(code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )

    @pytest.mark.processes
    def test_importing_the_package_and_its_command_does_not_import_the_sdk(self) -> None:
        """The exporter, the artefacts family and the CLI load without touching the SDK."""
        done = self.run_python(
            "import sys, agent_registry_exporter, agent_registry_exporter.artifacts, "
            "agent_registry_exporter.cli\n"
            "print(sorted(m for m in sys.modules if m.startswith('grafana_foundation_sdk')))"
        )
        assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr

    @pytest.mark.processes
    def test_dashboard_command_without_the_sdk_names_the_extra(self) -> None:
        """Exit 2 and one line saying which extra to install, not a traceback."""
        done = self.run_python(
            "import sys\n"
            "sys.modules['grafana_foundation_sdk'] = None  # as if not installed\n"
            "from agent_registry_exporter.cli import main\n"
            "sys.exit(main(['dashboard']))"
        )
        assert done.returncode == 2, done.stderr
        assert "pip install '.[dashboard]'" in done.stderr
        assert "Traceback" not in done.stderr
        assert done.stdout == ""


class TestLint:
    def test_every_panel_has_title_question_unit_and_position(self, dashboard) -> None:
        """Title, the question it answers, unit, gridPos and the datasource variable on each."""
        titles = [p["title"] for p in data_panels(dashboard)]
        assert len(titles) == len(set(titles))
        for panel in data_panels(dashboard):
            assert panel["title"], panel
            assert "?" in panel["description"], panel["title"]
            assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
            assert set(panel["gridPos"]) == {"x", "y", "w", "h"}, panel["title"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for target in panel["targets"]:
                assert target["expr"], panel["title"]
                assert target["refId"], panel["title"]
                assert target["datasource"]["uid"] == "${datasource}"
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), panel["title"]

    def test_panels_fit_the_grid_without_overlapping(self, dashboard) -> None:
        """Panels stay within 24 columns and never cover one another."""
        taken: set[tuple[int, int]] = set()
        for panel in dashboard["panels"]:
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24, panel["title"]
            cells = {
                (x, y)
                for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])
            }
            assert not cells & taken, panel["title"]
            taken |= cells
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids))

    def test_every_selector_filters_on_job_and_instance(self, dashboard) -> None:
        """No query reads another job's or every instance's series by accident."""
        for expr in exprs(dashboard):
            for name, matchers in SELECTOR.findall(expr):
                assert 'job=~"$job"' in matchers, (name, expr)
                assert 'instance=~"$instance"' in matchers, (name, expr)
                if name in PER_USER:
                    assert 'user_id=~"$user_id"' in matchers, (name, expr)
                if name in PER_WORKER:
                    assert 'worker=~"$worker"' in matchers, (name, expr)

    def test_worker_is_only_ever_matched_by_regex(self, dashboard) -> None:
        """`worker=~"$worker"` keeps embedded series (no label); `=`, `!=`, `!~` would not."""
        matchers = [
            m for e in exprs(dashboard) for m in re.findall(r"worker\s*[=!]~?\s*\"[^\"]*\"", e)
        ]
        assert matchers
        assert set(matchers) == {'worker=~"$worker"'}

    def test_every_counter_is_a_rate_over_the_rate_interval(self, dashboard) -> None:
        """A raw counter is meaningless on a graph; a fixed range breaks on slow scrapes."""
        counters = 0
        for expr in exprs(dashboard):
            for match in re.finditer(r"\w+_total\{[^}]*\}(\[[^\]]*\])?", expr):
                counters += 1
                assert match.group(1) == "[$__rate_interval]", expr
                before = expr[: match.start()]
                assert before.rstrip().endswith(("rate(", "increase(")), expr
        assert counters >= 3

    def test_template_variables(self, dashboard) -> None:
        """datasource, job, instance and worker (multi, All is `.*`), an optional user_id."""
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert list(variables) == ["datasource", "job", "instance", "worker", "user_id"]
        assert variables["datasource"]["query"] == "prometheus"
        for name in ("instance", "worker"):
            assert variables[name]["multi"] is True
            assert variables[name]["includeAll"] is True
            assert variables[name]["allValue"] == ".*"
            assert variables[name]["current"]["value"] == "$__all"
        assert "agent_registry_source_up{" in variables["worker"]["definition"]
        assert variables["user_id"]["current"]["value"] == ".*"

    @pytest.mark.processes
    def test_every_expression_parses(self, dashboard, tmp_path: Path) -> None:
        """promtool parses each query (variables substituted) as a recording rule."""
        rules = {
            "groups": [
                {
                    "name": "dashboard",
                    "rules": [
                        {"record": f"dashboard:expr{n}", "expr": substitute(e)}
                        for n, e in enumerate(exprs(dashboard))
                    ],
                }
            ]
        }
        path = tmp_path / "dashboard-exprs.yml"
        path.write_text(yaml.safe_dump(rules))
        promtool = shutil.which("promtool")
        assert promtool, "promtool is installed by `make test`"
        done = subprocess.run(
            [promtool, "check", "rules", str(path)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr

    @pytest.mark.processes
    def test_a_broken_expression_would_be_caught(self, tmp_path: Path) -> None:
        """The parse check can fail."""
        path = tmp_path / "broken.yml"
        path.write_text(
            yaml.safe_dump(
                {"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum(rate(x[1m])"}]}]}
            )
        )
        done = subprocess.run(
            [shutil.which("promtool") or "promtool", "check", "rules", str(path)],
            capture_output=True,
            text=True,
        )
        assert done.returncode != 0


class TestProvisioning:
    def test_dashboard_provider_loads_files(self) -> None:
        """A file provider with a path Grafana reads at start-up."""
        config = yaml.safe_load((PROVISIONING / "dashboards" / "agent-registry.yml").read_text())
        (provider,) = config["providers"]
        assert provider["type"] == "file"
        assert provider["options"]["path"].startswith("/")

    def test_prometheus_datasource_is_the_default(self) -> None:
        """The provisioned Prometheus data source is the dashboard's default."""
        config = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
        (source,) = config["datasources"]
        assert (source["type"], source["isDefault"]) == ("prometheus", True)
