"""The README stays true: its embedding example runs, its settings table is complete."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from agent_registry_exporter import RegistrySnapshot, Settings, SidecarSource
from agent_registry_exporter.sources import discover_workers
from agent_registry_exporter.testing import free_port, wait_until

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_embedding_example_runs() -> None:
    """The Python block serves /metrics (on loopback and a free port here)."""
    (example,) = [
        b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "start_exporter" in b
    ]
    code = example.replace('"0.0.0.0"', '"127.0.0.1"').replace("listen_port=8464", "listen_port=0")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert re.search(r"serving http://127\.0\.0\.1:\d+/metrics", done.stdout)


def test_every_setting_is_documented() -> None:
    """Each Settings field has its row, with its environment variable."""
    for name in Settings.model_fields:
        assert f"| `{name}` | `AGENT_REGISTRY_EXPORTER_{name.upper()}` |" in README, name


def test_sidecar_fastapi_example_serves_one_socket_per_worker(socket_dir, tmp_path) -> None:
    """The FastAPI block under `uvicorn --workers 2`: two sockets, each answering for its
    worker's own registry, removed when uvicorn stops."""
    (example,) = [
        b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "serve_registry" in b
    ]
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

        workers = wait_until(both_served, timeout=60, message="both workers serve their sockets")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/users/alice/agents/agent-1", b"")
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
            assert json.load(resp) == {"agents": 1}
        snapshots = asyncio.run(_gather(socket_dir))
        assert sorted(s.worker for s in snapshots) == sorted(workers)
        assert sorted(len(s.sessions) for s in snapshots) == [0, 1]
    finally:
        app.terminate()
        app.wait(30)
    assert discover_workers(socket_dir) == {}


async def _gather(socket_dir: Path) -> tuple[RegistrySnapshot, ...]:
    source = SidecarSource(socket_dir)
    try:
        return (await source.snapshot()).workers or ()
    finally:
        await source.close()
