"""The manual stays true: README.md and docs/*.md examples run, generated pages do not drift."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from agent_registry_exporter import RegistrySnapshot, Settings, SidecarSource
from agent_registry_exporter.artifacts.configuration import render_configuration_page
from agent_registry_exporter.sources import discover_workers
from agent_registry_exporter.testing import free_port, wait_until

from .doc_blocks import DOCS, PAGES, ROOT, block, blocks, page_text

CONFIGURATION = DOCS / "configuration.md"


class TestEmbedding:
    @pytest.mark.parametrize("page", ["README.md", "docs/embedding.md"])
    def test_embedding_example_runs(self, page: str) -> None:
        """The start_exporter block serves /metrics (on loopback and a free port here)."""
        example = block(page, "python", "asyncio.run(main())").text
        code = example.replace('"0.0.0.0"', '"127.0.0.1"').replace(
            "listen_port=8464", "listen_port=0"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert re.search(r"serving http://127\.0\.0\.1:\d+/metrics", done.stdout)

    def test_fastapi_lifespan_example_serves_metrics_beside_the_app(self, tmp_path) -> None:
        """The FastAPI block under uvicorn: the app's agents show on the exporter's /metrics,
        on the port its environment names; stopping uvicorn stops the exporter."""
        example = block("docs/embedding.md", "python", "start_exporter(registry, Settings()").text
        (tmp_path / "embedded_app.py").write_text(example)
        app_port, exporter_port = free_port(), free_port()
        env = {
            **os.environ,
            "AGENT_REGISTRY_EXPORTER_LISTEN_HOST": "127.0.0.1",
            "AGENT_REGISTRY_EXPORTER_LISTEN_PORT": str(exporter_port),
            "AGENT_REGISTRY_EXPORTER_WEBHOOK_TOKEN": "s3cret",
        }
        app = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "embedded_app:app",
             "--host", "127.0.0.1", "--port", str(app_port)],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            _wait_until_answers(f"http://127.0.0.1:{app_port}/docs", app)
            request = urllib.request.Request(
                f"http://127.0.0.1:{app_port}/users/alice/agents/agent-1", b""
            )
            with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
                assert json.load(resp) == {"agents": 1}
            metrics = _get(f"http://127.0.0.1:{exporter_port}/metrics")
            assert 'agent_registry_user_agents{user_id="alice"} 1' in metrics
        finally:
            app.terminate()
            _, stderr = app.communicate(timeout=30)
        # uvicorn re-raises SIGTERM after a clean shutdown: the log says the lifespan's stop() ran.
        assert "Application shutdown complete" in stderr, stderr
        assert '"message": "exporter stopped"' in stderr, stderr


class TestSidecar:
    def test_fastapi_example_serves_one_socket_per_worker(self, socket_dir, tmp_path) -> None:
        """The FastAPI block under `uvicorn --workers 2`: two sockets, each answering for its
        worker's own registry, removed when uvicorn stops."""
        example = block("docs/sidecar.md", "python", "serve_registry").text
        (tmp_path / "readme_app.py").write_text(example)
        port = free_port()
        app = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "readme_app:app", "--workers", "2",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "AGENT_REGISTRY_EXPORTER_SOCKET_DIR": str(socket_dir)},
        )  # fmt: skip
        try:

            def both_served() -> dict[str, Path]:
                assert app.poll() is None, "uvicorn exited"
                found = discover_workers(socket_dir)
                return found if len(found) >= 2 else {}

            workers = wait_until(both_served, timeout=60, message="both workers serve sockets")
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/users/alice/agents/agent-1", b""
            )
            with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
                assert json.load(resp) == {"agents": 1}
            snapshots = asyncio.run(_gather(socket_dir))
            assert sorted(s.worker for s in snapshots) == sorted(workers)
            assert sorted(len(s.sessions) for s in snapshots) == [0, 1]
        finally:
            app.terminate()
            app.wait(30)
        assert discover_workers(socket_dir) == {}


class TestConfiguration:
    def test_every_setting_is_documented(self) -> None:
        """Each Settings field has its row in configuration.md, with its environment variable."""
        page = CONFIGURATION.read_text()
        for name in Settings.model_fields:
            assert f"| `{name}` | `AGENT_REGISTRY_EXPORTER_{name.upper()}` |" in page, name

    def test_configuration_page_is_what_the_code_renders(self) -> None:
        """configuration.md's tables are regenerated from Settings and compared: no drift."""
        page = CONFIGURATION.read_text()
        assert render_configuration_page(page) == page, "run `make rules`"

    def test_a_setting_without_description_cannot_be_rendered(self, monkeypatch) -> None:
        """A new Field with no description fails the render (and so the drift test)."""
        field = Settings.model_fields["listen_port"]
        monkeypatch.setattr(field, "description", None)
        with pytest.raises(ValueError, match="setting listen_port has no description"):
            render_configuration_page(CONFIGURATION.read_text())


class TestRunbooks:
    RULES = yaml.safe_load((ROOT / "alerts" / "agent-registry.rules.yml").read_text())

    def test_every_alert_has_its_runbook_section(self) -> None:
        """One `## <alert>` heading (anchor: the name in lower case) per alert of the rules, with
        what it means, how to check and how to fix."""
        sections = re.split(r"^## ", page_text("docs/runbooks.md"), flags=re.M)[1:]
        by_name = {section.split("\n", 1)[0]: section for section in sections}
        alerts = [rule["alert"] for group in self.RULES["groups"] for rule in group["rules"]]
        assert sorted(by_name) == sorted(alerts)
        for name, section in by_name.items():
            for part in ("**What it means.**", "**How to check.**", "**How to fix.**"):
                assert part in section, (name, part)


class TestSite:
    def test_every_page_is_in_the_nav(self) -> None:
        """mkdocs.yml lists each docs/*.md once (strict builds warn on an omitted page too)."""
        nav = (ROOT / "mkdocs.yml").read_text()
        listed = re.findall(r":\s+([\w-]+\.md)$", nav, re.M)
        assert sorted(listed) == sorted(page.removeprefix("docs/") for page in PAGES[1:])

    def test_readme_is_short_and_links_every_page(self) -> None:
        """The README stays at most 250 lines and links each page of the manual."""
        readme = page_text("README.md")
        assert len(readme.splitlines()) <= 250
        for page in PAGES[1:]:
            assert f"]({page}" in readme, page

    def test_every_python_block_compiles(self) -> None:
        """No Python example in README or docs is a syntax error (each also runs below)."""
        for b in blocks():
            if b.lang == "python":
                compile(b.text, f"{b.page}:{b.line}", "exec")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310
        return str(resp.read().decode())


def _wait_until_answers(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, "the process exited"
        try:
            _get(url)
            return
        except OSError:
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.1)


async def _gather(socket_dir: Path) -> tuple[RegistrySnapshot, ...]:
    source = SidecarSource(socket_dir)
    try:
        return (await source.snapshot()).workers or ()
    finally:
        await source.close()
