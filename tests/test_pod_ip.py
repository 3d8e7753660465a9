"""The Deployment patch's sidecar on an IPv6 pod: `instance_host=$(POD_IP)` gives the
`instance` Prometheus writes for the pod's target, and alerts carrying it are its own; IPv4
and IPv6 replicas forward to each other."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from agent_registry_exporter import AgentRegistry, InProcessSource, Settings, create_app
from agent_registry_exporter.settings import ENV_PREFIX
from agent_registry_exporter.testing.fleet import LocalFleet, Replica

from .conftest import add_agents
from .test_container import patch_env
from .test_remediation import payload

POD_IP = "fd00::1"
TOKEN = "dual-st4ck"


@pytest.fixture
def pod_settings(monkeypatch, tmp_path: Path) -> Settings:
    """Settings read from the patch's env on a pod whose IP is fd00::1 (the token file and
    socket directory moved to the test's own directory)."""
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    for name, value in patch_env(POD_IP, token).items():
        if name.startswith(ENV_PREFIX):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv(f"{ENV_PREFIX}SOCKET_DIR", str(tmp_path))
    return Settings()


class TestPatchOnAnIpv6Pod:
    def test_the_patch_gives_the_pod_ip_as_instance_host(self) -> None:
        """instance_host = $(POD_IP), defined after POD_IP; no hand-built instance."""
        env = patch_env(POD_IP, Path("token"))
        assert env[f"{ENV_PREFIX}INSTANCE_HOST"] == POD_IP
        assert f"{ENV_PREFIX}INSTANCE" not in env

    def test_instance_is_the_bracketed_pod_ip_and_port(self, pod_settings) -> None:
        """`[fd00::1]:8464`, what Prometheus names the pod's target (not `fd00::1:8464`)."""
        assert pod_settings.instance == "[fd00::1]:8464"

    async def test_an_alert_for_that_instance_is_the_replicas_own(
        self, aiohttp_client, pod_settings, registry: AgentRegistry
    ) -> None:
        """Cleaned here: neither forwarded to a peer nor dropped as an unknown instance."""
        agents = await add_agents(registry, "leaky", 60)
        client = await aiohttp_client(create_app(InProcessSource(registry), pod_settings))
        body = payload("leaky", instance="[fd00::1]:8464").model_dump_json(by_alias=True)

        resp = await client.post(
            "/webhook/alertmanager", data=body, headers={"Authorization": "Bearer t0ken"}
        )

        answer: dict[str, Any] = await resp.json()
        assert (resp.status, answer["alerts"][0]["outcome"]) == (200, "cleaned")
        assert {a.closes for a in agents} == {1}
        assert registry.get_session("leaky") is None

    async def test_the_replica_advertises_that_address(
        self, aiohttp_client, pod_settings, registry: AgentRegistry
    ) -> None:
        """agent_registry_exporter_info carries it: the cleanup rules join it as `address`."""
        client = await aiohttp_client(create_app(InProcessSource(registry), pod_settings))
        text = await (await client.get("/metrics")).text()
        assert 'agent_registry_exporter_info{address="[fd00::1]:8464"} 1.0' in text


class TestDualStackReplicas:
    """An IPv4 pod and an IPv6 pod (127.0.0.2 and ::1, one port), each knowing itself from
    `instance_host`: alerts for either are forwarded to it and cleaned there, once."""

    @pytest.fixture
    async def fleet(self) -> AsyncIterator[LocalFleet]:
        local = LocalFleet(("127.0.0.2", "::1"), TOKEN, settings={"forward_timeout_seconds": 5})
        await local.start()
        try:
            yield local
        finally:
            await local.stop()

    async def post(self, to: Replica, body: str) -> tuple[int, dict[str, Any]]:
        async with (
            ClientSession() as http,
            http.post(
                f"http://{to.address}/webhook/alertmanager",
                data=body,
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as resp,
        ):
            return resp.status, await resp.json()

    async def test_each_replica_is_its_bracketed_or_plain_address(self, fleet) -> None:
        """The IPv6 replica's instance is `[::1]:port`, the IPv4 one's `127.0.0.2:port`."""
        v4, v6 = fleet.replicas
        port = v4.address.rsplit(":", 1)[1]
        assert (v4.settings.instance, v6.settings.instance) == (
            f"127.0.0.2:{port}",
            f"[::1]:{port}",
        )

    @pytest.mark.parametrize("receiver", [0, 1], ids=["v4-receives", "v6-receives"])
    async def test_an_alert_for_the_other_family_is_cleaned_there(self, fleet, receiver) -> None:
        """Sent to one replica, the alert naming the other is forwarded and cleaned there."""
        at = fleet.replicas[receiver]
        owner = fleet.replicas[1 - receiver]
        agents = await add_agents(owner.registry, "leaky", 60)
        bystander = await add_agents(at.registry, "leaky", 60)
        body = payload("leaky", instance=owner.address).model_dump_json(by_alias=True)

        status, answer = await self.post(at, body)

        (decision,) = answer["alerts"]
        assert (status, decision["outcome"], decision["peer_outcome"]) == (
            200,
            "forwarded",
            "cleaned",
        )
        assert decision["peer"] == owner.address
        assert ({a.closes for a in agents}, {a.closes for a in bystander}) == ({1}, {0})
