"""Alert rules: rendered from Thresholds, committed without drift, proven by promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from agent_registry_exporter import Thresholds
from agent_registry_exporter.artifacts.alertmanager_route import render_alertmanager_yaml
from agent_registry_exporter.artifacts.rules import RuleOptions, render_rules, render_rules_yaml
from agent_registry_exporter.cli import main

ROOT = Path(__file__).parent.parent
ALERTS = ROOT / "alerts"
RULES_FILE = ALERTS / "agent-registry.rules.yml"
PROMTOOL_TESTS = sorted((ALERTS / "tests").glob("*.yml"))
ALERT_NAMES = {
    "AgentRegistryTooManyAgentsPerUser",
    "AgentRegistrySessionTooOld",
    "AgentRegistryTooManyAgentsTotal",
    "AgentRegistryCleanupFailing",
    "AgentRegistryExporterDown",
    "AgentRegistryCleanedAgentsNotFreed",
    "AgentRegistryExporterCertificateExpiring",
    "AgentRegistryViolatorsOmitted",
    "AgentRegistryNoWorkers",
    "AgentRegistryWorkerDown",
    "AgentRegistryExporterAbsent",
    "AgentRegistryUnknownInstance",
}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is installed by `make test` (Debian packages prometheus, alertmanager)"
    return path


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


class TestRendering:
    def test_committed_rules_equal_the_default_rendering(self) -> None:
        """alerts/agent-registry.rules.yml is exactly what `make rules` writes."""
        assert RULES_FILE.read_text() == render_rules_yaml(Thresholds())

    def test_changing_a_threshold_changes_the_rendering(self) -> None:
        """The drift test above would catch a new default."""
        assert render_rules_yaml(Thresholds(agents_per_user=51)) != RULES_FILE.read_text()
        assert "agent_registry_user_agents > 51" in render_rules_yaml(
            Thresholds(agents_per_user=51)
        )

    def test_rules_use_every_threshold(self) -> None:
        """Each limit of Thresholds appears in its alert's expression."""
        limits = Thresholds(agents_per_user=7, session_age_seconds=3600, total_agents=70)
        exprs = {r["alert"]: r["expr"] for r in render_rules(limits)["groups"][0]["rules"]}
        assert exprs["AgentRegistryTooManyAgentsPerUser"].endswith(
            "(agent_registry_user_agents > 7)"
        )
        assert exprs["AgentRegistrySessionTooOld"].startswith(
            "(time() - agent_registry_user_session_created_timestamp_seconds > 3600) * "
        )
        assert exprs["AgentRegistryTooManyAgentsTotal"].endswith("> 70")

    def test_every_alert_is_described_and_only_per_user_alerts_remediate(self) -> None:
        """summary and description everywhere; remediation=cleanup on the two per-user alerts."""
        rules = render_rules(Thresholds())["groups"][0]["rules"]
        assert {r["alert"] for r in rules} == ALERT_NAMES
        for rule in rules:
            assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}
            assert rule["labels"]["severity"] in {"warning", "critical"}
        remediating = {r["alert"] for r in rules if r["labels"].get("remediation") == "cleanup"}
        assert remediating == {"AgentRegistryTooManyAgentsPerUser", "AgentRegistrySessionTooOld"}

    def test_age_alert_uses_the_created_timestamp(self) -> None:
        """Age is computed at evaluation time, not read from the age gauge."""
        rules = render_rules(Thresholds())["groups"][0]["rules"]
        (age,) = [r for r in rules if r["alert"] == "AgentRegistrySessionTooOld"]
        assert "agent_registry_user_session_created_timestamp_seconds" in age["expr"]
        assert "age_seconds" not in age["expr"]

    def test_every_runbook_url_is_the_documentation_url_and_the_alerts_anchor(self) -> None:
        """runbook_url = pyproject's Documentation URL + runbooks/#<alert in lower case>, the
        docs' anchor scheme (a heading per alert)."""
        base = PYPROJECT["project"]["urls"]["Documentation"]
        assert RuleOptions().runbook_url_base == base
        for rule in render_rules(Thresholds())["groups"][0]["rules"]:
            assert rule["annotations"]["runbook_url"] == (
                f"{base.rstrip('/')}/runbooks/#{rule['alert'].lower()}"
            )

    def test_runbook_base_is_an_option(self, capsys) -> None:
        """`rules --runbook-url-base` moves every link; a base that is no URL is refused."""
        assert main(["rules", "--runbook-url-base", "https://docs.example/are/"]) == 0
        rules = yaml.safe_load(capsys.readouterr().out)["groups"][0]["rules"]
        assert {r["annotations"]["runbook_url"].split("#")[0] for r in rules} == {
            "https://docs.example/are/runbooks/"
        }
        assert main(["rules", "--runbook-url-base", "docs/runbooks"]) == 2
        assert "runbook_url_base" in capsys.readouterr().err

    def test_rules_keep_every_target_label_where_they_aggregate(self) -> None:
        """No `by (...)` list: aggregations say which labels they drop (`without`), so
        namespace, pod and whatever else the scrape adds reach Alertmanager."""
        for rule in render_rules(Thresholds())["groups"][0]["rules"]:
            assert not re.search(r"\bby\s*\(", rule["expr"]), rule["alert"]

    def test_cleanup_alerts_join_the_advertised_address_and_fall_back_without_it(self) -> None:
        """Both remediating rules multiply in agent_registry_exporter_info's address on every
        target label, `or` the bare condition when the info series is missing."""
        rules = render_rules(Thresholds())["groups"][0]["rules"]
        for rule in (r for r in rules if r["labels"].get("remediation") == "cleanup"):
            joined, _, bare = rule["expr"].partition(" or ignoring (address) ")
            assert joined.endswith(
                "* ignoring (user_id, worker, address) group_left (address) "
                "agent_registry_exporter_info"
            )
            assert joined.startswith(bare)

    @pytest.mark.parametrize("duration", ["11m", "1h", "10m1s"])
    def test_for_longer_than_ten_minutes_is_refused(self, duration: str) -> None:
        """A `for:` over 10m is an error naming the option."""
        with pytest.raises(ValueError, match="for_session_age"):
            RuleOptions(for_session_age=duration)

    @pytest.mark.parametrize("duration", ["", "5", "5 m", "-1m", "1d"])
    def test_malformed_durations_are_refused(self, duration: str) -> None:
        """Only Prometheus durations of minutes and seconds are accepted."""
        with pytest.raises(ValueError, match="not a duration"):
            RuleOptions(for_agents_per_user=duration)

    def test_zero_for_is_left_out(self) -> None:
        """for: 0s renders no `for` key (fires at the first evaluation)."""
        rules = render_rules(Thresholds(), RuleOptions(for_total_agents="0s"))
        (total,) = [r for r in rules["groups"][0]["rules"] if r["alert"].endswith("Total")]
        assert "for" not in total

    def test_cli_renders_with_environment_thresholds(self, capsys, monkeypatch) -> None:
        """`rules` reads the same threshold variables as `serve`."""
        monkeypatch.setenv("AGENT_REGISTRY_EXPORTER_TOTAL_AGENTS", "900")
        assert main(["rules", "--for-total-agents", "2m", "--job", "agents"]) == 0
        rendered = yaml.safe_load(capsys.readouterr().out)
        rules = {r["alert"]: r for r in rendered["groups"][0]["rules"]}
        assert rules["AgentRegistryTooManyAgentsTotal"]["expr"] == "agent_registry_agents > 900"
        assert rules["AgentRegistryTooManyAgentsTotal"]["for"] == "2m"
        assert rules["AgentRegistryExporterDown"]["expr"] == 'up{job="agents"} == 0'
        assert rules["AgentRegistryExporterAbsent"]["expr"] == 'absent(up{job="agents"})'

    def test_cli_refuses_a_long_for(self, capsys) -> None:
        """A bad duration exits 2 with a message."""
        assert main(["rules", "--for-exporter-down", "1h"]) == 2
        assert "for_exporter_down" in capsys.readouterr().err


class TestPromtool:
    @pytest.mark.processes
    def test_rules_pass_promtool_check(self) -> None:
        """promtool accepts the committed rule file."""
        done = run(tool("promtool"), "check", "rules", RULES_FILE)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in done.stdout

    def test_every_alert_has_a_promtool_unit_test(self) -> None:
        """Each alert name is exercised by at least one promtool test file."""
        tested = {
            name for path in PROMTOOL_TESTS for name in ALERT_NAMES if name in path.read_text()
        }
        assert tested == ALERT_NAMES

    @pytest.mark.processes
    def test_promtool_unit_tests_pass(self) -> None:
        """`promtool test rules alerts/tests/*.yml` succeeds."""
        done = run(tool("promtool"), "test", "rules", *PROMTOOL_TESTS)
        assert done.returncode == 0, done.stdout + done.stderr

    @pytest.mark.processes
    def test_a_wrong_expectation_makes_promtool_fail(self, tmp_path: Path) -> None:
        """The boundary test can fail: a user at 51 instead of 50 breaks its expectations."""
        source = (ALERTS / "tests" / "too-many-agents.test.yml").read_text()
        mutated = source.replace("values: '50x15'", "values: '51x15'").replace(
            "../agent-registry.rules.yml", str(RULES_FILE)
        )
        assert mutated != source
        (tmp_path / "mutated.test.yml").write_text(mutated)
        done = run(tool("promtool"), "test", "rules", "mutated.test.yml", cwd=tmp_path)
        assert done.returncode != 0
        assert "at-limit" in done.stdout + done.stderr


class TestAlertmanagerExample:
    EXAMPLE = ALERTS / "alertmanager.example.yml"

    def test_committed_example_equals_the_default_rendering(self) -> None:
        """alerts/alertmanager.example.yml is exactly what `make rules` writes."""
        assert self.EXAMPLE.read_text() == render_alertmanager_yaml()

    @pytest.mark.processes
    def test_example_passes_amtool(self) -> None:
        """amtool (0.25) accepts the example configuration."""
        done = run(tool("amtool"), "check-config", self.EXAMPLE)
        assert done.returncode == 0, done.stdout + done.stderr

    def test_cleanup_alerts_reach_the_webhook_with_a_bearer_token_file(self) -> None:
        """remediation=cleanup routes to /webhook/alertmanager, one user per notification."""
        config = yaml.safe_load(self.EXAMPLE.read_text())
        (route,) = [
            r for r in config["route"]["routes"] if 'remediation="cleanup"' in r["matchers"]
        ]
        assert set(route["group_by"]) == {"alertname", "instance", "worker", "user_id"}
        (receiver,) = [r for r in config["receivers"] if r["name"] == route["receiver"]]
        (hook,) = receiver["webhook_configs"]
        assert hook["url"].endswith(":8464/webhook/alertmanager")
        assert hook["http_config"]["authorization"]["credentials_file"]
        # Alertmanager 0.25 rejects these webhook keys.
        assert not {"timeout", "url_file", "http_headers"} & set(hook)
