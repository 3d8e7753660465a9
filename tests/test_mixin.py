"""The monitoring mixin (mixin/): rendered from the code of the rules and the dashboard,
committed without drift, and evaluating to exactly the committed rules and dashboard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import _jsonnet
import pytest
import yaml

from agent_registry_exporter import Thresholds
from agent_registry_exporter.artifacts.dashboard import render_dashboard_json
from agent_registry_exporter.artifacts.mixin import render_mixin_files
from agent_registry_exporter.artifacts.rules import RuleOptions
from agent_registry_exporter.cli import main

from .doc_blocks import block

ROOT = Path(__file__).parent.parent
MIXIN = ROOT / "mixin"


def evaluate(overrides: str = "{}") -> dict[str, Any]:
    """What a jsonnet user gets from the committed mixin with `overrides` added to it."""
    snippet = (
        f"local mixin = (import 'mixin.libsonnet') + {overrides};\n"
        "{ alerts: mixin.prometheusAlerts, dashboards: mixin.grafanaDashboards }"
    )
    result: dict[str, Any] = json.loads(
        _jsonnet.evaluate_snippet("test.jsonnet", snippet, jpathdir=[str(MIXIN)])
    )
    return result


def expressions(alerts: dict[str, Any]) -> dict[str, str]:
    return {rule["alert"]: rule["expr"] for rule in alerts["groups"][0]["rules"]}


class TestCommitted:
    def test_committed_mixin_equals_the_rendering(self) -> None:
        """Every file under mixin/ is exactly what `make rules` writes, and nothing else is."""
        files = render_mixin_files(Thresholds(), RuleOptions(), render_dashboard_json())
        committed = {
            str(path.relative_to(MIXIN)): path.read_text()
            for path in MIXIN.rglob("*")
            if path.is_file()
        }
        assert committed == files

    def test_mixin_command_writes_the_committed_files(self, tmp_path: Path, capsys) -> None:
        """`agent-registry-exporter mixin --output-dir DIR` writes mixin/ as committed."""
        assert main(["mixin", "--output-dir", str(tmp_path)]) == 0
        for name in ("mixin.libsonnet", "config.libsonnet", "alerts/alerts.libsonnet"):
            assert (tmp_path / name).read_text() == (MIXIN / name).read_text()
        assert "wrote" in capsys.readouterr().out


class TestRoundTrip:
    def test_alerts_are_exactly_the_committed_rule_file(self) -> None:
        """prometheusAlerts, evaluated by jsonnet, is alerts/agent-registry.rules.yml."""
        committed = yaml.safe_load((ROOT / "alerts" / "agent-registry.rules.yml").read_text())
        assert evaluate()["alerts"] == committed

    def test_dashboard_is_exactly_the_committed_json(self) -> None:
        """grafanaDashboards holds grafana/agent-registry.json, and only it."""
        committed = json.loads((ROOT / "grafana" / "agent-registry.json").read_text())
        assert evaluate()["dashboards"] == {"agent-registry.json": committed}

    def test_overridden_config_gives_what_python_renders_with_those_values(self) -> None:
        """Limits, `for:`, job selector and runbook base set in _config render the same rules
        as Thresholds and RuleOptions with those values."""
        overrides = """{ _config+:: {
            agentsPerUser: 7, sessionAgeSeconds: 3600.5, totalAgents: 70,
            forWorkerDown: '2m', jobSelector: 'job="backend"',
            runbookURLBase: 'https://docs.example.org/agents/',
        } }"""
        python = yaml.safe_load(
            yaml.safe_dump(  # through YAML, as the committed file is: the same types
                _render_rules(
                    Thresholds(agents_per_user=7, session_age_seconds=3600.5, total_agents=70),
                    RuleOptions(
                        for_worker_down="2m",
                        job="backend",
                        runbook_url_base="https://docs.example.org/agents/",
                    ),
                )
            )
        )
        assert evaluate(overrides)["alerts"] == python


class TestOverrides:
    def test_per_user_limit_changes_the_per_user_expressions(self) -> None:
        """agentsPerUser: 7 makes both per-user rules compare with 7, not 50."""
        exprs = expressions(evaluate("{ _config+:: { agentsPerUser: 7 } }")["alerts"])
        assert "agent_registry_user_agents > 7)" in exprs["AgentRegistryTooManyAgentsPerUser"]
        assert "> 50" not in exprs["AgentRegistryTooManyAgentsPerUser"]
        assert "agent_registry_user_agents > 7 or" in exprs["AgentRegistryViolatorsOmitted"]

    def test_job_selector_changes_the_target_rules(self) -> None:
        """jobSelector is what the `up` rules select on, as the other mixins' selectors."""
        exprs = expressions(
            evaluate("""{ _config+:: { jobSelector: 'job=~"backend|sidecar"' } }""")["alerts"]
        )
        assert exprs["AgentRegistryExporterDown"] == 'up{job=~"backend|sidecar"} == 0'
        assert exprs["AgentRegistryExporterAbsent"] == 'absent(up{job=~"backend|sidecar"})'

    def test_runbook_base_is_followed_with_or_without_a_trailing_slash(self) -> None:
        """runbookURLBase moves every runbook_url; a trailing slash is not doubled."""
        for base in ("https://wiki.example.org/x", "https://wiki.example.org/x/"):
            alerts = evaluate(f"{{ _config+:: {{ runbookURLBase: '{base}' }} }}")["alerts"]
            urls = {r["annotations"]["runbook_url"] for r in alerts["groups"][0]["rules"]}
            assert "https://wiki.example.org/x/runbooks/#agentregistryexporterdown" in urls
            assert all(url.startswith("https://wiki.example.org/x/runbooks/#") for url in urls)

    def test_a_longer_for_changes_only_that_alert(self) -> None:
        """forWorkerDown moves AgentRegistryWorkerDown's `for:` alone."""
        default = evaluate()["alerts"]["groups"][0]["rules"]
        changed = evaluate("{ _config+:: { forWorkerDown: '7m' } }")["alerts"]["groups"][0]
        differing = [new for old, new in zip(default, changed["rules"], strict=True) if old != new]
        assert [(r["alert"], r["for"]) for r in differing] == [("AgentRegistryWorkerDown", "7m")]


class TestDocs:
    """The Alerts page's jsonnet examples, evaluated with the mixin vendored under the name
    they import it by."""

    @pytest.fixture
    def vendor(self, tmp_path: Path) -> Path:
        (tmp_path / "agent-registry-exporter-mixin").symlink_to(MIXIN)
        return tmp_path

    def test_standalone_example_renders_rules_and_dashboard_with_its_values(
        self, vendor: Path
    ) -> None:
        """The two files it writes: rules with its job, limits and committed `for:`s; the
        committed dashboard."""
        example = block("docs/alerts.md", "jsonnet", "agent-registry.jsonnet").text
        files = json.loads(_jsonnet.evaluate_snippet("example", example, jpathdir=[str(vendor)]))
        assert set(files) == {"agent-registry.rules.yml", "agent-registry.json"}
        exprs = expressions(files["agent-registry.rules.yml"])
        assert exprs["AgentRegistryExporterDown"] == 'up{job="shop/agent-registry"} == 0'
        assert "agent_registry_user_agents > 80)" in exprs["AgentRegistryTooManyAgentsPerUser"]
        assert "_seconds > 43200)" in exprs["AgentRegistrySessionTooOld"]
        committed = json.loads((ROOT / "grafana" / "agent-registry.json").read_text())
        assert files["agent-registry.json"] == committed

    def test_kube_prometheus_example_passes_its_values(self, vendor: Path) -> None:
        """Its mixin, with its `_config`, is what reaches addMixin (kube-prometheus is not
        vendored here: a stand-in `lib/mixin.libsonnet` hands back the groups it is given)."""
        stand_in = vendor / "kube-prometheus" / "lib" / "mixin.libsonnet"
        stand_in.parent.mkdir(parents=True)
        stand_in.write_text(
            "function(params) { prometheusRules: { kind: 'PrometheusRule', metadata: "
            "{ name: params.name, namespace: params.namespace }, spec: { groups: "
            "params.mixin.prometheusAlerts.groups } } }\n"
        )
        example = block("docs/alerts.md", "jsonnet", "addMixin").text
        out = json.loads(_jsonnet.evaluate_snippet("example", example, jpathdir=[str(vendor)]))
        rule = out["agent-registry-prometheusRule"]
        assert rule["metadata"] == {"name": "agent-registry", "namespace": "monitoring"}
        exprs = expressions(rule["spec"])
        assert exprs["AgentRegistryExporterAbsent"] == 'absent(up{job="shop/agent-registry"})'
        assert "agent_registry_user_agents > 80)" in exprs["AgentRegistryTooManyAgentsPerUser"]


class TestRendering:
    def test_an_unknown_rule_option_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A RuleOptions field the mixin cannot place in _config stops the rendering."""
        from agent_registry_exporter.artifacts import mixin

        monkeypatch.setattr(mixin, "_option_names", lambda: ["job", "colour"])
        with pytest.raises(ValueError, match="colour"):
            render_mixin_files(Thresholds(), RuleOptions(), render_dashboard_json())


def _render_rules(thresholds: Thresholds, options: RuleOptions) -> dict[str, Any]:
    from agent_registry_exporter.artifacts.rules import render_rules

    return render_rules(thresholds, options)
