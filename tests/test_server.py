"""The exporter app, driven over HTTP with aiohttp's test client."""

from __future__ import annotations

import asyncio
import gzip
import json
import random

import pytest
from aiohttp import ClientSession, web
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from agent_registry_exporter import (
    AgentRegistry,
    InProcessSource,
    RegistrySnapshot,
    SessionRow,
    Settings,
    create_app,
    start_exporter,
)

from .conftest import RecordingAgent
from .test_exposition import PROMETHEUS_ACCEPT


@pytest.fixture
def app(registry: AgentRegistry) -> web.Application:
    return create_app(InProcessSource(registry), Settings(webhook_token="t0ken"))


def sample(text: str, name: str) -> float:
    """The value of the one unlabelled sample `name` in a text scrape."""
    (value,) = [s.value for f in parse_text(text) for s in f.samples if s.name == name]
    return value


def totals(text: str, *, openmetrics: bool = False) -> tuple[float, float, float]:
    """(agents total, sum of per-user agents, users total) as scraped."""
    parse = parse_om if openmetrics else parse_text
    agents = per_user = users = 0.0
    for family in parse(text):
        for s in family.samples:
            if s.name == "agent_registry_agents":
                agents = s.value
            elif s.name == "agent_registry_users":
                users = s.value
            elif s.name == "agent_registry_user_agents":
                per_user += s.value
    return agents, per_user, users


class TestMetricsEndpoint:
    async def test_prometheus_gets_gzipped_openmetrics(self, aiohttp_client, app, fill) -> None:
        """With Prometheus' own headers the scrape is OpenMetrics, gzip-encoded."""
        await fill("u1", 12)
        client = await aiohttp_client(app)
        resp = await client.get(
            "/metrics",
            headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"},
            auto_decompress=False,
        )
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert resp.headers["Content-Encoding"] == "gzip"
        text = gzip.decompress(await resp.read()).decode()
        assert totals(text, openmetrics=True) == (12, 12, 1)

    async def test_plain_client_gets_text(self, aiohttp_client, app, fill) -> None:
        """curl without headers gets uncompressed text 0.0.4."""
        await fill("u1", 2)
        client = await aiohttp_client(app)
        resp = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "Content-Encoding" not in resp.headers
        assert 'agent_registry_user_agents{user_id="u1"} 2' in await resp.text()

    async def test_scrape_duration_is_reported(self, aiohttp_client, app) -> None:
        """The second scrape shows how long the first render took."""
        client = await aiohttp_client(app)
        await client.get("/metrics")
        text = await (await client.get("/metrics")).text()
        value = sample(text, "agent_registry_exporter_scrape_duration_seconds")
        assert 0 < value < 5

    async def test_scraping_during_churn_is_always_consistent(
        self, aiohttp_client, app, registry
    ) -> None:
        """Scrapes racing registrations and cleanups never fail; totals equal the sums."""
        client = await aiohttp_client(app)
        rng = random.Random(3)
        stop = asyncio.Event()

        async def churn(worker: int) -> None:
            n = 0
            while not stop.is_set():
                user = f"u{rng.randrange(40)}"
                if rng.random() < 0.1:
                    await registry.lifecycle_manager.trigger_cleanup(user)
                else:
                    n += 1
                    await registry.register_user_agent(user, f"w{worker}-{n}", RecordingAgent())
                await asyncio.sleep(0)

        workers = [asyncio.create_task(churn(w)) for w in range(3)]
        try:
            for _ in range(40):
                resp = await client.get("/metrics")
                assert resp.status == 200
                agents, per_user, _ = totals(await resp.text())
                assert agents == per_user
        finally:
            stop.set()
            await asyncio.gather(*workers)
        assert len(registry) > 0


class SpikedSource(InProcessSource):
    """Fault injection: the snapshot carries `extra` rows besides the registry's sessions."""

    def __init__(self, registry: AgentRegistry, *extra: object) -> None:
        super().__init__(registry)
        self.extra = list(extra)

    async def snapshot(self) -> RegistrySnapshot:
        snap = await super().snapshot()
        return RegistrySnapshot(snap.taken_at, snap.thresholds, [*snap.sessions, *self.extra])


class ExplodingSession:
    """A session whose agent count cannot be read: the render itself fails."""

    user_id = "boom"
    created_timestamp = 0.0

    @property
    def agent_count(self) -> int:
        raise RuntimeError("injected render failure")


class TestNeverBlind:
    @pytest.mark.parametrize("accept", ["text/plain", PROMETHEUS_ACCEPT], ids=["text", "om"])
    async def test_a_lone_surrogate_user_id_does_not_blind_the_scrape(
        self, aiohttp_client, registry, fill, accept
    ) -> None:
        """Attack: one id holding `\\ud800` must not turn every scrape into a 500."""
        await fill("alice", 4)
        mallory = SessionRow(json.loads('"mallory\\ud800"'), 9, registry.clock())
        app = create_app(SpikedSource(registry, mallory), Settings(webhook_token="t0ken"))
        client = await aiohttp_client(app)
        resp = await client.get("/metrics", headers={"Accept": accept})
        assert resp.status == 200
        text = await resp.text()
        assert totals(text, openmetrics=accept != "text/plain") == (13, 13, 2)
        assert (await client.get("/-/ready")).status == 200

    async def test_a_failing_render_fails_readiness_and_is_counted(
        self, aiohttp_client, registry, fill
    ) -> None:
        """A render that raises answers a JSON 500, fails /-/ready and is counted."""
        await fill("alice", 4)
        source = SpikedSource(registry, ExplodingSession())
        client = await aiohttp_client(create_app(source, Settings(webhook_token="t0ken")))

        resp = await client.get("/metrics")
        assert resp.status == 500
        assert "render failed" in (await resp.json())["error"]
        ready = await client.get("/-/ready")
        assert ready.status == 503
        # The probe is open to anyone: the reason is in the log and the /metrics answer.
        assert (await ready.json()) == {
            "error": "the last /metrics render failed; see the exporter's log"
        }

        source.extra.clear()
        text = await (await client.get("/metrics")).text()
        assert sample(text, "agent_registry_exporter_render_failures_total") == 1
        assert (await client.get("/-/ready")).status == 200


class TestOtherEndpoints:
    async def test_health_and_readiness(self, aiohttp_client, app) -> None:
        """Liveness and readiness answer 200."""
        client = await aiohttp_client(app)
        assert (await client.get("/-/healthy")).status == 200
        assert (await client.get("/-/ready")).status == 200

    async def test_landing_page_links_metrics(self, aiohttp_client, app) -> None:
        """The landing page links /metrics and names the webhook."""
        client = await aiohttp_client(app)
        html = await (await client.get("/")).text()
        assert 'href="/metrics"' in html
        assert "/webhook/alertmanager" in html

    async def test_unknown_path_is_a_json_404(self, aiohttp_client, app) -> None:
        """Errors at the edge are JSON."""
        client = await aiohttp_client(app)
        resp = await client.get("/nope")
        assert resp.status == 404
        assert (await resp.json())["error"] == "Not Found"


class TestEmbedding:
    async def test_start_exporter_serves_on_a_free_port_and_stops(self, registry, fill) -> None:
        """start_exporter binds port 0 to a free port; stop() releases it."""
        await fill("u1", 4)
        server = await start_exporter(
            registry, Settings(listen_host="127.0.0.1", listen_port=0, webhook_token="x")
        )
        try:
            assert server.port > 0
            async with ClientSession() as http, http.get(f"{server.url}/metrics") as resp:
                assert 'agent_registry_user_agents{user_id="u1"} 4' in await resp.text()
        finally:
            await server.stop()
        with pytest.raises(OSError):
            async with ClientSession() as http:
                await http.get(f"{server.url}/metrics")

    async def test_port_in_use_is_an_error(self, registry) -> None:
        """A taken port fails start-up instead of serving nothing."""
        first = await start_exporter(registry, Settings(listen_host="127.0.0.1", listen_port=0))
        try:
            with pytest.raises(OSError):
                await start_exporter(
                    registry, Settings(listen_host="127.0.0.1", listen_port=first.port)
                )
        finally:
            await first.stop()
