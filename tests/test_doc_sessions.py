"""The shell sessions of README.md and docs/*.md, run here: each shown output is real."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from agent_registry_exporter.sources import discover_workers
from agent_registry_exporter.testing import free_port, free_ports, wait_until

from .doc_blocks import ROOT, block
from .doc_sessions import Session, Step, run_block, session

# What changes from run to run in a look at /metrics: ages, timestamps, durations.
_SCRAPE_VOLATILE = [
    (r"(_session_age_seconds\{[^}]*\}) [\d.]+$", r"\1 AGE"),
    (r"(_created_timestamp_seconds\{[^}]*\}) [\d.]+$", r"\1 TIMESTAMP"),
    (r"(_created\{[^}]*\}) [\d.e+]+$", r"\1 TIMESTAMP"),
    (r'"duration_ms": [\d.]+', '"duration_ms": MS'),
]


def _wait_ready(url: str, running: Session) -> None:
    def answers() -> bool:
        assert all(p.poll() is None for p in running.background), running.background_output()
        try:
            with urllib.request.urlopen(url, timeout=5):  # noqa: S310
                return True
        except OSError:
            return False

    wait_until(answers, timeout=60, message=f"{url} answers")


@pytest.mark.processes
def test_readme_look_at_metrics_and_the_webhook(tmp_path: Path) -> None:
    """`serve --demo`, two scrapes around a webhook cleanup and a refused token: every line
    the README shows is printed (ages, timestamps and durations aside)."""
    shown = block("README.md", "console", "serve --demo")
    port = free_port()
    replace = {
        "/tmp/": f"{tmp_path}/",  # noqa: S108 (the shown path, replaced)
        "tests/data/": f"{ROOT}/tests/data/",
        "localhost:8464": f"127.0.0.1:{port}",
        "--listen-host 127.0.0.1 &": f"--listen-host 127.0.0.1 --listen-port {port} &",
    }

    def after(step: Step) -> None:
        if step.command.endswith("&"):
            _wait_ready(f"http://127.0.0.1:{port}/-/ready", running)

    with session(tmp_path, replace) as running:
        run_block(running, shown, _SCRAPE_VOLATILE, after)
    assert json.loads((tmp_path / "alert.json").read_text())["alerts"][0]["labels"]["user_id"] == (
        "leaky-000"
    )


@pytest.mark.processes
def test_sidecar_session_two_workers_behind_one_sidecar(tmp_path: Path) -> None:
    """The sidecar page's session: uvicorn with two workers serving the page's app in slots
    w0 and w1, the sidecar gathering both; every line shown is printed (the share of alice's
    six agents each worker got aside), and the per-worker counts add up to the six. Which
    worker accepts a connection is the kernel's choice: one may get all six (CI saw w0 get
    none), and then it has no session of alice's and prints no line for her, so her lines are
    checked against the totals, not against the page."""
    (tmp_path / "app.py").write_text(block("docs/sidecar.md", "python", "serve_registry").text)
    shown = block("docs/sidecar.md", "console", "uvicorn app:app")
    app_port, sidecar_port = free_ports(2)
    replace = {
        "/tmp/sidecar-demo/": f"{tmp_path}/",  # noqa: S108 (the shown path, replaced)
        "--port 18000": f"--port {app_port}",
        "localhost:18000": f"127.0.0.1:{app_port}",
        "--listen-port 18464": f"--listen-host 127.0.0.1 --listen-port {sidecar_port}",
        "localhost:18464": f"127.0.0.1:{sidecar_port}",
    }
    volatile = [
        (r"\.(sock|lock)\s+", r".\1 "),  # ls prints columns on a terminal, lines to a pipe
        (r'\{"agents":\d+\}', '{"agents":N}'),
        (r"^(agent_registry_agents\{[^}]*\}) \d+$", r"\1 N"),
        (r"^agent_registry_user_agents\{[^}]*\} \d+\n", ""),  # checked below
    ]

    def after(step: Step) -> None:
        if step.command.startswith("uvicorn"):
            sockets = tmp_path / "sockets"  # created by the workers' serve_registry

            def both_served() -> bool:
                assert running.background[0].poll() is None, running.background_output()
                return sockets.is_dir() and len(discover_workers(sockets)) >= 2

            wait_until(both_served, timeout=60, message="both workers serve their sockets")
        elif "agent-registry-exporter sidecar" in step.command:
            _wait_ready(f"http://127.0.0.1:{sidecar_port}/-/ready", running)

    with session(tmp_path, replace) as running:
        *_, metrics = run_block(running, shown, volatile, after)
    per_user = re.findall(
        r'^agent_registry_user_agents\{worker="(w\d+)",user_id="alice"\} (\d+)$', metrics, re.M
    )
    totals = re.findall(r'^agent_registry_agents\{worker="(w\d+)"\} (\d+)$', metrics, re.M)
    assert sorted(worker for worker, _ in totals) == ["w0", "w1"]
    assert sorted(per_user) == sorted((w, count) for w, count in totals if count != "0")
    assert sum(int(count) for _, count in totals) == 6


@pytest.mark.processes
def test_gunicorn_session_two_uvicorn_workers_behind_one_sidecar(tmp_path: Path) -> None:
    """The sidecar page's gunicorn session: uvicorn-worker's UvicornWorker (not the deprecated
    uvicorn.workers) runs the page's app in two workers, each serving its socket; gunicorn's log
    and the sidecar's scrape print what is shown (which worker got bob's agent aside), and bob's
    one agent is counted once."""
    (tmp_path / "app.py").write_text(block("docs/sidecar.md", "python", "serve_registry").text)
    shown = block("docs/sidecar.md", "console", "gunicorn -k uvicorn_worker.UvicornWorker")
    app_port, sidecar_port = free_ports(2)
    replace = {
        "/tmp/gunicorn-demo/": f"{tmp_path}/",  # noqa: S108 (the shown path, replaced)
        "-b localhost:18000": f"-b 127.0.0.1:{app_port}",
        "localhost:18000": f"127.0.0.1:{app_port}",
        "--listen-port 18464": f"--listen-host 127.0.0.1 --listen-port {sidecar_port}",
        "localhost:18464": f"127.0.0.1:{sidecar_port}",
    }
    volatile = [(r'^(agent_registry_agents\{worker="w\d"\}) \d+$', r"\1 N")]

    def after(step: Step) -> None:
        if step.command.startswith("gunicorn"):
            log, sockets = tmp_path / "gunicorn.log", tmp_path / "sockets"

            def both_started() -> bool:
                assert running.background[0].poll() is None, log.read_text()
                started = log.is_file() and log.read_text().count("Application startup complete")
                return started == 2 and len(discover_workers(sockets)) == 2

            wait_until(both_started, timeout=60, message="both gunicorn workers serve a socket")
        elif "agent-registry-exporter sidecar" in step.command:
            _wait_ready(f"http://127.0.0.1:{sidecar_port}/-/ready", running)

    with session(tmp_path, replace) as running:
        running.env["HOME"] = str(tmp_path)  # gunicorn's control socket: ~/.gunicorn/
        *_, metrics = run_block(running, shown, volatile, after)
    totals = re.findall(r'^agent_registry_agents\{worker="w\d"\} (\d+)$', metrics, re.M)
    assert sorted(totals) == ["0", "1"]
