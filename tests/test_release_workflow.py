"""The release workflow (.github/workflows/release.yml): valid against GitHub's workflow schema
(what `make lint` checks, offline), and doing what a release needs: on a tag, test, build the
sdist and the wheel, publish them by trusted publishing, push the image, print its digest, and
make an SBOM."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from check_jsonschema.cli.main_command import main as check_jsonschema
from click.testing import CliRunner

ROOT = Path(__file__).parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
RELEASE = WORKFLOWS / "release.yml"
SCHEMA = ["--builtin-schema", "vendor.github-workflows"]


def check(*paths: Path) -> tuple[int, str]:
    """check-jsonschema as `make lint` runs it, in this process."""
    result = CliRunner().invoke(check_jsonschema, [*SCHEMA, *map(str, paths)])
    return result.exit_code, result.output


def release() -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load(RELEASE.read_text())
    return data


def steps(job: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = release()["jobs"][job]["steps"]
    return found


def uses(job: str, action: str) -> dict[str, Any]:
    """The one step of `job` that uses `action` (any version)."""
    matching = [s for s in steps(job) if s.get("uses", "").split("@")[0] == action]
    assert len(matching) == 1, f"{job}: {len(matching)} steps use {action}"
    return matching[0]


def runs(job: str) -> str:
    return "\n".join(s.get("run", "") for s in steps(job))


def make_targets_run() -> set[str]:
    return {
        word
        for job in release()["jobs"]
        for line in runs(job).splitlines()
        if line.startswith("make ")
        for word in line.split()[1:]
    }


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+):(?!=)", (ROOT / "Makefile").read_text(), re.M))


class TestSchema:
    def test_every_workflow_passes_the_github_workflow_schema(self) -> None:
        """What `make lint` runs passes on the committed files."""
        assert sorted(WORKFLOWS.glob("*.yml")) == [RELEASE]
        assert check(RELEASE) == (0, "ok -- validation done\n")

    def test_make_lint_checks_the_workflows(self) -> None:
        makefile = (ROOT / "Makefile").read_text()
        lint = re.search(r"^lint:[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M)
        assert lint
        assert (
            "$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows "
            ".github/workflows/*.yml" in lint[1]
        )

    @pytest.mark.parametrize(
        ("broken", "named"),
        [
            pytest.param(("runs-on: ubuntu-latest", "run-on: ubuntu-latest"), "run-on", id="key"),
            pytest.param(("id-token: write", "id-token: writ"), "writ", id="permission"),
            pytest.param(('tags: ["v*"]', "tags: v*\n    bogus: 1"), "bogus", id="trigger"),
        ],
    )
    def test_a_broken_workflow_fails_the_check(
        self, tmp_path: Path, broken: tuple[str, str], named: str
    ) -> None:
        """A misspelt key, an unknown permission level or a stray trigger key fails, and the
        output names it."""
        old, new = broken
        text = RELEASE.read_text()
        assert old in text
        copy = tmp_path / "release.yml"
        copy.write_text(text.replace(old, new, 1))
        code, output = check(copy)
        assert code == 1, output
        assert "Schema validation errors" in output
        assert named in output


class TestRelease:
    def test_it_runs_on_version_tags_only(self) -> None:
        on = release()[True]  # YAML 1.1 reads the key `on` as true
        assert on == {"push": {"tags": ["v*"]}}

    def test_the_tag_must_be_pyprojects_version(self) -> None:
        assert 'test "$GITHUB_REF_NAME" = "v$version"' in runs("test")
        assert '["project"]["version"]' in runs("test")

    def test_it_tests_then_builds_the_sdist_and_the_wheel(self) -> None:
        """`make test` (with its tools) first; the distributions come from `make dist`."""
        assert runs("test").split("\n")[-2:] == ["make pytest-tools", "make test"]
        assert "make dist" in runs("dist")
        assert release()["jobs"]["dist"]["needs"] == "test"
        upload = uses("dist", "actions/upload-artifact")["with"]
        assert upload["path"] == "dist/"
        assert upload["if-no-files-found"] == "error"

    def test_pypi_by_trusted_publishing_only(self) -> None:
        """The publish job alone may mint an OIDC token, in its environment, and passes no
        password or token to the action."""
        jobs = release()["jobs"]
        assert release()["permissions"] == {"contents": "read"}
        publish = jobs["pypi"]
        assert publish["needs"] == "dist"
        assert publish["permissions"] == {"id-token": "write"}
        assert publish["environment"]["name"] == "pypi"
        step = uses("pypi", "pypa/gh-action-pypi-publish")
        assert "with" not in step
        minting = [name for name, job in jobs.items() if "id-token" in job.get("permissions", {})]
        assert minting == ["pypi"]

    def test_the_image_is_pushed_its_digest_printed_and_an_sbom_made(self) -> None:
        build = uses("image", "docker/build-push-action")
        assert build["id"] == "build"
        assert build["with"]["push"] is True
        assert build["with"]["sbom"] is True
        assert "VERSION=${{ steps.meta.outputs.version }}" in build["with"]["build-args"]
        digest = "${{ steps.build.outputs.digest }}"
        printing = [s for s in steps("image") if digest in str(s.get("env", {}))]
        assert len(printing) == 1
        assert 'echo "pushed $IMAGE"' in printing[0]["run"]
        sbom = uses("image", "anchore/sbom-action")["with"]
        assert sbom["image"].endswith(f"@{digest}")
        assert release()["jobs"]["image"]["permissions"]["packages"] == "write"

    def test_every_make_target_it_runs_exists(self) -> None:
        """`make pytest-tools`, `make test` and `make dist`, each a Makefile target."""
        assert make_targets_run() == {"pytest-tools", "test", "dist"}
        assert make_targets_run() <= makefile_targets(), make_targets_run() - makefile_targets()
