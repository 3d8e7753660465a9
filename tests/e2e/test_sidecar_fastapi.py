"""Sidecar mode end to end: a real FastAPI app under `uvicorn --workers 2`, each worker
serving its registry on a socket, the sidecar process, real Prometheus and Alertmanager."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_text

from agent_registry_exporter.sources import WorkerError, WorkerSource, discover_workers
from agent_registry_exporter.testing import PortInUse, start_on_free_port, wait_until
from agent_registry_exporter.testing.stack import LocalStack, ManagedProcess

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parent.parent.parent


@dataclass
class Backend:
    url: str
    sockets: Path
    sidecar: ManagedProcess
    stack: LocalStack
    workers: list[str]  # the two workers' slots: w0, w1

    def add_agents(self, user: str, count: int, **where: str) -> str:
        """Register on a worker (`on=w0` / `not_on=w0`), retrying new connections until
        the wanted one takes it; the worker that did."""
        query = "&".join(f"{k}={v}" for k, v in {"count": count, **where}.items())
        for _ in range(200):
            url = f"{self.url}/users/{user}/agents?{query}"
            request = urllib.request.Request(url, b"")  # noqa: S310 - loopback only
            try:
                with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
                    return str(json.load(resp)["worker"])
            except urllib.error.HTTPError as exc:
                if exc.code != 409:  # 409: another worker took it; retry
                    raise
        pytest.fail(f"no worker matching {where} took the request")

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        with urllib.request.urlopen(f"{self.sidecar.url}/metrics", timeout=30) as resp:  # noqa: S310
            text = resp.read().decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in parse_text(text)
            for s in family.samples
        }

    def user_agents(self, user: str) -> dict[str, float]:
        """The sidecar's agent_registry_user_agents for `user`, by worker."""
        return {
            dict(labels)["worker"]: value
            for (name, labels), value in self.metrics().items()
            if name == "agent_registry_user_agents" and ("user_id", user) in labels
        }


@pytest.fixture(scope="module")
def sockets() -> Iterator[Path]:
    """The workers' socket directory: short (sun_path holds 107 bytes), removed at the end
    (a directory made by mkdtemp and left behind piled up in /tmp, one a run)."""
    with tempfile.TemporaryDirectory(prefix="ars-e2e-") as directory:
        yield Path(directory)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, sockets: Path) -> Iterator[Backend]:
    workdir = tmp_path_factory.mktemp("sidecar")
    token = secrets.token_urlsafe(24)
    token_file = workdir / "token"
    token_file.write_text(token)
    uvicorn_log = workdir / "uvicorn.log"

    def uvicorn_on(port: int) -> tuple[subprocess.Popen[bytes], int, list[str]]:
        with uvicorn_log.open("wb") as log:
            app = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "tests.e2e.sidecar_app:app", "--workers", "2",
                 "--host", "127.0.0.1", "--port", str(port)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "AGENT_REGISTRY_EXPORTER_SOCKET_DIR": str(sockets)},
                start_new_session=True,  # its own group: its workers are stopped with it
            )  # fmt: skip

        def both_workers() -> list[str] | None:
            if app.poll() is not None:
                text = uvicorn_log.read_text(errors="replace")
                if "address already in use" in text.lower():
                    raise PortInUse(f"uvicorn on 127.0.0.1:{port}")
                raise AssertionError(f"uvicorn exited with {app.returncode}:\n{text}")
            found = discover_workers(sockets)
            return sorted(found) if len(found) == 2 else None

        try:
            workers = wait_until(both_workers, timeout=60, message="both uvicorn workers serve")
        except BaseException:
            # SIGKILL to the master alone left its two workers (and multiprocessing's
            # resource tracker) running, orphans re-creating the socket directory.
            os.killpg(app.pid, signal.SIGKILL)
            app.wait(30)
            raise
        return app, port, workers

    def sidecar_on(port: int) -> ManagedProcess:
        return ManagedProcess(
            "sidecar",
            [sys.executable, "-m", "agent_registry_exporter.cli", "sidecar",
             "--socket-dir", str(sockets), "--webhook-token-file", str(token_file),
             "--listen-host", "127.0.0.1", "--listen-port", str(port)],
            workdir / "sidecar.log",
            f"127.0.0.1:{port}",
        )  # fmt: skip

    app, port, workers = start_on_free_port(uvicorn_on)
    sidecar: ManagedProcess | None = None
    stack: LocalStack | None = None
    try:
        sidecar = ManagedProcess.start_on_free_port(sidecar_on)
        stack = LocalStack(workdir=workdir, targets=[sidecar.address], token=token)
        stack.start()
        yield Backend(f"http://127.0.0.1:{port}", sockets, sidecar, stack, workers)
    finally:
        if stack is not None:
            stack.stop()
        if sidecar is not None:
            sidecar.stop()
        app.terminate()
        app.wait(30)


class TestSidecarWithUvicornWorkers:
    def test_leaking_user_is_cleaned_on_its_worker_only(self, backend: Backend) -> None:
        """60 agents on one worker, 3 on the other for the same user: the alert names the
        leaking worker, that session is cleaned, the other worker's is untouched."""
        leaking = backend.add_agents("leaky", 60)
        other = backend.add_agents("leaky", 3, not_on=leaking)
        assert wait_until(
            lambda: backend.user_agents("leaky"), timeout=10, message="leaky scraped"
        ) == {
            leaking: 60,
            other: 3,
        }
        wait_until(
            lambda: backend.user_agents("leaky") == {other: 3},
            timeout=60,
            message=f"leaky cleaned on worker {leaking}",
        )
        assert backend.add_agents("leaky", 0, on=other) == other
        assert backend.user_agents("leaky") == {other: 3}
        log = backend.sidecar.log_path.read_text()
        assert f'"worker": "{leaking}"' in log
        assert '"outcome": "cleaned"' in log

    def test_user_on_both_workers_appears_once_per_worker(self, backend: Backend) -> None:
        """Never merged: one series per worker, each that worker's own count, in Prometheus."""
        first, second = backend.workers
        backend.add_agents("shared", 2, on=first)
        backend.add_agents("shared", 5, on=second)
        assert backend.user_agents("shared") == {first: 2, second: 5}

        def in_prometheus() -> bool:
            series = backend.stack.query('agent_registry_user_agents{user_id="shared"}')
            return {s["metric"]["worker"]: s["value"][1] for s in series} == {
                first: "2",
                second: "5",
            }

        wait_until(
            in_prometheus, timeout=20, message="both workers' series of shared in Prometheus"
        )

    def test_killed_worker_respawns_under_its_label(self, backend: Backend) -> None:
        """SIGKILL one worker: uvicorn starts a new one, which claims the dead one's slot
        (the kernel released its lock), so the `worker` label keeps its two values."""
        workers = asyncio.run(_identities(backend.sockets))
        victim = workers[backend.workers[0]]
        os.kill(victim, 9)
        wait_until(
            lambda: (
                (now := asyncio.run(_identities(backend.sockets))).keys() == set(backend.workers)
                and now[backend.workers[0]] != victim
            ),
            timeout=60,
            message=f"a new worker serving {backend.workers[0]}",
        )
        up = wait_until(
            lambda: (
                (
                    got := {
                        dict(labels)["worker"]: value
                        for (name, labels), value in backend.metrics().items()
                        if name == "agent_registry_source_up"
                    }
                )
                == dict.fromkeys(backend.workers, 1)
                and got
            ),
            timeout=30,
            message="both workers up again",
        )
        assert sorted(up) == backend.workers

        def labels_seen() -> list[str]:
            series = backend.stack.query(
                "count by (worker) (count_over_time(agent_registry_source_up[10m]))"
            )
            return sorted(s["metric"]["worker"] for s in series)

        wait_until(
            lambda: labels_seen() == backend.workers,
            timeout=20,
            message="Prometheus saw both labels",
        )
        assert labels_seen() == backend.workers  # never a third value


async def _identities(sockets: Path) -> dict[str, int]:
    """The pid behind each worker socket that answers."""
    found = {}
    for name, path in discover_workers(sockets).items():
        client = WorkerSource(name, path, timeout=5)
        try:
            found[name] = (await client.identity()).pid
        except WorkerError:
            pass
        finally:
            await client.close()
    return found
