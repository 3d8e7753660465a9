"""requirements.lock: the image's runtime dependencies, pinned with hashes, made by `make lock`.

The lock resolves pyproject's runtime dependencies for the image's Python on Linux as PyPI stood
at a fixed date (`--exclude-newer`), so resolving again gives the same pins: the drift test does
that and compares. The Dockerfile installs it with `--require-hashes` (tests/test_container.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .dockerfile import stages
from .lockfile import LOCK, ROOT, command, pins

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
UV = Path(sys.executable).parent / "uv"  # the dev tools' uv, as `make lock` runs it


def runtime_requirements() -> list[Requirement]:
    return [Requirement(d) for d in PYPROJECT["project"]["dependencies"]]


def make_lock_recipe() -> list[str]:
    """The arguments of the Makefile's `lock` recipe, its variables expanded."""
    makefile = re.sub(r"\\\n", " ", (ROOT / "Makefile").read_text())
    variables = dict(re.findall(r"^(\w+) := (.*)$", makefile, flags=re.M))
    (recipe,) = re.findall(r"^lock:.*\n\t(.*)$", makefile, flags=re.M)
    recipe = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m[1], m[0]), recipe)
    program, *arguments = recipe.split()
    assert program.endswith("/bin/uv")  # the dev tools' uv
    return ["uv", *arguments]


class TestLockFile:
    def test_every_runtime_dependency_is_pinned_within_its_range(self) -> None:
        """Each of pyproject's runtime dependencies has a pin its range allows."""
        locked = pins(LOCK.read_text())
        for requirement in runtime_requirements():
            pin = locked.get(canonicalize_name(requirement.name))
            assert pin, f"{requirement.name} is not in requirements.lock: run `make lock`"
            assert requirement.specifier.contains(Version(pin.version), prereleases=True), (
                f"{requirement.name}=={pin.version} is outside {requirement}: run `make lock`"
            )

    def test_every_pin_carries_sha256_hashes(self) -> None:
        """pip's --require-hashes needs a hash on every line: the lock gives each file's."""
        locked = pins(LOCK.read_text())
        assert len(locked) > len(runtime_requirements())  # their dependencies too
        for name, pin in locked.items():
            assert pin.hashes, name
            assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), name

    def test_no_development_package_is_locked(self) -> None:
        """The image gets the runtime dependencies only: no dev tool, no dashboard SDK."""
        locked = pins(LOCK.read_text())
        extras = PYPROJECT["project"]["optional-dependencies"].values()
        optional = {canonicalize_name(Requirement(d).name) for group in extras for d in group}
        assert not optional & locked.keys()

    def test_made_by_make_lock_for_the_images_python_on_linux(self) -> None:
        """The header's command is the Makefile's `lock` recipe, for the Dockerfile's Python."""
        made_by = command(LOCK.read_text())
        assert made_by == make_lock_recipe()
        assert made_by[:4] == ["uv", "pip", "compile", "pyproject.toml"]
        image_python = stages()[-1].base.removeprefix("python:").split("-")[0]
        options = dict(zip(made_by[4:], [*made_by[5:], ""], strict=True))
        assert options["--python-version"] == image_python
        assert options["--python-platform"] == "linux"
        assert "--generate-hashes" in options
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", options["--exclude-newer"])
        assert options["-o"] == "requirements.lock"

    @pytest.mark.processes
    def test_resolving_again_gives_the_committed_lock(self, tmp_path: Path) -> None:
        """The drift check: the same command (uv, PyPI as of the lock's date) pins the same
        versions with the same hashes; a change to pyproject's dependencies shows here."""
        made_by = command(LOCK.read_text())
        output = tmp_path / "requirements.lock"
        arguments = [str(output) if a == "requirements.lock" else a for a in made_by[1:]]
        done = subprocess.run(
            [str(UV), *arguments, "--quiet"],
            capture_output=True, text=True, timeout=300, cwd=ROOT,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert pins(output.read_text()) == pins(LOCK.read_text()), "run `make lock`"
