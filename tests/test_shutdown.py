"""Stopping the exporter: cleanups still running get a grace period, then are named in the log."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess

import pytest
from aiohttp import ClientSession

from agent_registry_exporter import AgentRegistry, ExporterServer
from agent_registry_exporter.testing import wait_until_async

from .conftest import RecordingAgent, console_script, loopback_exporter

TOKEN = "s3cret-t0ken"


class GatedAgent(RecordingAgent):
    """Closes only once `gate` is set, like an agent flushing to a slow backend."""

    def __init__(self, gate: asyncio.Event) -> None:
        super().__init__()
        self.gate = gate

    async def aclose(self) -> None:
        await self.gate.wait()
        self.closes += 1


def firing(user: str) -> bytes:
    """An Alertmanager payload whose one alert asks to clean `user`."""
    alert = {
        "status": "firing",
        "labels": {
            "alertname": "AgentRegistryTooManyAgentsPerUser",
            "remediation": "cleanup",
            "user_id": user,
        },
        "startsAt": "2026-11-27T20:07:48.84Z",
        "fingerprint": f"fp-{user}",
    }
    return json.dumps({"version": "4", "status": "firing", "alerts": [alert]}).encode()


async def cleanup_left_running(
    registry: AgentRegistry, gate: asyncio.Event, grace: float
) -> tuple[ExporterServer, list[GatedAgent]]:
    """An exporter whose webhook answered `timeout` while 57 agents of `slow` still close."""
    gated = [GatedAgent(gate) for _ in range(57)]
    for n, agent in enumerate(gated):
        await registry.register_user_agent("slow", f"agent-{n}", agent)
    server = await loopback_exporter(
        registry, webhook_token=TOKEN, cleanup_timeout_seconds=0.1, shutdown_grace_seconds=grace
    )
    async with ClientSession() as http:
        resp = await http.post(
            f"{server.url}/webhook/alertmanager",
            data=firing("slow"),
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        body = await resp.json()
    assert [a["outcome"] for a in body["alerts"]] == ["timeout"]
    assert registry.get_session("slow") is None  # detached: only the closing is left
    return server, gated


class TestGracefulStop:
    async def test_cleanup_finishing_within_the_grace_is_awaited(self, clock, caplog) -> None:
        """stop() waits for a background cleanup that finishes inside the grace period."""
        registry = AgentRegistry(clock=clock, agent_close_timeout=60)
        gate = asyncio.Event()
        server, gated = await cleanup_left_running(registry, gate, grace=60)

        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()
        gate.set()
        with caplog.at_level(logging.INFO, logger="agent_registry_exporter"):
            await stopping

        assert {a.closes for a in gated} == {1}
        assert not [r for r in caplog.records if "unfinished" in r.getMessage()]

    async def test_cleanup_outliving_the_grace_is_logged_with_user_and_agents_left(
        self, clock, caplog
    ) -> None:
        """Attack on shutdown: 57 aclose() calls still pending are named, not silently lost."""
        registry = AgentRegistry(clock=clock, agent_close_timeout=60)
        gate = asyncio.Event()
        server, gated = await cleanup_left_running(registry, gate, grace=0.2)

        with caplog.at_level(logging.INFO, logger="agent_registry_exporter"):
            await server.stop()

        (line,) = [r for r in caplog.records if r.getMessage() == "cleanup unfinished at shutdown"]
        assert line.levelno == logging.WARNING
        assert line.fields == {"user_id": "slow", "agents_left": 57}
        gate.set()  # let the cleanup end, so the test leaves nothing running
        await wait_until_async(lambda: all(a.closes == 1 for a in gated))


class TestSignals:
    @pytest.mark.processes
    def test_sigterm_stops_accepting_and_exits_0_with_a_last_log_line(self) -> None:
        """SIGTERM: the port is released, a summary is logged, the exit code is 0."""
        proc = subprocess.Popen(
            [console_script(), "serve", "--demo", "--listen-host", "127.0.0.1"],
            env={
                "PATH": "/usr/bin:/bin",
                "AGENT_REGISTRY_EXPORTER_LISTEN_PORT": "0",
                "AGENT_REGISTRY_EXPORTER_WEBHOOK_TOKEN": TOKEN,
                "AGENT_REGISTRY_EXPORTER_LOG_FORMAT": "json",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert "serving" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
        (stopped,) = [line for line in lines if line["message"] == "exporter stopped"]
        assert stopped["unfinished_cleanups"] == 0
        assert "Traceback" not in stderr
