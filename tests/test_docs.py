"""The manual stays true: README.md and docs/*.md examples run, generated pages do not drift."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from agent_registry_exporter import RegistrySnapshot, Settings, SidecarSource
from agent_registry_exporter.artifacts.configuration import render_configuration_page
from agent_registry_exporter.sources import discover_workers
from agent_registry_exporter.testing import PortInUse, free_port, start_on_free_port, wait_until

from .doc_blocks import DOCS, PAGES, ROOT, block, blocks, page_text
from .doc_sessions import run_block, session, steps

CONFIGURATION = DOCS / "configuration.md"


class TestEmbedding:
    @pytest.mark.processes
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

    @pytest.mark.processes
    def test_fastapi_lifespan_example_serves_metrics_beside_the_app(self, tmp_path) -> None:
        """The FastAPI block under uvicorn: the app's agents show on the exporter's /metrics,
        on the port its environment names; stopping uvicorn stops the exporter."""
        example = block("docs/embedding.md", "python", "start_exporter(registry, Settings()").text
        (tmp_path / "embedded_app.py").write_text(example)

        def uvicorn_on(app_port: int) -> tuple[subprocess.Popen[str], int, int]:
            exporter_port = free_port()  # taken meanwhile: the app exits, both are chosen anew
            env = {
                **os.environ,
                "AGENT_REGISTRY_EXPORTER_LISTEN_HOST": "127.0.0.1",
                "AGENT_REGISTRY_EXPORTER_LISTEN_PORT": str(exporter_port),
                "AGENT_REGISTRY_EXPORTER_WEBHOOK_TOKEN": "s3cret",
            }
            app = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "embedded_app:app",
                 "--host", "127.0.0.1", "--port", str(app_port)],
                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                env=env,
            )  # fmt: skip
            _wait_until_answers(f"http://127.0.0.1:{app_port}/docs", app)
            return app, app_port, exporter_port

        app, app_port, exporter_port = start_on_free_port(uvicorn_on)
        try:
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
    @pytest.mark.processes
    def test_fastapi_example_serves_one_socket_per_worker(self, socket_dir, tmp_path) -> None:
        """The FastAPI block under `uvicorn --workers 2`: two sockets, each answering for its
        worker's own registry, removed when uvicorn stops."""
        example = block("docs/sidecar.md", "python", "serve_registry").text
        (tmp_path / "readme_app.py").write_text(example)

        def uvicorn_on(port: int) -> tuple[subprocess.Popen[str], int, dict[str, Path]]:
            app = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "readme_app:app", "--workers", "2",
                 "--host", "127.0.0.1", "--port", str(port)],
                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                env={**os.environ, "AGENT_REGISTRY_EXPORTER_SOCKET_DIR": str(socket_dir)},
            )  # fmt: skip

            def both_served() -> dict[str, Path]:
                _exited_for_its_port(app)
                found = discover_workers(socket_dir)
                return found if len(found) >= 2 else {}

            try:
                return app, port, wait_until(both_served, timeout=60, message="both serve")
            except BaseException:
                if app.poll() is None:
                    app.kill()
                    app.communicate(timeout=30)
                raise

        app, port, workers = start_on_free_port(uvicorn_on)
        try:
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
            app.communicate(timeout=30)
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


def _exited_for_its_port(process: subprocess.Popen[str]) -> None:
    """Nothing while `process` runs; PortInUse when it exited because its port was taken
    (then `start_on_free_port` tries another), a failure naming its stderr otherwise."""
    if process.poll() is None:
        return
    _, stderr = process.communicate(timeout=30)
    if "address already in use" in stderr.lower():
        raise PortInUse(f"{process.args!r}")
    raise AssertionError(f"the process exited with {process.returncode}:\n{stderr}")


def _wait_until_answers(url: str, process: subprocess.Popen[str]) -> None:
    def answers() -> bool:
        _exited_for_its_port(process)
        try:
            _get(url)
            return True
        except OSError:
            return False

    try:
        wait_until(answers, timeout=60, message=f"{url} answers")
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)
        raise


async def _gather(socket_dir: Path) -> tuple[RegistrySnapshot, ...]:
    source = SidecarSource(socket_dir)
    try:
        return (await source.snapshot()).workers or ()
    finally:
        await source.close()


class TestCommands:
    @pytest.mark.processes
    def test_rules_commands_render_rules_promtool_accepts(self, tmp_path) -> None:
        """The Alerts page's `rules` commands write rule files with the thresholds they name
        (flags and the environment alike); `make rules` is a Makefile target."""
        shown = block("docs/alerts.md", "console", "rules --agents-per-user 80")
        with session(tmp_path) as running:
            flags, environment, make = shown.commands()
            assert running.run(flags) == ""
            rules = (tmp_path / "my-rules.yml").read_text()
            assert "agent_registry_user_agents > 80" in rules
            assert "> 43200" in rules
            assert 'up{job="agents"} == 0' in rules
            assert _promtool("check", "rules", tmp_path / "my-rules.yml").returncode == 0
            assert running.run(environment) == ""
            assert "agent_registry_agents > 2000" in (tmp_path / "my-rules.yml").read_text()
        assert make.split("#")[0].split() == ["make", "rules"]
        assert "rules" in _make_targets()

    @pytest.mark.processes
    def test_kubernetes_render_command_prints_what_it_wrote(self, tmp_path) -> None:
        """`agent-registry-exporter kubernetes --namespace shop ...` prints the line shown and
        writes manifests for that namespace and Deployment. (`docker build` is not run: no
        Docker engine here; the SOURCE build argument it passes is the Dockerfile's.)"""
        shown = block("docs/kubernetes.md", "console", "kubernetes --namespace shop")
        docker, render = steps(shown)
        with session(tmp_path) as running:
            assert running.run(render.command) == render.shown
        patch = (tmp_path / "deploy" / "kubernetes" / "deployment-patch.yaml").read_text()
        assert "namespace: shop" in patch
        assert "name: api" in patch
        assert docker.command.startswith("docker build --build-arg SOURCE=")
        assert re.search(r"^ARG SOURCE=", (ROOT / "Dockerfile").read_text(), re.M)

    @pytest.mark.processes
    def test_user_id_label_session_prints_the_labels_shown(self, tmp_path) -> None:
        """The Security page's key file and `user-id-label` print exactly the hashes shown."""
        with session(tmp_path) as running:
            run_block(running, block("docs/security.md", "console", "user-id-label"), [])

    def test_make_commands_name_targets_that_do_what_they_say(self) -> None:
        """Every `make X` shown is a Makefile target; `make test` (which runs this test, so it
        is not run here) builds the docs, lints, type-checks, runs pytest and the unit tests at
        both ends of the dependency ranges, and `.ci/run`
        calls it; `make demo` runs the demo that tests/e2e/test_demo.py runs."""
        targets = _make_targets()
        shown = [
            command
            for b in blocks()
            if b.lang == "console"
            for command in b.commands()
            if command.startswith("make ")
        ]
        assert shown
        for command in shown:
            assert command.split()[1] in targets, command
        assert set(targets["test"]) == {"docs", "lint", "typecheck", "pytest", "test-ranges"}
        assert "make test" in (ROOT / ".ci" / "run").read_text()
        assert "agent-registry-exporter demo" in _make_recipe("demo")

    @pytest.mark.processes
    def test_benchmark_commands_name_real_scripts_and_flags(self) -> None:
        """Each benchmark shown exists and takes the flags shown (`--help`). The benchmarks
        themselves are not run by the tests: minutes of load at the sizes shown, and time is
        theirs to measure, not the tests'."""
        commands = [
            command
            for page in ("docs/performance.md", "docs/sidecar-memory.md")
            for b in blocks(page)
            if b.lang == "console"
            for command in b.commands()
        ]
        assert len(commands) == 13
        for command in commands:
            match = re.fullmatch(r"(?:cd (\w+) && )?(\S+) (\S+\.py)((?: --\S+(?: \S+)?)*)", command)
            assert match, command
            cwd = ROOT / (match[1] or "")
            assert match[2] in (".venv/bin/python", "../.venv/bin/python"), command
            done = subprocess.run(
                [sys.executable, match[3], "--help"], cwd=cwd, capture_output=True, text=True,
                timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            for flag in re.findall(r"--[\w-]+", match[4]):
                assert flag in done.stdout, (command, flag)


class TestShownFiles:
    def test_alertmanager_route_is_the_committed_example(self) -> None:
        """The Remediation page's route says what alerts/alertmanager.example.yml says."""
        shown = block("docs/remediation.md", "yaml", "webhook_configs").text
        committed = (ROOT / "alerts" / "alertmanager.example.yml").read_text()
        assert yaml.safe_load(shown) == yaml.safe_load(committed)


class TestRunbookExamples:
    QUERIES: ClassVar[list[str]] = [
        b.text.strip() for b in blocks("docs/runbooks.md") if b.lang == "promql"
    ]

    @pytest.mark.processes
    def test_every_query_parses_with_promtool(self, tmp_path) -> None:
        """Each runbook query is valid PromQL (promtool checks it as a recording rule)."""
        assert len(self.QUERIES) >= len(TestRunbooks.RULES["groups"][0]["rules"])
        rules = {
            "groups": [
                {
                    "name": "runbook-queries",
                    "rules": [
                        {"record": f"runbook:query_{i}", "expr": q}
                        for i, q in enumerate(self.QUERIES)
                    ],
                }
            ]
        }
        path = tmp_path / "queries.yml"
        path.write_text(yaml.safe_dump(rules))
        done = _promtool("check", "rules", path)
        assert done.returncode == 0, done.stdout + done.stderr

    def test_every_query_names_documented_metrics(self) -> None:
        """No runbook query asks for a family the exporter does not export."""
        documented = set(re.findall(r"`(agent_registry_\w+)`", page_text("docs/metrics.md")))
        for query in self.QUERIES:
            for name in re.findall(r"agent_registry_\w+", query):
                assert name in documented, (query, name)

    @pytest.mark.processes
    def test_referrer_walk_names_the_holder(self) -> None:
        """The runbook's gc.get_referrers loop, run in a backend whose cleaned agent is still
        held by a module-level list, prints that list."""
        snippet = block("docs/runbooks.md", "python", "gc.get_referrers").text
        backend = textwrap.dedent(
            """
            import asyncio

            from agent_registry_exporter import AgentRegistry

            class Agent:
                async def aclose(self):
                    pass

            LEAKED_HERE = []

            async def leak():
                registry = AgentRegistry()
                agent = Agent()
                LEAKED_HERE.append(agent)
                await registry.register_user_agent("alice", "agent-1", agent)
                await registry.lifecycle_manager.trigger_cleanup("alice")
                return registry

            registry = asyncio.run(leak())
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", backend + snippet], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert "<class 'list'> [<__main__.Agent object at" in done.stdout


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    assert path, "promtool is installed by `make test` (Debian package prometheus)"
    return subprocess.run([path, *map(str, args)], capture_output=True, text=True, timeout=120)


def _make_targets() -> dict[str, list[str]]:
    """Makefile targets and their prerequisites."""
    makefile = (ROOT / "Makefile").read_text()
    return {m[1]: m[2].split() for m in re.finditer(r"^([\w.-]+):(?!=)([^\n]*)$", makefile, re.M)}


def _make_recipe(target: str) -> str:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{target}:[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M)
    assert match, target
    return match[1]


# Every fenced console, python, yaml and promql block of README.md and docs/*.md: the page, a
# string only that block holds, and the test that runs or checks it.
CLAIMS: dict[tuple[str, str, str], str] = {
    (
        "README.md",
        "console",
        "$ make demo",
    ): "test_make_commands_name_targets_that_do_what_they_say",
    ("README.md", "console", "serve --demo"): "test_readme_look_at_metrics_and_the_webhook",
    ("README.md", "python", "start_exporter"): "test_embedding_example_runs",
    (
        "docs/getting-started.md",
        "console",
        "$ make demo",
    ): "test_demo_cleans_every_leaking_session_and_exits_zero",
    ("docs/embedding.md", "python", "asyncio.run(main())"): "test_embedding_example_runs",
    (
        "docs/embedding.md",
        "python",
        "lifespan",
    ): "test_fastapi_lifespan_example_serves_metrics_beside_the_app",
    (
        "docs/sidecar.md",
        "python",
        "serve_registry",
    ): "test_fastapi_example_serves_one_socket_per_worker",
    (
        "docs/sidecar.md",
        "console",
        "uvicorn app:app",
    ): "test_sidecar_session_two_workers_behind_one_sidecar",
    (
        "docs/sidecar.md",
        "console",
        "gunicorn -k uvicorn_worker.UvicornWorker",
    ): "test_gunicorn_session_two_uvicorn_workers_behind_one_sidecar",
    (
        "docs/remediation.md",
        "yaml",
        "webhook_configs",
    ): "test_alertmanager_route_is_the_committed_example",
    (
        "docs/alerts.md",
        "console",
        "rules --agents-per-user",
    ): "test_rules_commands_render_rules_promtool_accepts",
    ("docs/security.md", "yaml", "basic_auth_users"): "test_docs_show_the_committed_example",
    (
        "docs/security.md",
        "console",
        "user-id-label",
    ): "test_user_id_label_session_prints_the_labels_shown",
    (
        "docs/kubernetes.md",
        "console",
        "kubernetes --namespace shop",
    ): "test_kubernetes_render_command_prints_what_it_wrote",
    (
        "docs/kubernetes.md",
        "console",
        "apply -k",
    ): "test_the_three_commands_name_the_rendered_objects",
    (
        "docs/configuration.md",
        "console",
        "--web.listen-address",
    ): "test_the_configuration_pages_session_prints_what_it_shows",
    (
        "docs/kubernetes.md",
        "console",
        "--dry-run=client",
    ): "test_the_documented_check_shows_a_wrong_container_name",
    (
        "docs/kubernetes.md",
        "yaml",
        "components/networkpolicy",
    ): "test_the_documented_overlay_adds_the_network_policy",
    (
        "docs/kubernetes.md",
        "console",
        "--monitor-label release=",
    ): "test_kube_prometheus_stack_render_labels_what_its_prometheus_selects",
    (
        "docs/kubernetes.md",
        "console",
        "alertmanagerConfigNamespaceSelector",
    ): "test_the_namespace_selector_commands_select_the_backends_namespace",
    (
        "docs/kubernetes.md",
        "yaml",
        "alertmanagerSpec",
    ): "test_the_namespace_selector_commands_select_the_backends_namespace",
    (
        "docs/kubernetes.md",
        "yaml",
        "continue: true",
    ): "test_the_operators_continue_sends_the_alert_on_to_later_routes",
    (
        "docs/kubernetes.md",
        "console",
        "amtool config routes test",
    ): "test_the_operators_continue_sends_the_alert_on_to_later_routes",
    ("docs/runbooks.md", "python", "gc.get_referrers"): "test_referrer_walk_names_the_holder",
    ("docs/runbooks.md", "promql", ""): "test_every_query_parses_with_promtool",
    (
        "docs/performance.md",
        "console",
        ".venv/bin/python",
    ): "test_benchmark_commands_name_real_scripts_and_flags",
    (
        "docs/development.md",
        "console",
        "$ make test",
    ): "test_make_commands_name_targets_that_do_what_they_say",
    ("docs/install.md", "console", "pip install '.[dashboard]'"): (
        "test_install_commands_name_what_the_project_has"
    ),
    ("docs/install.md", "console", "make dist"): "test_install_commands_name_what_the_project_has",
    ("docs/sidecar-memory.md", "console", "hostile.py --bound-workers"): (
        "test_benchmark_commands_name_real_scripts_and_flags"
    ),
    ("docs/alerts.md", "jsonnet", "agent-registry.jsonnet"): (
        "test_standalone_example_renders_rules_and_dashboard_with_its_values"
    ),
    ("docs/alerts.md", "jsonnet", "addMixin"): "test_kube_prometheus_example_passes_its_values",
}


class TestEveryExampleIsClaimed:
    def test_every_block_is_run_or_checked_by_a_named_test(self) -> None:
        """A block no test claims (a new example nobody runs) fails here, and so does a claim
        that matches no block or names a test that does not exist."""
        sources = "\n".join(path.read_text() for path in (ROOT / "tests").rglob("test_*.py"))
        matched: dict[tuple[str, str, str], int] = dict.fromkeys(CLAIMS, 0)
        for b in blocks():
            if b.lang not in (
                "console", "python", "yaml", "promql", "shell", "bash", "sh", "jsonnet"
            ):  # fmt: skip
                continue
            claims = [c for c in CLAIMS if c[:2] == (b.page, b.lang) and c[2] in b.text]
            assert len(claims) == 1, f"{b.page}:{b.line}: {b.lang} block claimed by {claims}"
            matched[claims[0]] += 1
        for claim, count in matched.items():
            assert count, f"{claim} matches no block"
            assert f"def {CLAIMS[claim]}(" in sources, CLAIMS[claim]
