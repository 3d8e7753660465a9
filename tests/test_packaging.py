"""The package as a user's environment sees it: metadata, extras, groups, `python -m`."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import metadata

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from trove_classifiers import classifiers as KNOWN_CLASSIFIERS

from .conftest import console_script
from .doc_blocks import ROOT, block, page_text

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
RUNTIME = [Requirement(r) for r in PROJECT["dependencies"]]


class TestDependencies:
    def test_development_tools_are_a_dependency_group_not_a_published_extra(self) -> None:
        """pytest, ruff, mypy... sit in the PEP 735 `dev` group; the only extra is `dashboard`."""
        assert set(PROJECT["optional-dependencies"]) == {"dashboard"}
        dev = {Requirement(r).name for r in PYPROJECT["dependency-groups"]["dev"]}
        assert {"pytest", "ruff", "mypy", "uv"} <= dev
        assert "docs" in PYPROJECT["dependency-groups"]

    def test_the_installed_metadata_publishes_no_dev_extra(self) -> None:
        """What setuptools wrote for this install: extras and requirements, no tools."""
        meta = metadata("agent-registry-exporter")
        assert meta.get_all("Provides-Extra") == ["dashboard"]
        required = {Requirement(r).name for r in meta.get_all("Requires-Dist") or []}
        assert required == {r.name for r in RUNTIME} | {"grafana-foundation-sdk"}

    def test_every_runtime_dependency_has_a_lower_and_an_upper_bound(self) -> None:
        """`make test-ranges` installs each at its lower bound: each must name one, and an
        upper bound at the next major release keeps a breaking release out."""
        for req in RUNTIME:
            operators = {spec.operator for spec in req.specifier}
            assert operators == {">=", "<"}, req

    def test_make_installs_the_package_with_the_dev_and_docs_groups(self) -> None:
        """The venv recipe: a pip that knows `--group` (25.1), then both groups."""
        recipe = _make_recipe("$(STAMP)")
        assert "'pip>=25.1'" in recipe
        assert "-e '.[dashboard]' --group dev --group docs" in recipe


class TestMetadata:
    def test_classifiers_are_known_and_name_the_tested_python(self) -> None:
        """Every classifier is one PyPI accepts; the Python one is the one tested here."""
        found = PROJECT["classifiers"]
        assert set(found) <= KNOWN_CLASSIFIERS
        assert f"Programming Language :: Python :: {sys.version_info[0]}.{sys.version_info[1]}" in (
            found
        )
        assert "Typing :: Typed" in found
        # PEP 639: the licence is the SPDX expression, never a classifier as well.
        assert not [c for c in found if c.startswith("License ::")]

    def test_project_urls_and_keywords(self) -> None:
        """Documentation, source, issues and changelog; the changelog is the committed one."""
        urls = PROJECT["urls"]
        assert set(urls) == {"Documentation", "Source", "Issues", "Changelog"}
        assert urls["Issues"] == f"{urls['Source']}/issues"
        assert urls["Changelog"] == f"{urls['Source']}/blob/main/CHANGELOG.md"
        assert (ROOT / "CHANGELOG.md").exists()
        assert {"prometheus", "exporter", "alertmanager"} <= set(PROJECT["keywords"])

    def test_license_file_is_named_and_installed(self) -> None:
        """`license-files` names LICENSE; the metadata carries it (License-File)."""
        assert PROJECT["license-files"] == ["LICENSE"]
        meta = metadata("agent-registry-exporter")
        assert meta.get_all("License-File") == ["LICENSE"]
        assert meta["License-Expression"] == PROJECT["license"]


class TestRunAsModule:
    @pytest.mark.processes
    @pytest.mark.parametrize("args", [["--version"], ["rules"]], ids=["version", "rules"])
    def test_python_m_says_what_the_console_script_says(self, args: list[str]) -> None:
        """`python -m agent_registry_exporter ARGS` prints exactly what the command prints."""
        as_module = _run(sys.executable, "-m", "agent_registry_exporter", *args)
        as_script = _run(console_script(), *args)
        assert as_module == as_script
        assert as_module.strip()


class TestInstallPage:
    def test_install_commands_name_what_the_project_has(self) -> None:
        """docs/install.md's commands: the extra exists, `make dist` is the target that builds
        the two files listed, and the versions shown are this one. (The installs themselves
        run elsewhere: the wheel's in tests/test_dist.py, `.[dashboard]` in make test-ranges.)"""
        source_tree = block("docs/install.md", "console", "pip install '.[dashboard]'")
        typed = [c.partition(" #")[0].rstrip() for c in source_tree.commands()]
        assert typed == ["pip install .", "pip install '.[dashboard]'"]
        assert "dashboard" in PROJECT["optional-dependencies"]
        assert "uv build" in _make_recipe("dist")
        name = f"agent_registry_exporter-{PROJECT['version']}"
        wheel = block("docs/install.md", "console", "make dist")
        assert wheel.commands() == [
            "make dist",
            "ls dist/",
            f"pip install dist/{name}-py3-none-any.whl",
            "agent-registry-exporter --version",
            "python -m agent_registry_exporter --version",
        ]
        shown = [line for line in wheel.text.splitlines() if not line.startswith("$ ")]
        version = f"agent-registry-exporter {PROJECT['version']}"
        assert shown == [f"{name}-py3-none-any.whl", f"{name}.tar.gz", version, version]
        assert (ROOT / "src" / "agent_registry_exporter" / "__main__.py").exists()

    def test_ranges_table_is_pyprojects(self) -> None:
        """Each runtime dependency and the extra's SDK, with the range pyproject declares."""
        rows = dict(
            re.findall(r"^\| `([\w.-]+)`[^|]*\| `([^`]+)` \|", page_text("docs/install.md"), re.M)
        )
        extra = [Requirement(r) for r in PROJECT["optional-dependencies"]["dashboard"]]
        declared = {r.name: str(r.specifier) for r in [*RUNTIME, *extra]}
        assert {name: str(SpecifierSet(spec)) for name, spec in rows.items()} == declared
        assert f'`requires-python = "{PROJECT["requires-python"]}"`' in page_text("docs/install.md")


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _make_recipe(target: str) -> str:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M)
    assert match, target
    return match[1]
