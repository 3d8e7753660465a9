"""Forwarding to a peer over real loopback HTTP: success, failures, bounds, no redirects."""

from __future__ import annotations

import asyncio
import gzip
import json

import pytest
from aiohttp import web

from agent_registry_exporter import AgentRegistry, InProcessSource, Settings, create_app
from agent_registry_exporter.remediation import HOP_HEADER, Forwarder, Outcome
from agent_registry_exporter.testing import free_port, start_on_free_port_async

from .conftest import add_agents
from .test_remediation import payload

TOKEN = "fleet-t0ken"
OWN = "127.0.0.1:1"  # the forwarding replica; never contacted in these tests


class FakePeer:
    """A loopback server answering the webhook path as the test says, recording requests."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.requests: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((dict(request.headers), await request.read()))
        return await self.answer(request)


@pytest.fixture
async def make_forwarder():
    made: list[Forwarder] = []

    def factory(
        timeout: float = 5.0, max_request_bytes: int = 1 << 20, max_response_bytes: int = 1 << 20
    ) -> Forwarder:
        forwarder = Forwarder(
            OWN,
            path="/webhook/alertmanager",
            token=lambda: TOKEN,
            timeout_seconds=timeout,
            max_request_bytes=max_request_bytes,
            max_response_bytes=max_response_bytes,
        )
        made.append(forwarder)
        return forwarder

    yield factory
    for forwarder in made:
        await forwarder.close()


@pytest.fixture
def fake_peer(aiohttp_server):
    async def start(answer) -> tuple[str, FakePeer]:
        peer = FakePeer(answer)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", peer.handle)
        server = await aiohttp_server(app, host="127.0.0.1")
        return f"127.0.0.1:{server.port}", peer

    return start


async def exporter_peer(aiohttp_server, registry: AgentRegistry, **settings) -> str:
    """A real exporter replica on loopback whose `instance` is its own address."""

    async def serve_on(port: int) -> str:
        address = f"127.0.0.1:{port}"
        app = create_app(
            InProcessSource(registry),
            Settings(webhook_token=TOKEN, instance=address, **settings),
        )
        await aiohttp_server(app, host="127.0.0.1", port=port)
        return address

    return await start_on_free_port_async(serve_on)


def answering(status: int, body: bytes | str, **headers: str):
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, headers=headers)

    return answer


class TestSuccess:
    async def test_peer_cleans_and_its_decision_comes_back(
        self, aiohttp_server, make_forwarder, registry
    ) -> None:
        """The owner cleans; the answer is `forwarded` with the owner's outcome and detail."""
        agents = await add_agents(registry, "leaky", 60)
        peer = await exporter_peer(aiohttp_server, registry)
        alerts = payload("leaky", instance=peer)

        (decision,) = await make_forwarder().forward(peer, alerts, alerts.alerts)

        assert decision.outcome is Outcome.FORWARDED
        assert decision.peer_outcome is Outcome.CLEANED
        assert (decision.peer, decision.instance) == (peer, peer)
        assert decision.detail == f"forwarded from {OWN} to {peer}: cleaned: 60 agents closed"
        assert decision.agents_cleaned == 0  # counted by the owner, not twice
        assert registry.get_session("leaky") is None
        assert {a.closes for a in agents} == {1}

    async def test_request_carries_token_and_hop_header(self, fake_peer, make_forwarder) -> None:
        """Same bearer token, the hop header, identity encoding, the alerts as sent."""
        alerts = payload("u1", "u2", instance="127.0.0.1:2")
        decisions = {
            "alerts": [
                {"fingerprint": a.fingerprint, "outcome": "no_session", "detail": ""}
                for a in alerts.alerts
            ]
        }
        address, peer = await fake_peer(answering(200, json.dumps(decisions)))

        result = await make_forwarder().forward(address, alerts, alerts.alerts)

        assert [d.peer_outcome for d in result] == [Outcome.NO_SESSION] * 2
        ((headers, body),) = peer.requests
        assert headers["Authorization"] == f"Bearer {TOKEN}"
        assert headers[HOP_HEADER] == "1"
        assert headers["Accept-Encoding"] == "identity"
        sent = json.loads(body)
        assert [a["labels"]["user_id"] for a in sent["alerts"]] == ["u1", "u2"]
        assert [a["startsAt"] for a in sent["alerts"]] == ["2026-11-27T20:07:48.840000Z"] * 2


class TestBodyLimit:
    async def test_batch_over_the_peers_body_limit_is_split(
        self, aiohttp_server, make_forwarder, registry
    ) -> None:
        """Ten alerts that do not fit one request reach the owner in several, all decided."""
        users = [f"leaky-{n}" for n in range(10)]
        made = [await add_agents(registry, user, 60) for user in users]
        peer = await exporter_peer(aiohttp_server, registry, webhook_max_body_bytes=2000)
        alerts = payload(*users, instance=peer)

        decisions = await make_forwarder(max_request_bytes=2000).forward(
            peer, alerts, alerts.alerts
        )

        assert [d.user_id for d in decisions] == users
        assert {d.peer_outcome for d in decisions} == {Outcome.CLEANED}
        assert all(closes == {1} for closes in ({a.closes for a in m} for m in made))

    async def test_alert_too_big_alone_is_an_error_not_a_request(
        self, fake_peer, make_forwarder
    ) -> None:
        """Nothing is sent that the peer would refuse anyway."""
        address, peer = await fake_peer(answering(200, "{}"))
        alerts = payload("leaky", instance=address)
        (decision,) = await make_forwarder(max_request_bytes=100).forward(
            address, alerts, alerts.alerts
        )
        assert decision.outcome is Outcome.ERROR
        assert "exceeds 100 bytes" in decision.detail
        assert peer.requests == []


class TestPeerFailures:
    async def test_peer_5xx_without_decisions_is_an_error(self, fake_peer, make_forwarder):
        """A peer's 500 is ours to retry; the detail names the peer and its answer."""
        address, _ = await fake_peer(answering(503, "upstream sad"))
        alerts = payload("leaky", instance=address)
        (decision,) = await make_forwarder().forward(address, alerts, alerts.alerts)
        assert decision.outcome is Outcome.ERROR
        assert decision.effective_outcome.retry_helps
        assert f"to {address} failed: the peer answered 503" in decision.detail
        assert "upstream sad" in decision.detail

    async def test_peer_cleanup_error_is_retried_through_us(
        self, aiohttp_server, make_forwarder, registry
    ) -> None:
        """The owner's own `error` (its 500 with decisions) makes our answer retryable."""

        class Broken(InProcessSource):
            async def cleanup_user(self, user_id: str, **kw: object):
                raise ConnectionError("injected: registry unavailable")

        await add_agents(registry, "leaky", 60)

        async def serve_on(port: int) -> str:
            peer = f"127.0.0.1:{port}"
            app = create_app(Broken(registry), Settings(webhook_token=TOKEN, instance=peer))
            await aiohttp_server(app, host="127.0.0.1", port=port)
            return peer

        peer = await start_on_free_port_async(serve_on)
        alerts = payload("leaky", instance=peer)

        (decision,) = await make_forwarder().forward(peer, alerts, alerts.alerts)

        assert (decision.outcome, decision.peer_outcome) == (Outcome.FORWARDED, Outcome.ERROR)
        assert decision.effective_outcome.retry_helps
        assert "injected: registry unavailable" in decision.detail

    async def test_peer_429_defers(self, fake_peer, make_forwarder) -> None:
        """A bare 429 from the peer is ours too (Alertmanager re-sends later)."""
        address, _ = await fake_peer(answering(429, "slow down"))
        alerts = payload("leaky", instance=address)
        (decision,) = await make_forwarder().forward(address, alerts, alerts.alerts)
        assert decision.effective_outcome is Outcome.RATE_LIMITED
        assert decision.effective_outcome.deferred

    async def test_peer_rate_limit_comes_back_as_deferred(
        self, aiohttp_server, make_forwarder, registry
    ) -> None:
        """The owner's rate limit holds the second user back: forwarded, deferred."""
        await add_agents(registry, "first", 60)
        await add_agents(registry, "second", 60)
        peer = await exporter_peer(aiohttp_server, registry, cleanup_burst=1)
        alerts = payload("first", "second", instance=peer)

        decisions = await make_forwarder().forward(peer, alerts, alerts.alerts)

        assert [d.peer_outcome for d in decisions] == [Outcome.CLEANED, Outcome.RATE_LIMITED]
        assert decisions[1].effective_outcome.deferred
        assert registry.get_session("second") is not None

    async def test_unreachable_peer_is_an_error(self, make_forwarder) -> None:
        """Connection refused: an error naming the peer, nothing raised."""
        address = f"127.0.0.1:{free_port()}"
        alerts = payload("leaky", instance=address)
        (decision,) = await make_forwarder().forward(address, alerts, alerts.alerts)
        assert decision.outcome is Outcome.ERROR
        assert address in decision.detail

    async def test_peer_that_never_answers_times_out(self, fake_peer, make_forwarder) -> None:
        """A hanging peer costs at most the forward timeout, then the answer is a timeout."""
        never = asyncio.Event()

        async def hang(request: web.Request) -> web.Response:
            await never.wait()
            return web.Response()

        address, peer = await fake_peer(hang)
        alerts = payload("leaky", instance=address)
        (decision,) = await make_forwarder(timeout=0.2).forward(address, alerts, alerts.alerts)
        assert decision.outcome is Outcome.TIMEOUT
        assert decision.effective_outcome.retry_helps
        assert len(peer.requests) == 1
        never.set()


class TestHostilePeer:
    async def test_redirect_is_not_followed(self, fake_peer, make_forwarder) -> None:
        """A 307 to another listener is an error; the other listener sees nothing."""
        elsewhere, target = await fake_peer(answering(200, "{}"))
        address, _ = await fake_peer(
            answering(307, "", Location=f"http://{elsewhere}/webhook/alertmanager")
        )
        alerts = payload("leaky", instance=address)
        (decision,) = await make_forwarder().forward(address, alerts, alerts.alerts)
        assert decision.outcome is Outcome.ERROR
        assert "307; redirects are not followed" in decision.detail
        assert target.requests == []

    async def test_huge_answer_is_cut_off(self, fake_peer, make_forwarder) -> None:
        """An answer past the bound is an error, whatever it says."""

        async def stream(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse()
            await resp.prepare(request)
            for _ in range(64):
                await resp.write(b" " * 65536)
            return resp

        address, _ = await fake_peer(stream)
        alerts = payload("leaky", instance=address)
        forwarder = make_forwarder(max_response_bytes=100_000)
        (decision,) = await forwarder.forward(address, alerts, alerts.alerts)
        assert decision.outcome is Outcome.ERROR
        assert "exceeds 100000 bytes" in decision.detail

    async def test_compressed_answer_is_not_inflated(self, fake_peer, make_forwarder) -> None:
        """A gzip answer (a possible bomb) is not decompressed: an error, not decisions."""
        alerts = payload("leaky", instance="x")
        body = json.dumps(
            {"alerts": [{"fingerprint": alerts.alerts[0].fingerprint, "outcome": "cleaned"}]}
        )
        address, _ = await fake_peer(
            answering(200, gzip.compress(body.encode()), **{"Content-Encoding": "gzip"})
        )
        (decision,) = await make_forwarder().forward(address, alerts, alerts.alerts)
        assert decision.outcome is Outcome.ERROR
        assert "without decisions" in decision.detail

    @pytest.mark.parametrize(
        "body",
        [
            "not json",
            '{"alerts": []}',
            '{"alerts": [{"fingerprint": "someone-else", "outcome": "cleaned"}]}',
            '{"alerts": [{"fingerprint": "fp-AgentRegistryTooManyAgentsPerUser-leaky",'
            ' "outcome": "obliterated"}]}',
        ],
    )
    async def test_answer_that_does_not_match_the_alerts_is_an_error(
        self, fake_peer, make_forwarder, body
    ) -> None:
        """Garbage, missing, foreign or unknown decisions never count as the peer's word."""
        address, _ = await fake_peer(answering(200, body))
        alerts = payload("leaky", instance=address)
        (decision,) = await make_forwarder().forward(address, alerts, alerts.alerts)
        assert (decision.outcome, decision.peer_outcome) == (Outcome.ERROR, None)
