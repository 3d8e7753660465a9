"""Three real replicas on loopback (127.0.0.2-4, one port, like pods): each alert acted on
by its owner, exactly once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import ClientSession

from agent_registry_exporter import SidecarSource
from agent_registry_exporter.remediation import HOP_HEADER
from agent_registry_exporter.testing.fleet import LocalFleet, Replica

from .conftest import RecordingAgent, add_agents, counting_listener, serving_workers
from .test_remediation import payload

TOKEN = "fleet-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


@dataclass
class Fleet:
    replicas: dict[str, Replica]
    http: ClientSession

    async def post(
        self, to: str, body: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        url = f"http://{self.replicas[to].address}/webhook/alertmanager"
        async with self.http.post(url, data=body, headers={**AUTH, **(headers or {})}) as resp:
            return resp.status, await resp.json()

    async def metrics(self, name: str) -> str:
        async with self.http.get(f"http://{self.replicas[name].address}/metrics") as resp:
            return await resp.text()

    def __getitem__(self, name: str) -> Replica:
        return self.replicas[name]


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    """Replicas a, b, c on 127.0.0.2-4 (one port, like pods), own registries, peers listed."""
    local = LocalFleet(HOSTS, TOKEN, settings={"forward_timeout_seconds": 5})
    await local.start()
    try:
        async with ClientSession() as http:
            yield Fleet(dict(zip("abc", local.replicas, strict=True)), http)
    finally:
        await local.stop()


def alerts_for(*users: str, instance: str, starts: str = "2026-11-27T20:07:48.84Z") -> str:
    return payload(*users, instance=instance, starts=starts).model_dump_json(by_alias=True)


def relabelled(user: str, **labels: str | None) -> str:
    """A firing alert for `user`, its labels changed (None removes one), as JSON."""
    body = payload(user)
    alert = body.alerts[0]
    changed = {**alert.labels, **labels}
    alert = alert.model_copy(update={"labels": {k: v for k, v in changed.items() if v}})
    return body.model_copy(update={"alerts": [alert]}).model_dump_json(by_alias=True)


def closes(agents: list[RecordingAgent]) -> set[int]:
    return {a.closes for a in agents}


class TestForwarding:
    async def test_alert_for_a_peer_is_cleaned_on_that_peer_only(self, fleet) -> None:
        """b's leaky session is cleaned by b; a holds a leaky user of the same id, untouched."""
        on_b = await add_agents(fleet["b"].registry, "leaky", 60)
        on_a = await add_agents(fleet["a"].registry, "leaky", 60)

        status, body = await fleet.post("a", alerts_for("leaky", instance=fleet["b"].address))

        assert status == 200
        (answer,) = body["alerts"]
        assert (answer["outcome"], answer["peer_outcome"]) == ("forwarded", "cleaned")
        assert fleet["a"].address in answer["detail"]
        assert fleet["b"].address in answer["detail"]
        assert closes(on_b) == {1}
        assert fleet["b"].registry.get_session("leaky") is None
        assert closes(on_a) == {0}
        assert fleet["a"].registry.get_session("leaky").agent_count == 60
        assert fleet["b"].outcomes("leaky") == ["cleaned"]
        assert fleet["c"].decisions == []

    async def test_each_replica_counts_its_own_part(self, fleet) -> None:
        """a counts `forwarded`, b counts `cleaned` and the agents; nothing is counted twice."""
        await add_agents(fleet["b"].registry, "leaky", 60)
        await fleet.post("a", alerts_for("leaky", instance=fleet["b"].address))
        on_a, on_b = await fleet.metrics("a"), await fleet.metrics("b")
        assert 'agent_registry_cleanups_total{result="forwarded",trigger="webhook"} 1.0' in on_a
        assert 'agent_registry_cleanups_total{result="cleaned",trigger="webhook"} 0.0' in on_a
        assert "agent_registry_cleaned_agents_total 0.0" in on_a
        assert 'agent_registry_cleanups_total{result="cleaned",trigger="webhook"} 1.0' in on_b
        assert "agent_registry_cleaned_agents_total 60.0" in on_b

    async def test_ha_pair_delivering_to_two_replicas_cleans_once(self, fleet) -> None:
        """Both Alertmanagers' deliveries, to a and to c at once, end in one cleanup on b."""
        agents = await add_agents(fleet["b"].registry, "leaky", 60)
        body = alerts_for("leaky", instance=fleet["b"].address)

        answers = await asyncio.gather(fleet.post("a", body), fleet.post("c", body))

        assert [status for status, _ in answers] == [200, 200]
        peer_outcomes = sorted(a["alerts"][0]["peer_outcome"] for _, a in answers)
        assert peer_outcomes == ["cleaned", "duplicate"]
        assert closes(agents) == {1}
        assert sorted(fleet["b"].outcomes("leaky")) == ["cleaned", "duplicate"]

    async def test_batch_is_split_per_peer_and_mixed_with_local_work(self, fleet) -> None:
        """One payload: a's own user cleaned here, b's and c's forwarded, each once."""
        made = {name: await add_agents(fleet[name].registry, f"user-{name}", 60) for name in "abc"}
        body = payload("user-a", instance=fleet["a"].address)
        for name in "bc":
            extra = payload(f"user-{name}", instance=fleet[name].address)
            body = body.model_copy(update={"alerts": [*body.alerts, *extra.alerts]})

        status, answer = await fleet.post("a", body.model_dump_json(by_alias=True))

        assert status == 200
        assert [(a["outcome"], a.get("peer_outcome")) for a in answer["alerts"]] == [
            ("cleaned", None),
            ("forwarded", "cleaned"),
            ("forwarded", "cleaned"),
        ]
        assert all(closes(agents) == {1} for agents in made.values())
        assert [fleet[n].outcomes(f"user-{n}") for n in "bc"] == [["cleaned"], ["cleaned"]]

    async def test_storm_for_every_replica_keeps_order_and_cleans_each_once(self, fleet) -> None:
        """60 alerts interleaved over a, b, c (within each one's burst and breaker), one post."""
        made: dict[str, list[RecordingAgent]] = {}
        alerts = []
        for n in range(20):
            for name in "abc":
                user = f"{name}-leak-{n:02d}"
                made[user] = await add_agents(fleet[name].registry, user, 60)
                await add_agents(fleet[name].registry, f"{name}-calm-{n:02d}", 5)
                alerts.extend(payload(user, instance=fleet[name].address).alerts)
        body = payload("x").model_copy(update={"alerts": alerts}).model_dump_json(by_alias=True)

        status, answer = await fleet.post("a", body)

        assert status == 200
        assert [a["user_id"] for a in answer["alerts"]] == list(made)
        assert {a.get("peer_outcome", a["outcome"]) for a in answer["alerts"]} == {"cleaned"}
        assert all(closes(agents) == {1} for agents in made.values())
        for name in "abc":
            assert fleet[name].outcomes(f"{name}-leak-00") == ["cleaned"]


class TestNeverAnOpenRelay:
    async def test_forged_instance_is_never_contacted(self, fleet) -> None:
        """instance=127.0.0.9:<port> (a listener the test owns): no connection, 200, counted."""
        async with counting_listener("127.0.0.9") as listener:
            port = listener.port
            await add_agents(fleet["a"].registry, "leaky", 60)
            forged = alerts_for("leaky", instance=f"127.0.0.9:{port}")
            status, body = await fleet.post("a", forged)

        assert status == 200
        (answer,) = body["alerts"]
        assert answer["outcome"] == "unknown_instance"
        assert f"127.0.0.9:{port}" in answer["detail"]
        assert fleet["a"].address in answer["detail"]
        assert listener.connections == 0
        assert fleet["a"].registry.get_session("leaky").agent_count == 60
        text = await fleet.metrics("a")
        assert 'agent_registry_cleanups_total{result="unknown_instance",trigger="webhook"} 1.0' in (
            text
        )

    async def test_peer_host_on_another_port_is_never_contacted(self, fleet) -> None:
        """b's address with a port other than the exporter's is no peer: nothing connects."""
        host = fleet["b"].address.rsplit(":", 1)[0]
        async with counting_listener(host) as listener:
            elsewhere = f"{host}:{listener.port}"
            await add_agents(fleet["b"].registry, "leaky", 60)
            status, body = await fleet.post("a", alerts_for("leaky", instance=elsewhere))

        assert (status, body["alerts"][0]["outcome"]) == (200, "unknown_instance")
        assert listener.connections == 0
        assert fleet["b"].registry.get_session("leaky").agent_count == 60

    @pytest.mark.parametrize("hop", ["1", "0", "", "no", "1, 1"])
    async def test_forwarded_request_is_never_forwarded_again(self, fleet, hop) -> None:
        """With the hop header (whatever its value), an alert naming another replica is
        answered, not forwarded."""
        agents = await add_agents(fleet["b"].registry, "leaky", 60)
        body = alerts_for("leaky", instance=fleet["b"].address)

        status, answer = await fleet.post("a", body, {HOP_HEADER: hop})

        assert status == 200
        assert answer["alerts"][0]["outcome"] == "other_instance"
        assert "not forwarded again" in answer["alerts"][0]["detail"]
        assert fleet["b"].decisions == []
        assert closes(agents) == {0}

    async def test_forwarded_request_for_us_is_acted_on(self, fleet) -> None:
        """The hop header changes nothing for the owner's own alerts."""
        agents = await add_agents(fleet["b"].registry, "leaky", 60)
        body = alerts_for("leaky", instance=fleet["b"].address)
        status, answer = await fleet.post("b", body, {HOP_HEADER: "1"})
        assert (status, answer["alerts"][0]["outcome"]) == (200, "cleaned")
        assert closes(agents) == {1}


class TestPeerFailure:
    async def test_stopped_peer_makes_the_answer_5xx_and_the_retry_cleans_once(self, fleet) -> None:
        """b down: a answers 500 naming b; b back: the same alert is cleaned there, once."""
        agents = await add_agents(fleet["b"].registry, "leaky", 60)
        body = alerts_for("leaky", instance=fleet["b"].address)
        await fleet["b"].stop()

        status, answer = await fleet.post("a", body)

        assert status == 500
        assert answer["alerts"][0]["outcome"] == "error"
        assert fleet["b"].address in answer["alerts"][0]["detail"]
        assert closes(agents) == {0}

        await fleet["b"].start()
        status, answer = await fleet.post("a", body)
        assert (status, answer["alerts"][0]["peer_outcome"]) == (200, "cleaned")
        status, answer = await fleet.post("c", body)
        assert (status, answer["alerts"][0]["peer_outcome"]) == (200, "duplicate")
        assert closes(agents) == {1}

    async def test_peer_rate_limit_makes_ours_429(self, fleet) -> None:
        """b's rate limit holds a user back: a answers 429 for it, nothing is lost."""
        await fleet["b"].stop()
        fleet["b"].settings = fleet["b"].settings.model_copy(update={"cleanup_burst": 1})
        await fleet["b"].start()
        first = await add_agents(fleet["b"].registry, "first", 60)
        second = await add_agents(fleet["b"].registry, "second", 60)

        status, answer = await fleet.post(
            "a", alerts_for("first", "second", instance=fleet["b"].address)
        )

        assert status == 429
        assert [a["peer_outcome"] for a in answer["alerts"]] == ["cleaned", "rate_limited"]
        assert (closes(first), closes(second)) == ({1}, {0})


class TestIdentity:
    async def test_landing_page_shows_our_instance_and_peers(self, fleet) -> None:
        """Which replica this is, and whom it forwards to."""
        async with fleet.http.get(f"http://{fleet['a'].address}/") as resp:
            page = await resp.text()
        assert f"Instance: <code>{fleet['a'].address}</code>" in page
        assert fleet["c"].address in page

    async def test_every_decision_log_line_names_our_replica(self, fleet, caplog) -> None:
        """The structured line carries the alert's instance and the deciding replica."""
        await add_agents(fleet["b"].registry, "leaky", 60)
        with caplog.at_level(logging.INFO, logger="agent_registry_exporter"):
            await fleet.post("a", alerts_for("leaky", instance=fleet["b"].address))
        lines = [r.fields for r in caplog.records if r.getMessage() == "remediation decision"]
        by_replica = {line["replica"]: line for line in lines}
        assert by_replica[fleet["a"].address]["outcome"] == "forwarded"
        assert by_replica[fleet["b"].address]["outcome"] == "cleaned"
        assert {line["instance"] for line in lines} == {fleet["b"].address}

    @pytest.mark.parametrize("status", ["firing", "resolved"])
    async def test_detail_names_both_instances_whatever_the_outcome(self, fleet, status) -> None:
        """A duplicate or an ignored alert for b, seen by a, names b and a."""
        body = payload("leaky", instance=fleet["b"].address)
        alert = body.alerts[0].model_copy(update={"status": status})
        text = body.model_copy(update={"alerts": [alert, alert]}).model_dump_json(by_alias=True)
        _, answer = await fleet.post("a", text)
        for decision in answer["alerts"]:
            assert fleet["a"].address in decision["detail"], decision
            assert fleet["b"].address in decision["detail"], decision


class TestSidecarMode:
    async def test_worker_alert_is_forwarded_and_cleaned_on_that_worker(
        self, fleet, socket_dir
    ) -> None:
        """b is a sidecar over two workers: a forwards b's alert, b cleans the worker it names."""
        async with serving_workers(socket_dir, "w1", "w2") as workers:
            sidecar = SidecarSource(socket_dir, timeout=5.0)
            await fleet["b"].stop()
            fleet["b"].source = sidecar
            await fleet["b"].start()
            on_w1 = await add_agents(workers["w1"], "leaky", 60)
            on_w2 = await add_agents(workers["w2"], "leaky", 60)
            text = relabelled("leaky", instance=fleet["b"].address, worker="w2")
            try:
                status, answer = await fleet.post("a", text)
            finally:
                await sidecar.close()

        assert status == 200
        (decision,) = answer["alerts"]
        assert (decision["outcome"], decision["peer_outcome"]) == ("forwarded", "cleaned")
        assert decision["worker"] == "w2"
        assert (closes(on_w2), closes(on_w1)) == ({1}, {0})


class TestAlertWithoutInstance:
    async def test_alert_naming_no_instance_is_nobodys(self, fleet) -> None:
        """An alert without `instance` (a rule that aggregated it away) is not guessed at."""
        agents = await add_agents(fleet["a"].registry, "leaky", 60)
        text = relabelled("leaky", instance=None)

        status, answer = await fleet.post("a", text)

        assert (status, answer["alerts"][0]["outcome"]) == (200, "unknown_instance")
        assert "no instance" in answer["alerts"][0]["detail"]
        assert closes(agents) == {0}


class TestRoutingByAddress:
    """Operators relabel `instance` (to the pod name); the cleanup rules join each replica's
    advertised address (agent_registry_exporter_info) onto the alert: routing follows it."""

    async def test_every_replica_exports_its_advertised_address(self, fleet) -> None:
        """agent_registry_exporter_info{address="<its instance>"} 1 on each replica."""
        for name in "abc":
            text = await fleet.metrics(name)
            assert f'agent_registry_exporter_info{{address="{fleet[name].address}"}} 1.0' in text

    async def test_relabelled_instance_with_the_owners_address_is_cleaned_there(
        self, fleet
    ) -> None:
        """instance = a pod name nobody knows, address = b: sent to a, cleaned on b only."""
        on_b = await add_agents(fleet["b"].registry, "leaky", 60)
        on_a = await add_agents(fleet["a"].registry, "leaky", 60)
        text = relabelled("leaky", instance="agent-backend-7f9c-b", address=fleet["b"].address)

        status, answer = await fleet.post("a", text)

        assert status == 200
        (decision,) = answer["alerts"]
        assert (decision["outcome"], decision["peer_outcome"]) == ("forwarded", "cleaned")
        assert decision["peer"] == fleet["b"].address
        assert (closes(on_b), closes(on_a)) == ({1}, {0})

    async def test_own_address_under_a_relabelled_instance_is_acted_on_here(self, fleet) -> None:
        """address = the receiving replica: cleaned locally, whatever instance says."""
        agents = await add_agents(fleet["c"].registry, "leaky", 60)
        text = relabelled("leaky", instance="agent-backend-7f9c-c", address=fleet["c"].address)

        status, answer = await fleet.post("c", text)

        assert (status, answer["alerts"][0]["outcome"]) == (200, "cleaned")
        assert closes(agents) == {1}

    async def test_address_of_no_peer_is_never_contacted(self, fleet) -> None:
        """A forged address is as unknown as a forged instance: nobody is contacted."""
        agents = await add_agents(fleet["a"].registry, "leaky", 60)
        port = int(fleet["a"].address.rsplit(":", 1)[1])
        async with counting_listener("127.0.0.9", port) as listener:
            text = relabelled(
                "leaky", instance=fleet["a"].address, address=f"127.0.0.9:{listener.port}"
            )
            status, answer = await fleet.post("a", text)
        assert (status, answer["alerts"][0]["outcome"]) == (200, "unknown_instance")
        assert listener.connections == 0
        assert closes(agents) == {0}
