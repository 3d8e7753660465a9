"""checkov on what we ship: every failed check is fixed or documented, and nothing goes unread.

Scanned: the Dockerfile; the Deployment patch applied (`kubectl patch --local`) to a hardened
backend Deployment, which alone passes every check, so what the patched one fails is the
patch's; the rest of deploy/kubernetes as `kubectl kustomize` renders it, and file by file.
checkov comes from its own environment (`make scan-tools`: .venv-scan/, pinned in the
Makefile), runs offline, and reads no configuration but the one a test hands it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_registry_exporter.cli import main

from .manifests import DATA, DEPLOY, HARDENED_DEPLOYMENT, ROOT, kubectl, load_kube

CHECKOV = ROOT / ".venv-scan" / "bin" / "checkov"
CONFIG = ROOT / ".checkov.yaml"
DOCS = ROOT / "docs" / "scanners.md"
BACKEND_POLICY = DATA / "kubernetes" / "backend-networkpolicy.yaml"
DIGEST_IMAGE = "registry.example/agent-registry-exporter@sha256:" + "0123456789abcdef" * 4


def documented(section: str) -> set[str]:
    """The check ids in the table under the docs page's `## <section>` heading."""
    text = DOCS.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(CKV\w+)` \|", body, flags=re.M))


def skipped_by_config() -> set[str]:
    return set(yaml.safe_load(CONFIG.read_text())["skip-check"])


@dataclass(frozen=True)
class Scan:
    """One checkov run: the failed checks by scanned file name, and what it read."""

    failed: dict[str, set[str]]
    resources: int
    parsing_errors: int

    def failed_in(self, *names: str) -> set[str]:
        return set().union(*(self.failed.get(n, set()) for n in names))


def checkov(files: list[Path], cwd: Path, *options: str) -> Scan:
    """checkov on `files` (Dockerfile and Kubernetes frameworks), offline; its JSON report."""
    assert CHECKOV.exists(), "checkov comes from its own environment: run `make scan-tools`"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(cwd),  # no ~/.checkov.yaml of the machine's user
        "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",  # no call to PyPI for a newer version
    }
    arguments = [f"--file={f}" for f in files]
    done = subprocess.run(
        [str(CHECKOV), *arguments, "--framework", "dockerfile", "kubernetes", *options,
         "--skip-download", "--output", "json", "--quiet"],
        capture_output=True, text=True, timeout=600, cwd=cwd, env=env,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr  # 1: some check failed
    reports = json.loads(done.stdout)
    failed: dict[str, set[str]] = {}
    resources = errors = 0
    for report in reports if isinstance(reports, list) else [reports]:
        summary = report.get("summary", report)  # a run that found nothing gives it alone
        resources += summary["resource_count"]
        errors += summary["parsing_errors"]
        for check in report.get("results", {}).get("failed_checks", []):
            failed.setdefault(Path(check["file_path"]).name, set()).add(check["check_id"])
    return Scan(failed, resources, errors)


def objects_in(files: list[Path]) -> list[Any]:
    """The Kubernetes objects of `files`, as kubectl reads them."""
    return [d for f in files if f.name != "Dockerfile" for d in load_kube(f.read_text()) if d]


def read_by_checkov(files: list[Path]) -> dict[str, int | None]:
    """File -> the objects checkov's Kubernetes parser takes from it (None: the file dropped)."""
    script = (
        "import json, sys\n"
        "from checkov.kubernetes.parser.parser import parse\n"
        "read = {f: parse(f) for f in sys.argv[1:]}\n"
        "print(json.dumps({f: None if r is None else len(r[0]) for f, r in read.items()}))\n"
    )
    python = CHECKOV.parent / "python"
    done = subprocess.run(
        [str(python), "-c", script, *map(str, files)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, int | None] = json.loads(done.stdout)
    return result


def patched(patch: Path, out: Path) -> Path:
    done = kubectl(
        "patch", "--local", "-f", HARDENED_DEPLOYMENT, "--type", "strategic", "--patch-file", patch,
        "-o", "yaml",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out.write_text(done.stdout)
    return out


def other_manifests() -> list[Path]:
    """deploy/kubernetes' objects outside the kustomization (the patch is scanned applied)."""
    files = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        kinds = {d.get("kind") for d in load_kube(path.read_text()) if d}
        if path.name != "deployment-patch.yaml" and not kinds & {"Kustomization", "Component"}:
            files.append(path)
    return files


@dataclass(frozen=True)
class Inputs:
    directory: Path
    sample: list[Path]  # the hardened Deployment alone, with its team's NetworkPolicy
    shipped: list[Path]  # the Dockerfile, the patched sample, kustomize's output, the others
    digest: Path  # the patched sample, the patch rendered with the image named by digest

    @property
    def everything(self) -> list[Path]:
        return [*self.sample, *self.shipped, self.digest]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    directory = tmp_path_factory.mktemp("scan")
    sample = directory / "sample"
    sample.mkdir()
    shutil.copy2(HARDENED_DEPLOYMENT, sample / "deployment.yaml")
    shutil.copy2(BACKEND_POLICY, sample / "networkpolicy.yaml")
    built = kubectl("kustomize", DEPLOY)
    assert built.returncode == 0, built.stderr
    (directory / "kustomized.yaml").write_text(built.stdout)
    rendered = directory / "digest"
    assert main(["kubernetes", "--output-dir", str(rendered), "--image", DIGEST_IMAGE]) == 0
    return Inputs(
        directory,
        [sample / "deployment.yaml", sample / "networkpolicy.yaml"],
        [
            ROOT / "Dockerfile",
            patched(DEPLOY / "deployment-patch.yaml", directory / "patched.yaml"),
            directory / "kustomized.yaml",
            *other_manifests(),
        ],
        patched(rendered / "deployment-patch.yaml", directory / "patched-digest.yaml"),
    )


@pytest.fixture(scope="module")
def scan(inputs: Inputs) -> Scan:
    """One run over every input, without any skip."""
    return checkov(inputs.everything, inputs.directory)


class TestDocumentedChecks:
    def test_the_skip_file_skips_exactly_the_checks_the_docs_say_do_not_apply(self) -> None:
        """.checkov.yaml and docs/scanners.md name the same checks, each with its reason."""
        assert skipped_by_config() == documented("Skipped: do not apply")
        for check in skipped_by_config():
            assert re.search(rf"#[^\n]*\n(?:\s*#[^\n]*\n)*\s*- {check}\n", CONFIG.read_text())

    def test_the_skip_file_works_offline(self) -> None:
        """No policy download, and the frameworks scanned here."""
        config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
        assert config["skip-download"] is True
        assert set(config["framework"]) == {"dockerfile", "kubernetes"}

    def test_the_cpu_limit_reason_quotes_the_patchs_resources(self) -> None:
        """Why no CPU limit is given with the sidecar's real request and memory limit."""
        patch = yaml.safe_load((DEPLOY / "deployment-patch.yaml").read_text())
        (sidecar,) = [
            c
            for c in patch["spec"]["template"]["spec"]["containers"]
            if c["name"] == "agent-registry-exporter"
        ]
        resources = sidecar["resources"]
        assert "cpu" not in resources["limits"]
        for text in (DOCS.read_text(), CONFIG.read_text()):
            assert f"the {resources['requests']['cpu']} request" in text
            assert f"({resources['limits']['memory']})" in text

    def test_the_docs_name_the_pinned_checkov(self) -> None:
        """The version the page speaks of is the one `make scan-tools` installs."""
        (version,) = re.findall(
            r"^CHECKOV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M
        )
        assert f"checkov](https://www.checkov.io) {version} " in DOCS.read_text()


@pytest.mark.processes
class TestCheckov:
    def test_checkov_reads_every_object_it_is_given(self, inputs: Inputs) -> None:
        """checkov drops a file it cannot parse in silence (no finding, no parsing error: so it
        did kustomize's unquoted `matchType: =`): its own parser must read every object of
        every file handed to it."""
        manifests = [f for f in inputs.everything if f.name != "Dockerfile"]
        assert read_by_checkov(manifests) == {str(f): len(objects_in([f])) for f in manifests}

    def test_the_hardened_sample_alone_passes_every_check(self, scan: Scan) -> None:
        """So whatever the patched Deployment fails, the patch brought."""
        assert scan.failed_in("deployment.yaml", "networkpolicy.yaml") == set()

    def test_every_failed_check_is_documented(self, scan: Scan, inputs: Inputs) -> None:
        """What the shipped files fail is exactly the documented list: nothing unexplained,
        no stale entry."""
        names = [f.name for f in inputs.shipped]
        expected = documented("Skipped: do not apply") | documented(
            "Passes once the image is named by digest"
        )
        assert scan.failed_in(*names) == expected

    def test_an_image_named_by_digest_passes_the_digest_checks(self, scan: Scan) -> None:
        """The patch rendered with `--image name@sha256:...` fails only the skipped checks."""
        assert scan.failed_in("patched-digest.yaml") <= skipped_by_config()
        assert (
            scan.failed_in("patched-digest.yaml")
            & documented("Passes once the image is named by digest")
            == set()
        )

    def test_with_the_shipped_skip_file_nothing_fails(self, inputs: Inputs) -> None:
        """checkov run where .checkov.yaml lies (the repository's root) reads it: every check
        passes on the Dockerfile, the digest-rendered patch and the rest of deploy/kubernetes."""
        files = [ROOT / "Dockerfile", inputs.sample[1], inputs.digest, *inputs.shipped[2:]]
        work = inputs.directory / "root"
        work.mkdir()
        shutil.copy2(CONFIG, work / ".checkov.yaml")
        assert checkov(files, work).failed == {}
