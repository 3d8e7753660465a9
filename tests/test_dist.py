"""`make dist`: a wheel and an sdist; the sdist, installed offline into a fresh venv, passes.

The wheelhouse is collected once per run: the package's wheel built from the unpacked sdist and
its dependencies' wheels (runtime, the dashboard extra and the sdist's own `dev` group) at the
versions of this test run's environment (`pip freeze` as constraints), from pip's cache where it
has them. The fresh venv then installs from that directory alone (`--no-index`).
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent_registry_exporter import __version__

from .doc_blocks import ROOT

pytestmark = pytest.mark.processes

NAME = f"agent_registry_exporter-{__version__}"
PIP = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]


def _run(*args: str | Path, cwd: Path = ROOT, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `make dist` writes, here into a directory of the test's."""
    out = tmp_path_factory.mktemp("dist")
    _run("make", "--no-print-directory", "dist", f"DIST={out}")
    return out


@dataclass(frozen=True)
class Installed:
    source: Path  # the unpacked sdist
    venv: Path

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


@pytest.fixture(scope="module")
def readable_dir() -> Iterator[Path]:
    """A directory every user may read: some unit tests run the venv's code as another user
    (conftest.as_unprivileged), and pytest's own temporary directories are private."""
    base = Path(tempfile.mkdtemp(prefix="are-sdist-"))
    try:
        base.chmod(0o755)
        yield base
    finally:
        shutil.rmtree(base)


@pytest.fixture(scope="module")
def installed(dist: Path, readable_dir: Path) -> Installed:
    """The sdist unpacked, its wheelhouse collected, a fresh venv installed from it alone."""
    base = readable_dir
    with tarfile.open(dist / f"{NAME}.tar.gz") as sdist:
        sdist.extractall(base, filter="data")
    source = base / NAME
    pins = base / "pins.txt"
    pins.write_text(_run(*PIP, "freeze", "--exclude-editable"))
    wheels = base / "wheels"
    _run(
        *PIP, "wheel", "--wheel-dir", wheels, "--constraint", pins,
        f"{source}[dashboard]", "--group", f"{source / 'pyproject.toml'}:dev",
    )  # fmt: skip
    venv = base / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    _run(
        *PIP, "--python", venv / "bin" / "python", "install", "--no-index",
        "--find-links", wheels, f"agent-registry-exporter[dashboard]=={__version__}",
        "--group", f"{source / 'pyproject.toml'}:dev",
    )  # fmt: skip
    return Installed(source, venv)


class TestMakeDist:
    def test_one_wheel_and_one_sdist(self, dist: Path) -> None:
        """dist/ holds exactly the pure-Python wheel and the sdist of this version (and the
        .gitignore uv writes into a directory it makes)."""
        assert sorted(p.name for p in dist.iterdir() if p.name != ".gitignore") == [
            f"{NAME}-py3-none-any.whl",
            f"{NAME}.tar.gz",
        ]

    def test_sdist_carries_every_committed_file(self, dist: Path) -> None:
        """Tests with their conftest, helpers and data, docs, artefacts: all of `git ls-files`."""
        # Marked processes, so an unpacked sdist's unit lane never runs it: only a checkout.
        assert (ROOT / ".git").exists(), "a git checkout is what the sdist is compared with"
        committed = set(_run("git", "ls-files").split())
        with tarfile.open(dist / f"{NAME}.tar.gz") as sdist:
            carried = {m.name.removeprefix(f"{NAME}/") for m in sdist.getmembers() if m.isfile()}
        assert committed - carried == set()
        assert {"tests/conftest.py", "tests/doc_blocks.py", "tests/e2e/conftest.py"} <= carried
        assert not [name for name in carried if "__pycache__" in name]

    def test_wheel_holds_the_package_and_its_metadata_only(self, dist: Path) -> None:
        """The wheel: the package (with __main__ and py.typed), no tests; complete metadata."""
        with zipfile.ZipFile(dist / f"{NAME}-py3-none-any.whl") as wheel:
            names = wheel.namelist()
            meta = email.message_from_bytes(wheel.read(f"{NAME}.dist-info/METADATA"))
        assert "agent_registry_exporter/__main__.py" in names
        assert "agent_registry_exporter/py.typed" in names
        assert not [n for n in names if n.startswith("tests/")]
        assert f"{NAME}.dist-info/licenses/LICENSE" in names
        assert meta.get_all("Provides-Extra") == ["dashboard"]
        urls = {u.split(",")[0] for u in meta.get_all("Project-URL") or []}
        assert urls == {"Documentation", "Source", "Issues", "Changelog"}
        assert "Typing :: Typed" in (meta.get_all("Classifier") or [])
        assert meta["Keywords"]


class TestInstalledFromTheSdist:
    def test_the_package_comes_from_the_wheelhouse(self, installed: Installed) -> None:
        """The fresh venv imports its own copy, not this checkout's src/."""
        where = _run(
            installed.bin("python"), "-c",
            "import agent_registry_exporter as p; print(p.__file__)", cwd=installed.source,
        )  # fmt: skip
        assert where.startswith(str(installed.venv))

    def test_smoke_version_and_rules(self, installed: Installed) -> None:
        """The command answers its version and renders the rules committed in the sdist."""
        command = installed.bin("agent-registry-exporter")
        assert _run(command, "--version").strip() == f"agent-registry-exporter {__version__}"
        rules = (installed.source / "alerts" / "agent-registry.rules.yml").read_text()
        assert _run(command, "rules") == rules

    def test_unit_tests_pass_from_the_unpacked_sdist(self, installed: Installed) -> None:
        """The unit lane, run from the sdist against the installed package."""
        env = {**os.environ, "PATH": f"{installed.venv / 'bin'}:{os.environ['PATH']}"}
        env.pop("VIRTUAL_ENV", None)
        done = subprocess.run(
            [installed.bin("python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "-m", "not e2e and not processes"],
            capture_output=True, text=True, timeout=1200, cwd=installed.source, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
        assert " passed" in done.stdout.splitlines()[-1]
