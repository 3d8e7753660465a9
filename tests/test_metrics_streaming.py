"""/metrics is sent in pieces: a scraper hanging up halfway is routine, not an error."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import struct
import urllib.request

from aiohttp import ClientSession, web

from agent_registry_exporter import AgentRegistry, Settings, start_exporter
from agent_registry_exporter.http.metrics import batches

from .test_exposition import PROMETHEUS_ACCEPT


async def test_a_scraper_hanging_up_mid_body_leaves_no_error(caplog) -> None:
    """Reset after the first bytes of a multi-megabyte body: nothing logged, next scrape fine."""
    registry = AgentRegistry()
    for n in range(30_000):
        await registry.register_user_agent(f"user-{n:06d}-{'x' * 40}", "a", object())
    server = await start_exporter(
        registry,
        Settings(listen_host="127.0.0.1", listen_port=0, max_user_series=30_000, webhook_token="t"),
    )
    try:
        caplog.set_level(logging.DEBUG, logger="agent_registry_exporter")
        for _ in range(3):
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n")
            assert (await reader.readexactly(12)).startswith(b"HTTP/1.1 200")
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()  # an RST, with most of the body still unsent
        async with ClientSession() as http:
            headers = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
            async with http.get(f"{server.url}/metrics", headers=headers) as resp:
                assert resp.status == 200
                assert (await resp.text()).count("agent_registry_user_agents{") == 30_000
    finally:
        await server.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [], [r.getMessage() for r in errors]


class TestWrites:
    def test_pieces_are_joined_into_writes_of_about_the_batch_size(self) -> None:
        """Small pieces go out in runs of at least the batch size, a large one alone, the
        bytes and their order unchanged."""
        parts = [bytes([n % 256]) * (n % 7 + 1) for n in range(500)] + [b"L" * 100, b"end"]
        written = list(batches(parts, size=64))
        assert b"".join(written) == b"".join(parts)
        assert all(len(w) >= 64 for w in written[:-1])
        assert all(len(w) < 64 + 100 for w in written)
        assert list(batches([], size=64)) == []

    async def test_a_large_body_lets_the_loop_run_between_writes(self) -> None:
        """Thousands of pieces, read at once by a client in another thread (so no write
        waits for the socket): another task on the host's loop runs between every two
        writes of the body."""
        registry = AgentRegistry()
        for n in range(20_000):
            await registry.register_user_agent(f"user-{n:06d}", "a", object())
        server = await start_exporter(
            registry,
            Settings(
                listen_host="127.0.0.1", listen_port=0, max_user_series=20_000, webhook_token="t"
            ),
        )
        events: list[str] = []

        async def tick() -> None:
            while True:
                await asyncio.sleep(0)
                if events:
                    events.append("tick")

        original = web.StreamResponse.write

        async def recorded(self: web.StreamResponse, data: bytes) -> None:
            events.append("write")
            await original(self, data)

        def fetch() -> bytes:
            with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as resp:  # noqa: S310
                return bytes(resp.read())

        ticker = asyncio.create_task(tick())
        web.StreamResponse.write = recorded  # type: ignore[method-assign]
        try:
            body = await asyncio.to_thread(fetch)
        finally:
            web.StreamResponse.write = original  # type: ignore[method-assign]
            ticker.cancel()
            await server.stop()
        assert body.count(b"agent_registry_user_agents{") == 20_000
        writes = [n for n, event in enumerate(events) if event == "write"]
        assert len(writes) > 10
        assert all(b - a > 1 for a, b in itertools.pairwise(writes))
