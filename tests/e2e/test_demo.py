"""`agent-registry-exporter demo`, run as a newcomer would."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent_registry_exporter.testing import wait_until

from ..doc_blocks import block

pytestmark = pytest.mark.e2e

DEMO = [sys.executable, "-m", "agent_registry_exporter.cli", "demo"]


def test_demo_cleans_every_leaking_session_and_exits_zero() -> None:
    """With the binaries on PATH the demo runs the whole loop and ends by itself."""
    done = subprocess.run([*DEMO, "--duration", "60"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "every leaking session was cleaned" in out
    for user in ("leaky-00", "leaky-01", "leaky-02", "stale-00", "stale-01"):
        assert f"{user:<10} AgentRegistry" in out, user
    assert "steady users untouched: 8 of 8" in out
    # Getting started shows a real run: each of its lines is printed (numbers aside).
    shown = block("docs/getting-started.md", "console", "$ make demo").text.splitlines()
    printed = {_shape(line) for line in out.splitlines()}
    for line in shown[2:]:  # after the command and make's echo of it
        assert _shape(line) in printed, line


def _shape(line: str) -> str:
    return " ".join(re.sub(r"\d+(\.\d+)?", "N", line).split())


def test_sidecar_demo_cleans_each_worker_session_on_its_own_worker() -> None:
    """Two simulated workers behind the sidecar: each leaking session is cleaned on the
    worker that holds it, a user leaking on both is cleaned twice, steady users untouched."""
    done = subprocess.run(
        [*DEMO, "--sidecar", "--duration", "60"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "sidecar on http://127.0.0.1:" in out
    assert "every leaking session was cleaned" in out
    for session in ("leaky-00@w1", "leaky-01@w1", "leaky-00@w2", "stale-00@w1", "stale-00@w2"):
        assert f"{session:<10} AgentRegistry" in out, session
    assert "steady users untouched: 8 of 8" in out


def test_demo_without_binaries_runs_the_exporter_alone(tmp_path: Path) -> None:
    """Without Prometheus it says how to install it and still serves."""
    env = {**os.environ, "PATH": str(tmp_path)}
    done = subprocess.run(
        [*DEMO, "--duration", "1"], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "apt-get install -y --no-install-recommends prometheus prometheus-alertmanager" in (
        done.stdout
    )
    assert "/metrics" in done.stdout


def test_ctrl_c_stops_the_demo_and_its_processes() -> None:
    """SIGINT ends the demo with 130 and leaves no Prometheus or Alertmanager behind."""
    proc = subprocess.Popen(
        [*DEMO, "--duration", "60"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    lines: list[str] = []

    def prometheus_started() -> bool:
        assert proc.stdout is not None
        lines.append(line := proc.stdout.readline())
        assert line or proc.poll() is None, "the demo ended early: " + "".join(lines)
        return "Prometheus http://" in line

    try:
        wait_until(prometheus_started, interval=0, message="the demo started Prometheus")
        # Children are listed per thread; the stack is started from a worker thread.
        children = [
            pid
            for task in Path(f"/proc/{proc.pid}/task").iterdir()
            for pid in (task / "children").read_text().split()
        ]
        assert len(children) == 2, lines
    finally:  # also when the demo is slow to start: it is stopped the way it stops itself
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, "".join(lines) + out
    assert "interrupted" in out
    for pid in children:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        )
