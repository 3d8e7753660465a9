"""/metrics is sent in pieces: a scraper hanging up halfway is routine, not an error."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

from aiohttp import ClientSession

from agent_registry_exporter import AgentRegistry, Settings, start_exporter

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
