"""Kubernetes manifests: rendered from code, committed without drift, validated offline."""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from agent_registry_exporter import Settings, Thresholds
from agent_registry_exporter.artifacts.kubernetes import (
    FILES,
    JOB_LABEL,
    NETWORK_POLICY,
    NETWORK_POLICY_COMPONENT,
    KubernetesOptions,
    render_kubernetes,
    render_kubernetes_files,
)
from agent_registry_exporter.cli import main

from .doc_blocks import block
from .manifests import (
    BACKEND_DEPLOYMENT,
    DEPLOY,
    FS_GROUP_DEPLOYMENT,
    ROOT,
    SAMPLE_DEPLOYMENTS,
    changed,
    committed,
    drifted,
    http_status,
    kubectl,
    load_kube,
    patched_deployment,
    running_sidecar,
    validate_core,
    validate_custom,
)
from .test_rules import run, tool

ALERTS = ROOT / "alerts"
CORE = (
    "service.yaml",
    "peers-service.yaml",
    NETWORK_POLICY,
    "secret.example.yaml",
    "grafana-dashboard.yaml",
)
DASHBOARD = ROOT / "grafana" / "agent-registry.json"
CUSTOM = (
    "podmonitor.yaml",
    "servicemonitor.yaml",
    "prometheusrule.yaml",
    "alertmanagerconfig.yaml",
)
PORT = Settings().listen_port


@pytest.fixture
def changed_default() -> Iterator[None]:
    """Thresholds' agents_per_user default is 51 during the test, as if edited in the code."""
    field = Thresholds.model_fields["agents_per_user"]
    original = field.default
    field.default = original + 1
    Thresholds.model_rebuild(force=True)
    try:
        assert Thresholds().agents_per_user == original + 1
        yield
    finally:
        field.default = original
        Thresholds.model_rebuild(force=True)


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    return committed()


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    """The example backend Deployment with the committed patch applied by kubectl."""
    return patched_deployment(DEPLOY / "deployment-patch.yaml")


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in pod_spec(deployment)["containers"] if c["name"] == name]
    return found


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def containers_without_image(deployment: dict[str, Any]) -> list[str]:
    return [c["name"] for c in pod_spec(deployment)["containers"] if not c.get("image")]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def shown_outputs(text: str) -> list[str]:
    """The output shown after each `$ ` command of a console block, in order."""
    outputs: list[str] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            outputs.append("")
        else:
            outputs[-1] += line + "\n"
    return outputs


def policy_ports(policy: dict[str, Any]) -> set[int]:
    return {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


class TestRendering:
    def test_committed_manifests_equal_the_default_rendering(self) -> None:
        """deploy/kubernetes/ holds exactly what `make rules` writes, file for file."""
        stale = drifted(render_kubernetes_files(Thresholds()))
        assert stale == [], f"deploy/kubernetes/ is stale ({', '.join(stale)}): run `make rules`"
        assert sorted(p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*.yaml")) == sorted(
            FILES
        )

    def test_a_changed_threshold_default_changes_the_prometheus_rule_and_drift_names_it(
        self, tmp_path: Path, changed_default: None
    ) -> None:
        """`make rules` after raising agents_per_user's default rewrites only the
        PrometheusRule, so the drift test above fails until the files are regenerated."""
        assert main(["kubernetes", "--output-dir", str(tmp_path)]) == 0
        written = {
            p.relative_to(tmp_path).as_posix(): p.read_text() for p in tmp_path.rglob("*.yaml")
        }
        assert drifted(written) == ["prometheusrule.yaml"]
        rule = yaml.safe_load(written["prometheusrule.yaml"])
        exprs = [r["expr"] for r in rule["spec"]["groups"][0]["rules"]]
        assert any("(agent_registry_user_agents > 51)" in e for e in exprs)

    def test_cli_writes_the_committed_files(self, tmp_path: Path, capsys) -> None:
        """`agent-registry-exporter kubernetes --output-dir DIR` with defaults: no drift."""
        assert main(["kubernetes", "--output-dir", str(tmp_path / "k")]) == 0
        out = tmp_path / "k"
        assert (
            drifted({p.relative_to(out).as_posix(): p.read_text() for p in out.rglob("*.yaml")})
            == []
        )
        assert f"wrote {len(FILES)} files" in capsys.readouterr().out

    def test_cli_options_reach_the_manifests(self, tmp_path: Path) -> None:
        """Namespace, Deployment, container, image, ports and job end up where they belong."""
        argv = [
            "kubernetes", "--output-dir", str(tmp_path), "--namespace", "team-a",
            "--deployment", "api", "--backend-container", "app", "--image", "reg.example/are:9",
            "--app-port", "9000", "--app-port", "9001", "--job", "agents", "--backend-gid", "2000",
        ]  # fmt: skip
        assert main(argv) == 0
        out = {
            p.relative_to(tmp_path).as_posix(): yaml.safe_load(p.read_text())
            for p in tmp_path.rglob("*.yaml")
        }
        patch = out["deployment-patch.yaml"]
        assert patch["metadata"] == {"name": "api", "namespace": "team-a"}
        names = [c["name"] for c in patch["spec"]["template"]["spec"]["containers"]]
        assert names == ["app", "agent-registry-exporter"]
        assert patch["spec"]["template"]["spec"]["containers"][1]["image"] == "reg.example/are:9"
        ingress = out[NETWORK_POLICY]["spec"]["ingress"]
        ports = [p["port"] for rule in ingress for p in rule["ports"]]
        assert ports == [PORT, 9000, 9001]
        assert patch["spec"]["template"]["metadata"]["labels"] == {JOB_LABEL: "agents"}
        sidecar = patch["spec"]["template"]["spec"]["containers"][1]
        assert sidecar["securityContext"]["runAsGroup"] == 2000
        assert "securityContext" not in patch["spec"]["template"]["spec"]
        hook = out["alertmanagerconfig.yaml"]["spec"]["receivers"][0]["webhookConfigs"][0]
        assert hook["url"].startswith("http://agent-registry-exporter.team-a.svc:")
        assert {m["metadata"]["namespace"] for n, m in out.items() if "metadata" in m} == {"team-a"}

    def test_monitor_labels_go_on_the_monitors_and_the_rule_only(self, tmp_path: Path) -> None:
        """kube-prometheus-stack selects PodMonitors, ServiceMonitors and PrometheusRules by
        `release: <name>`: --monitor-label (repeated) puts each label on those three."""
        argv = [
            "kubernetes", "--output-dir", str(tmp_path), "--monitor-label", "release=kps",
            "--monitor-label", "team.example.com/owner=agents", "--monitor-label", "empty=",
        ]  # fmt: skip
        assert main(argv) == 0
        wanted = {"release": "kps", "team.example.com/owner": "agents", "empty": ""}
        for path in tmp_path.rglob("*.yaml"):
            meta = yaml.safe_load(path.read_text()).get("metadata", {})
            labels = meta.get("labels", {})
            if path.name in ("podmonitor.yaml", "servicemonitor.yaml", "prometheusrule.yaml"):
                assert labels == wanted, path.name
            else:
                assert not set(wanted) & set(labels), path.name
        validate_custom(yaml.safe_load((tmp_path / "podmonitor.yaml").read_text()))

    def test_without_monitor_labels_the_monitors_carry_none(self, manifests) -> None:
        """The default rendering adds no label a Prometheus might not select by."""
        for name in ("podmonitor.yaml", "servicemonitor.yaml", "prometheusrule.yaml"):
            assert "labels" not in manifests[name]["metadata"], name

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["--monitor-label", "release"], "--monitor-label 'release' must be KEY=VALUE"),
            (["--monitor-label", "=kps"], "--monitor-label '=kps': '' is not a label key"),
            (
                ["--monitor-label", "Bad Key=x"],
                "--monitor-label 'Bad Key=x': 'Bad Key' is not a label key",
            ),
            (
                ["--monitor-label", "release=not ok"],
                "--monitor-label 'release=not ok': 'not ok' is not a label value",
            ),
            (["--monitor-label", f"release={'v' * 64}"], "is not a label value"),
            (["--namespace", "Team_A"], "namespace='Team_A' is not a Kubernetes name"),
            (["--app-port", str(PORT)], f"app port {PORT} must be 1-65535 and not"),
            (["--app-port", "70000"], "app port 70000"),
            (["--backend-gid", "0"], "backend_gid 0 must be a group id above 0"),
            (["--backend-gid", str(2**31)], f"backend_gid {2**31} must be a group id above 0"),
            (["--for-exporter-down", "1h"], "for_exporter_down"),
        ],
    )
    def test_cli_refuses_bad_options(
        self, tmp_path: Path, capsys, argv: list[str], message: str
    ) -> None:
        """A bad option exits 2 naming it, and writes nothing."""
        assert main(["kubernetes", "--output-dir", str(tmp_path / "k"), *argv]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "k").exists()


class TestKubernetesSchemas:
    @pytest.mark.parametrize("name", CORE)
    def test_core_manifest_validates_strictly(self, manifests, name: str) -> None:
        """Service, headless Service, NetworkPolicy, Secret: valid, no unknown field."""
        validate_core(manifests[name])

    def test_patched_deployment_validates_strictly(self, deployment) -> None:
        """The user's Deployment after `kubectl patch` is a valid Deployment."""
        validate_core(deployment)
        # The schema leaves `image` optional (controllers may fill it); the API server does not.
        assert containers_without_image(deployment) == []

    def test_patch_keeps_the_users_container_and_adds_the_sidecar(self, deployment) -> None:
        """Strategic merge: the backend keeps image, ports and env, and gains the socket dir."""
        backend = container(deployment, "backend")
        assert backend["image"] == "registry.example/agent-backend:1.4.2"
        assert env(backend)["BACKEND_WORKERS"] == "4"
        assert sorted(c["name"] for c in pod_spec(deployment)["containers"]) == [
            "agent-registry-exporter",
            "backend",
        ]
        assert pod_labels(deployment)["app.kubernetes.io/name"] == "agent-backend"

    @pytest.mark.processes
    def test_patch_naming_a_missing_container_is_caught(self, tmp_path: Path) -> None:
        """A wrong --backend-container adds an image-less container, which the check finds."""
        wrong = render_kubernetes_files(Thresholds(), KubernetesOptions(backend_container="api"))
        patch = tmp_path / "patch.yaml"
        patch.write_text(wrong["deployment-patch.yaml"])
        assert containers_without_image(patched_deployment(patch)) == ["api"]

    def test_an_unknown_field_fails_strict_validation(self, manifests) -> None:
        """The strict mode is on: a misspelt field is an error, not silently dropped."""
        service = copy.deepcopy(manifests["service.yaml"])
        service["spec"]["clusterIp"] = "None"
        with pytest.raises(kubernetes_validate.ValidationError, match="clusterIp"):
            validate_core(service)

    @pytest.mark.processes
    def test_kustomize_builds_exactly_the_applied_resources(self, manifests) -> None:
        """`kubectl kustomize` (what `apply -k` runs) builds every listed file, labelled."""
        done = kubectl("kustomize", DEPLOY)
        assert done.returncode == 0, done.stderr
        built = load_kube(done.stdout)
        listed = manifests["kustomization.yaml"]["resources"]
        assert sorted((b["kind"], b["metadata"]["name"]) for b in built) == sorted(
            (manifests[n]["kind"], manifests[n]["metadata"]["name"]) for n in listed
        )
        for obj in built:
            assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == (
                "agent-registry-exporter"
            )

    @pytest.mark.processes
    def test_kustomize_output_loads_with_pyyaml(self) -> None:
        """What `kubectl kustomize` writes is plain YAML to PyYAML, and so to checkov: no bare
        `=` (YAML 1.1's value tag), which kustomize writes unquoted for `matchType: =`."""
        done = kubectl("kustomize", DEPLOY)
        assert done.returncode == 0, done.stderr
        assert list(yaml.safe_load_all(done.stdout)) == load_kube(done.stdout)

    def test_kustomization_leaves_out_the_patch_the_alternative_and_the_example(
        self, manifests
    ) -> None:
        """`apply -k` never overwrites the real Secret nor scrapes twice."""
        listed = set(manifests["kustomization.yaml"]["resources"])
        assert listed == set(FILES) - {
            "kustomization.yaml",
            "deployment-patch.yaml",
            "servicemonitor.yaml",
            "secret.example.yaml",
            NETWORK_POLICY_COMPONENT,
            NETWORK_POLICY,
        }

    def test_the_network_policy_is_opt_in(self, manifests) -> None:
        """A policy selecting the pods isolates every port of theirs: the default applies
        none; the component holds it, for those who list it under `components:`."""
        kustomization = manifests["kustomization.yaml"]
        assert "components" not in kustomization
        assert not any("networkpolicy" in r for r in kustomization["resources"])
        component = manifests[NETWORK_POLICY_COMPONENT]
        assert (component["apiVersion"], component["kind"]) == (
            "kustomize.config.k8s.io/v1alpha1",
            "Component",
        )
        assert component["resources"] == [Path(NETWORK_POLICY).name]
        assert component["labels"] == kustomization["labels"]

    @pytest.mark.processes
    def test_the_default_kustomization_builds_no_network_policy(self) -> None:
        """`kubectl apply -k deploy/kubernetes` creates no NetworkPolicy."""
        done = kubectl("kustomize", DEPLOY)
        assert done.returncode == 0, done.stderr
        assert "NetworkPolicy" not in {o["kind"] for o in load_kube(done.stdout)}

    @pytest.mark.processes
    def test_the_documented_overlay_adds_the_network_policy(self, tmp_path: Path) -> None:
        """The docs' overlay (the kustomization plus the component) builds everything the
        default builds and the NetworkPolicy, labelled like the rest."""
        overlay = block("docs/kubernetes.md", "yaml", "components/networkpolicy")
        shutil.copytree(DEPLOY, tmp_path / "deploy" / "kubernetes")
        (tmp_path / "overlay").mkdir()
        (tmp_path / "overlay" / "kustomization.yaml").write_text(overlay.text)
        default = kubectl("kustomize", DEPLOY)
        done = kubectl("kustomize", tmp_path / "overlay")
        assert done.returncode == 0, done.stderr
        built = load_kube(done.stdout)
        kinds = sorted(o["kind"] for o in built)
        assert kinds == sorted([*(o["kind"] for o in load_kube(default.stdout)), "NetworkPolicy"])
        (policy,) = [o for o in built if o["kind"] == "NetworkPolicy"]
        assert policy["metadata"]["labels"]["app.kubernetes.io/part-of"] == (
            "agent-registry-exporter"
        )

    @pytest.mark.processes
    @pytest.mark.parametrize("sample", SAMPLE_DEPLOYMENTS, ids=lambda p: p.stem)
    def test_rendered_with_the_pods_ports_the_policy_lists_every_one(
        self, sample: Path, tmp_path: Path
    ) -> None:
        """Every port of every container of the patched pod is in the policy once rendered
        with --app-port for each of the app's; one left out is not (so it would be cut off)."""
        pod = pod_spec(yaml.safe_load(sample.read_text()))
        app_ports = [p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])]
        options = KubernetesOptions(app_ports=tuple(app_ports))
        files = render_kubernetes_files(Thresholds(), options)
        (tmp_path / "patch.yaml").write_text(files["deployment-patch.yaml"])
        patched = pod_spec(patched_deployment(tmp_path / "patch.yaml", sample))
        served = {p["containerPort"] for c in patched["containers"] for p in c.get("ports", [])}
        assert served == {*app_ports, PORT}
        assert policy_ports(render_kubernetes(Thresholds(), options)[NETWORK_POLICY]) == served
        fewer = KubernetesOptions(app_ports=tuple(app_ports[1:]))
        assert app_ports[0] not in policy_ports(
            render_kubernetes(Thresholds(), fewer)[NETWORK_POLICY]
        )


class TestDashboardConfigMap:
    def test_it_holds_exactly_the_committed_dashboard(self, manifests) -> None:
        """One key, grafana/agent-registry.json's text byte for byte (the Grafana sidecar
        writes each key as a file of that name)."""
        config_map = manifests["grafana-dashboard.yaml"]
        assert (config_map["apiVersion"], config_map["kind"]) == ("v1", "ConfigMap")
        assert config_map["data"] == {"agent-registry.json": DASHBOARD.read_text()}
        assert json.loads(config_map["data"]["agent-registry.json"])["title"]

    def test_it_is_labelled_and_annotated_for_the_grafana_sidecar(self, manifests) -> None:
        """kube-prometheus-stack's sidecar loads ConfigMaps labelled grafana_dashboard: "1"
        (its label and labelValue); the folder is read from the annotation the chart's
        folderAnnotation names, k8s-sidecar's own default or the common grafana_folder."""
        meta = manifests["grafana-dashboard.yaml"]["metadata"]
        assert meta["labels"] == {"grafana_dashboard": "1"}
        assert meta["annotations"] == {
            "grafana_folder": "agent-registry",
            "k8s-sidecar-target-directory": "agent-registry",
        }
        assert meta["namespace"] == manifests["service.yaml"]["metadata"]["namespace"]
        text = (DEPLOY / "grafana-dashboard.yaml").read_text()
        assert 'grafana_dashboard: "1"' in text or "grafana_dashboard: '1'" in text

    def test_it_is_applied_by_default(self, manifests) -> None:
        """In the default kustomization's resources."""
        assert "grafana-dashboard.yaml" in manifests["kustomization.yaml"]["resources"]

    def test_it_fits_kubectl_applys_last_applied_annotation(self) -> None:
        """`kubectl apply` (client side) copies the object into an annotation of at most
        256 KiB (the JSON inside it escaped again: half of that is the margin); a larger
        ConfigMap would need --server-side."""
        assert len((DEPLOY / "grafana-dashboard.yaml").read_bytes()) < 256 * 1024 // 2

    def test_cli_without_grafanas_sdk_says_which_extra(
        self, tmp_path: Path, capsys, monkeypatch
    ) -> None:
        """The dashboard needs the 'dashboard' extra: without it the command says so,
        exits 2 and writes nothing."""
        # As if not installed: the SDK and the modules that imported it are forgotten.
        for name in list(sys.modules):
            if name.startswith(
                ("grafana_foundation_sdk", "agent_registry_exporter.artifacts.dashboard")
            ):
                monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, "grafana_foundation_sdk", None)
        assert main(["kubernetes", "--output-dir", str(tmp_path / "k")]) == 2
        assert "'dashboard' extra" in capsys.readouterr().err
        assert not (tmp_path / "k").exists()


class TestCustomResources:
    @pytest.mark.parametrize("name", CUSTOM)
    def test_custom_resource_validates_against_its_crd(self, manifests, name: str) -> None:
        """prometheus-operator 0.93's CRD schema accepts it, unknown fields refused."""
        validate_custom(manifests[name])

    @pytest.mark.parametrize(
        ("name", "path", "value"),
        [
            ("podmonitor.yaml", ["spec", "joblabel"], JOB_LABEL),
            ("alertmanagerconfig.yaml", ["spec", "route", "group_by"], ["alertname"]),
            ("prometheusrule.yaml", ["spec", "groups", 0, "rules", 0, "for"], 300),
            ("servicemonitor.yaml", ["spec", "endpoints", 0, "port"], 8464),
        ],
    )
    def test_a_wrong_custom_resource_is_refused(
        self, manifests, name: str, path: list[Any], value: Any
    ) -> None:
        """A misspelt field or a wrong type fails the CRD schema."""
        broken = copy.deepcopy(manifests[name])
        target = broken
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            validate_custom(broken)


class TestWiring:
    def _down_job(self, manifests) -> str:
        rules = manifests["prometheusrule.yaml"]["spec"]["groups"][0]["rules"]
        (down,) = [r for r in rules if r["alert"] == "AgentRegistryExporterDown"]
        match = re.fullmatch(r'up\{job="([^"]+)"\} == 0', down["expr"])
        assert match, down["expr"]
        return match[1]

    def test_exporter_down_selects_the_job_the_pod_monitor_produces(
        self, manifests, deployment
    ) -> None:
        """PodMonitor: job = the value of the pod label named by jobLabel."""
        monitor = manifests["podmonitor.yaml"]["spec"]
        assert selects(monitor["selector"]["matchLabels"], pod_labels(deployment))
        assert pod_labels(deployment)[monitor["jobLabel"]] == self._down_job(manifests)

    def test_service_monitor_produces_the_same_job_from_the_service_only(self, manifests) -> None:
        """ServiceMonitor: job = the Service's jobLabel value; the peers Service is not scraped."""
        monitor = manifests["servicemonitor.yaml"]["spec"]
        service, peers = manifests["service.yaml"], manifests["peers-service.yaml"]
        assert selects(monitor["selector"]["matchLabels"], service["metadata"]["labels"])
        assert not selects(monitor["selector"]["matchLabels"], peers["metadata"]["labels"])
        assert service["metadata"]["labels"][monitor["jobLabel"]] == self._down_job(manifests)
        assert monitor["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]

    def test_prometheus_rule_groups_are_the_committed_rule_file(self, manifests) -> None:
        """spec.groups is exactly alerts/agent-registry.rules.yml."""
        rule_file = yaml.safe_load((ALERTS / "agent-registry.rules.yml").read_text())
        assert manifests["prometheusrule.yaml"]["spec"]["groups"] == rule_file["groups"]

    @pytest.mark.processes
    def test_prometheus_rule_passes_promtool(self, manifests, tmp_path: Path) -> None:
        """promtool accepts the rules as the operator hands them to Prometheus."""
        groups = manifests["prometheusrule.yaml"]["spec"]["groups"]
        (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))
        done = run(tool("promtool"), "check", "rules", tmp_path / "rules.yml")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"SUCCESS: {len(groups[0]['rules'])} rules found" in done.stdout

    def test_alertmanager_config_routes_like_the_example(self, manifests) -> None:
        """Matchers, grouping and timers equal the cleanup route of alertmanager.example.yml."""
        example = yaml.safe_load((ALERTS / "alertmanager.example.yml").read_text())
        (native,) = [r for r in example["route"]["routes"] if r["receiver"] != "default"]
        route = manifests["alertmanagerconfig.yaml"]["spec"]["route"]
        matchers = route["matchers"]
        assert [f'{m["name"]}{m.get("matchType", "=")}"{m["value"]}"' for m in matchers] == (
            native["matchers"]
        )
        snake = {re.sub(r"([A-Z])", r"_\1", k).lower(): v for k, v in route.items()}
        assert {k: v for k, v in snake.items() if k != "matchers"} == {
            k: v for k, v in native.items() if k != "matchers"
        }
        (receiver,) = [r for r in example["receivers"] if r["name"] == native["receiver"]]
        (hook,) = manifests["alertmanagerconfig.yaml"]["spec"]["receivers"][0]["webhookConfigs"]
        (native_hook,) = receiver["webhook_configs"]
        assert hook["sendResolved"] is native_hook["send_resolved"] is False
        assert hook["maxAlerts"] == native_hook["max_alerts"]
        assert hook["httpConfig"]["authorization"]["type"] == "Bearer"

    def test_webhook_posts_to_the_service_with_the_token_the_sidecar_reads(
        self, manifests, deployment
    ) -> None:
        """URL = the Service; one Secret key feeds Alertmanager and the sidecar's token file."""
        service = manifests["service.yaml"]
        (hook,) = manifests["alertmanagerconfig.yaml"]["spec"]["receivers"][0]["webhookConfigs"]
        meta = service["metadata"]
        assert hook["url"] == (
            f"http://{meta['name']}.{meta['namespace']}.svc:{PORT}/webhook/alertmanager"
        )
        assert service["spec"]["ports"][0]["port"] == PORT
        credentials = hook["httpConfig"]["authorization"]["credentials"]
        secret = manifests["secret.example.yaml"]
        assert credentials["name"] == secret["metadata"]["name"]
        assert credentials["key"] in secret["stringData"]
        sidecar = container(deployment, "agent-registry-exporter")
        (volume,) = [v for v in pod_spec(deployment)["volumes"] if "secret" in v]
        assert volume["secret"]["secretName"] == credentials["name"]
        (mount,) = [m for m in sidecar["volumeMounts"] if m["name"] == volume["name"]]
        assert "subPath" not in mount  # a subPath mount never sees a rotated Secret
        token_file = env(sidecar)["AGENT_REGISTRY_EXPORTER_WEBHOOK_TOKEN_FILE"]
        assert token_file == f"{mount['mountPath']}/{credentials['key']}"

    def test_instance_is_the_pod_ip_and_the_scraped_port(self, manifests, deployment) -> None:
        """`instance_host` = $(POD_IP) and the exporter listens on the scraped port: its
        `instance` is what Prometheus names this pod's target (tests/test_pod_ip.py: IPv6)."""
        sidecar = container(deployment, "agent-registry-exporter")
        names = [e["name"] for e in sidecar["env"]]
        host = names.index("AGENT_REGISTRY_EXPORTER_INSTANCE_HOST")
        assert names.index("POD_IP") < host  # $(VAR) expands only earlier variables
        assert env(sidecar)["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert env(sidecar)["AGENT_REGISTRY_EXPORTER_INSTANCE_HOST"] == "$(POD_IP)"
        assert "AGENT_REGISTRY_EXPORTER_INSTANCE" not in env(sidecar)
        (port,) = sidecar["ports"]
        assert port["containerPort"] == PORT == Settings().listen_port
        monitor = manifests["podmonitor.yaml"]["spec"]["podMetricsEndpoints"][0]
        assert monitor["port"] == port["name"]

    def test_peers_is_the_headless_service_of_the_same_pods(self, manifests, deployment) -> None:
        """`peers` names a headless Service selecting exactly the patched pods."""
        peers = manifests["peers-service.yaml"]
        sidecar = container(deployment, "agent-registry-exporter")
        assert env(sidecar)["AGENT_REGISTRY_EXPORTER_PEERS"] == peers["metadata"]["name"]
        assert peers["spec"]["clusterIP"] == "None"
        assert peers["spec"]["selector"] == manifests["service.yaml"]["spec"]["selector"]

    def test_every_selector_picks_the_patched_pods(self, manifests, deployment) -> None:
        """Services, monitors and the NetworkPolicy select by the label the patch adds."""
        labels = pod_labels(deployment)
        selectors = [
            manifests["service.yaml"]["spec"]["selector"],
            manifests["peers-service.yaml"]["spec"]["selector"],
            manifests["podmonitor.yaml"]["spec"]["selector"]["matchLabels"],
            manifests[NETWORK_POLICY]["spec"]["podSelector"]["matchLabels"],
        ]
        for selector in selectors:
            assert selector
            assert selects(selector, labels)
        original = yaml.safe_load(BACKEND_DEPLOYMENT.read_text())
        assert not selects(selectors[0], pod_labels(original))

    def test_only_prometheus_alertmanager_and_peers_reach_the_exporter_port(
        self, manifests
    ) -> None:
        """Port 8464 admits three sources; the backend's own port stays open to all."""
        spec = manifests[NETWORK_POLICY]["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        exporter, app = spec["ingress"]
        assert exporter["ports"] == [{"protocol": "TCP", "port": PORT}]
        sources = exporter["from"]
        assert [s["podSelector"]["matchLabels"] for s in sources[:2]] == [
            {"app.kubernetes.io/name": "prometheus"},
            {"app.kubernetes.io/name": "alertmanager"},
        ]
        for source in sources[:2]:
            assert source["namespaceSelector"]["matchLabels"] == {
                "kubernetes.io/metadata.name": "monitoring"
            }
        assert sources[2] == {"podSelector": spec["podSelector"]}  # peers: same namespace
        assert "from" not in app
        assert [p["port"] for p in app["ports"]] == [8080]

    def test_sidecar_runs_restricted_with_probes_and_resources(self, deployment) -> None:
        """Non-root, read-only root, no capabilities, RuntimeDefault seccomp, probes, limits."""
        sidecar = container(deployment, "agent-registry-exporter")
        context = sidecar["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] > 0
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert sidecar["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "exporter"}
        assert sidecar["startupProbe"]["httpGet"] == {"path": "/-/healthy", "port": "exporter"}
        assert set(sidecar["resources"]["requests"]) == {"cpu", "memory"}
        assert "memory" in sidecar["resources"]["limits"]

    def test_the_sidecar_has_no_readiness_probe(self, deployment) -> None:
        """A pod is Ready only when every container is: the exporter's readiness (no worker
        answering) must never take the backend out of its Services. Liveness and startup only."""
        sidecar = container(deployment, "agent-registry-exporter")
        assert "readinessProbe" not in sidecar
        assert {"livenessProbe", "startupProbe"} <= set(sidecar)
        assert "readinessProbe" not in container(deployment, "backend")  # the user's, untouched

    @pytest.mark.processes
    def test_the_sidecars_probes_answer_with_an_empty_socket_directory(
        self, deployment, tmp_path: Path
    ) -> None:
        """The real sidecar with the patch's settings and no worker yet: its startup and
        liveness probes answer 200 (the pod starts and stays); /-/ready is 503, which the
        pod would have inherited had the sidecar a readiness probe."""
        sidecar = container(deployment, "agent-registry-exporter")
        sockets = tmp_path / "sockets"
        sockets.mkdir()
        token = tmp_path / "token"
        token.write_text("s3cret\n")
        settings = {"SOCKET_DIR": str(sockets), "WEBHOOK_TOKEN_FILE": str(token)}
        with running_sidecar(sidecar, "127.0.0.1", settings) as url:
            for probe in ("startupProbe", "livenessProbe"):
                assert http_status(url + sidecar[probe]["httpGet"]["path"]) == 200, probe
            assert http_status(f"{url}/-/ready") == 503

    def test_backend_and_sidecar_share_the_socket_directory(self, deployment) -> None:
        """One emptyDir, mounted at the socket dir both containers are told about."""
        (volume,) = [v for v in pod_spec(deployment)["volumes"] if "emptyDir" in v]
        for name in ("backend", "agent-registry-exporter"):
            c = container(deployment, name)
            (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
            assert env(c)["AGENT_REGISTRY_EXPORTER_SOCKET_DIR"] == mount["mountPath"]
        assert mount["mountPath"] == str(Settings().socket_dir)  # the image's default too

    def test_the_sidecar_runs_in_the_backends_group_to_open_the_0660_sockets(
        self, manifests
    ) -> None:
        """Container-level runAsGroup = --backend-gid: the workers' sockets (mode 0660, their
        group) open to the sidecar without any pod-level fsGroup."""
        spec = manifests["deployment-patch.yaml"]["spec"]["template"]["spec"]
        (sidecar,) = [c for c in spec["containers"] if c["name"] == "agent-registry-exporter"]
        assert sidecar["securityContext"]["runAsGroup"] == KubernetesOptions().backend_gid
        assert "securityContext" not in spec  # the pod's own is never touched

    @pytest.mark.processes
    @pytest.mark.parametrize("sample", SAMPLE_DEPLOYMENTS, ids=lambda p: p.stem)
    def test_the_patch_changes_nothing_of_the_users_deployment(self, sample: Path) -> None:
        """Everything the user's Deployment says is still there, unchanged (its pod
        securityContext and fsGroup, its container's probes, ports, env, volumes): the patch
        only adds."""
        original = yaml.safe_load(sample.read_text())
        patched = patched_deployment(DEPLOY / "deployment-patch.yaml", sample)
        assert changed(original, patched) == []
        assert pod_spec(patched).get("securityContext") == pod_spec(original).get("securityContext")

    def test_the_comparison_sees_a_replaced_value(self) -> None:
        """`changed` is not blind: a replaced fsGroup and a lost container are named."""
        original = yaml.safe_load(FS_GROUP_DEPLOYMENT.read_text())
        patched = copy.deepcopy(original)
        pod_spec(patched)["securityContext"]["fsGroup"] = 65532
        pod_spec(patched)["containers"] = []
        assert changed(original, patched) == [
            ".spec.template.spec.securityContext.fsGroup: 2000 -> 65532",
            ".spec.template.spec.containers[backend] (gone)",
        ]

    def test_every_variable_the_patch_sets_is_a_setting(self, deployment) -> None:
        """No typo in a variable name: each AGENT_REGISTRY_EXPORTER_* names a Settings field."""
        prefix = "AGENT_REGISTRY_EXPORTER_"
        for name in ("backend", "agent-registry-exporter"):
            for var in env(container(deployment, name)):
                if var.startswith(prefix):
                    assert var.removeprefix(prefix).lower() in Settings.model_fields, var

    def test_render_is_deterministic_data(self) -> None:
        """render_kubernetes and the committed files agree object for object."""
        assert render_kubernetes(Thresholds()) == committed()


class TestDocs:
    PAGE = (ROOT / "docs" / "kubernetes.md").read_text()

    def _commands(self) -> list[str]:
        return block("docs/kubernetes.md", "console", "apply -k").commands()

    def test_the_three_commands_name_the_rendered_objects(self, manifests) -> None:
        """Secret, `apply -k` and patch: names, namespace and paths are the committed ones."""
        secret, apply, patch = self._commands()
        namespace = manifests["service.yaml"]["metadata"]["namespace"]
        (key,) = manifests["secret.example.yaml"]["stringData"]
        assert secret.startswith(
            f"kubectl -n {namespace} create secret generic "
            f"{manifests['secret.example.yaml']['metadata']['name']} --from-literal={key}="
        )
        assert apply == "kubectl apply -k deploy/kubernetes"
        target = manifests["deployment-patch.yaml"]["metadata"]["name"]
        assert patch == (
            f"kubectl -n {namespace} patch deployment {target} "
            "--patch-file deploy/kubernetes/deployment-patch.yaml"
        )

    @pytest.mark.processes
    @pytest.mark.parametrize(
        ("backend_container", "listed"),
        [
            ("backend", "backend agent-registry-exporter"),
            ("api", "api agent-registry-exporter backend"),
        ],
    )
    def test_the_documented_check_shows_a_wrong_container_name(
        self, manifests, tmp_path: Path, backend_container: str, listed: str
    ) -> None:
        """The docs' offline check, run as written on the sample Deployment: the right name
        lists the two containers shown; a wrong --backend-container shows up as a third, as
        the page says, and patched.yaml is the whole patched Deployment."""
        shown = block("docs/kubernetes.md", "console", "--dry-run=client")
        get, *checks = shown.commands()
        meta = manifests["deployment-patch.yaml"]["metadata"]
        assert get == (
            f"kubectl -n {meta['namespace']} get deployment {meta['name']} -o yaml > deploy.yaml"
        )
        (tmp_path / "deploy.yaml").write_text(BACKEND_DEPLOYMENT.read_text())
        files = render_kubernetes_files(
            Thresholds(), KubernetesOptions(backend_container=backend_container)
        )
        (tmp_path / "deploy" / "kubernetes").mkdir(parents=True)
        patch = tmp_path / "deploy" / "kubernetes" / "deployment-patch.yaml"
        patch.write_text(files["deployment-patch.yaml"])
        outputs = []
        for line in checks:
            command, _, target = line.partition(" > ")
            argv = shlex.split(command)
            assert argv[0] == "kubectl"
            done = kubectl(*argv[1:], cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            if target:
                (tmp_path / target).write_text(done.stdout)
            outputs.append(done.stdout)
        _, names, ports = outputs
        assert names == listed + "\n"
        if backend_container == "backend":
            assert shown_outputs(shown.text)[2:] == [names, ports]
        else:
            assert f"`{listed}`" in " ".join(self.PAGE.split())
        # The pod's ports but the exporter's are the --app-port the committed policy keeps open.
        (exporter, *app), listed_ports = [PORT, *KubernetesOptions().app_ports], ports.split()
        assert sorted(map(int, listed_ports)) == sorted([exporter, *app])
        patched = yaml.safe_load((tmp_path / "patched.yaml").read_text())
        assert patched == patched_deployment(patch)

    @pytest.mark.processes
    def test_kube_prometheus_stack_render_labels_what_its_prometheus_selects(
        self, tmp_path: Path, monkeypatch, capsys
    ) -> None:
        """The walk-through's render prints what it shows and labels the three objects the
        chart's Prometheus selects with the release its selector (as shown) asks for."""
        shown = block("docs/kubernetes.md", "console", "--monitor-label release=")
        render, selector = shown.commands()
        printed, selected = shown_outputs(shown.text)
        monkeypatch.chdir(tmp_path)
        assert main(shlex.split(render)[1:]) == 0
        assert capsys.readouterr().out == printed
        wanted = json.loads(selected)["matchLabels"]
        for name in ("podmonitor.yaml", "servicemonitor.yaml", "prometheusrule.yaml"):
            labels = yaml.safe_load((tmp_path / "deploy" / "kubernetes" / name).read_text())
            assert selects(wanted, labels["metadata"]["labels"]), name
        assert "spec.podMonitorSelector" in selector

    def test_the_namespace_selector_commands_select_the_backends_namespace(self, manifests) -> None:
        """The patch and the Helm values set the same selector, and it selects the namespace
        the AlertmanagerConfig is rendered in (by the label Kubernetes gives every namespace)."""
        shown = block("docs/kubernetes.md", "console", "alertmanagerConfigNamespaceSelector")
        get, patch = shown.commands()
        assert shown_outputs(shown.text)[0] == "\n"  # nil prints an empty line
        assert "get alertmanager" in get
        argv = shlex.split(patch)
        patched = json.loads(argv[argv.index("-p") + 1])
        values = yaml.safe_load(block("docs/kubernetes.md", "yaml", "alertmanagerSpec").text)
        selector = patched["spec"]["alertmanagerConfigNamespaceSelector"]
        assert values["alertmanager"]["alertmanagerSpec"] == {
            "alertmanagerConfigNamespaceSelector": selector
        }
        namespace = manifests["alertmanagerconfig.yaml"]["metadata"]["namespace"]
        assert selects(selector["matchLabels"], {"kubernetes.io/metadata.name": namespace})
        assert not selects(selector["matchLabels"], {"kubernetes.io/metadata.name": "other"})

    @pytest.mark.processes
    def test_the_operators_continue_sends_the_alert_on_to_later_routes(
        self, manifests, tmp_path: Path
    ) -> None:
        """The generated configuration shown routes like the committed AlertmanagerConfig
        (its matchers, the operator's namespace matcher, forced continue), and the real
        amtool routes the cleanup alerts as the page says: to the webhook and to a later
        route that matches, never to the default receiver."""
        config = block("docs/kubernetes.md", "yaml", "continue: true").text
        ours, *_ = yaml.safe_load(config)["route"]["routes"]
        am_config = manifests["alertmanagerconfig.yaml"]
        namespace, name = am_config["metadata"]["namespace"], am_config["metadata"]["name"]
        (receiver,) = am_config["spec"]["receivers"]
        assert ours["receiver"] == f"{namespace}/{name}/{receiver['name']}"
        assert ours["continue"] is True
        assert ours["matchers"] == [f'namespace="{namespace}"'] + [
            f'{m["name"]}{m.get("matchType", "=")}"{m["value"]}"'
            for m in am_config["spec"]["route"]["matchers"]
        ]
        (tmp_path / "generated.yml").write_text(config)
        shown = block("docs/kubernetes.md", "console", "amtool config routes test")
        amtool = shutil.which("amtool")
        assert amtool, "amtool comes with prometheus-alertmanager (make pytest-tools)"
        for command, output in zip(shown.commands(), shown_outputs(shown.text), strict=True):
            argv = shlex.split(command)
            assert argv[0] == "amtool"
            done = subprocess.run(
                [amtool, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip() == output.strip()
            assert "null" not in done.stdout.strip().split(",")  # the default receiver

    def test_every_file_is_explained(self) -> None:
        """The file table has one row per rendered file."""
        for name in FILES:
            assert f"| `{name}` |" in self.PAGE, name
