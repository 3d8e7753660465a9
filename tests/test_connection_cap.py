"""The connection cap under attack: idle connections make room, busy ones are never cut.

Each test runs the exporter as it runs in production (`start_exporter` on loopback) and
talks raw HTTP, so what it sees is what a hostile client sees.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from agent_registry_exporter import AgentRegistry, ExporterServer

from .conftest import loopback_exporter

TOKEN = "s3cret-t0ken"
# A generous bound on waiting for an answer (never asserted on: a timeout fails the test).
_ANSWER_WITHIN = 30


@pytest.fixture
async def capped(registry: AgentRegistry) -> AsyncIterator[ExporterServer]:
    """An exporter allowing 4 connections, idle ones kept long enough for each test."""
    server = await loopback_exporter(
        registry,
        webhook_token=TOKEN,
        max_connections=4,
        idle_timeout_seconds=60,
        body_timeout_seconds=60,
        shutdown_grace_seconds=1,
    )
    yield server
    await server.stop()


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def connections(server: ExporterServer, count: int) -> AsyncIterator[list[Connection]]:
    """`count` connections to `server`, closed on the way out."""
    opened: list[Connection] = []
    try:
        for _ in range(count):
            opened.append(await asyncio.open_connection(server.host, server.port))
        yield opened
    finally:
        for _, writer in opened:
            writer.close()


async def answer(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), timeout=_ANSWER_WITHIN)


async def status_line(reader: asyncio.StreamReader) -> bytes:
    """The status line of the next answer on a connection the server keeps open."""
    return await asyncio.wait_for(reader.readline(), timeout=_ANSWER_WITHIN)


async def busy_webhook(connection: Connection) -> None:
    """Make `connection` a request inside its handler: a webhook body that never comes."""
    reader, writer = connection
    writer.write(
        b"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 5000\r\n\r\n".encode()
    )
    # aiohttp answers 100 Continue on its way into the handler, which then waits for the body.
    line = await status_line(reader)
    assert line.startswith(b"HTTP/1.1 100"), line
    await reader.readline()  # the blank line ending the interim answer


class TestConnectionCap:
    async def test_the_oldest_idle_connection_makes_room_for_a_newcomer(self, capped) -> None:
        """Attack: fill the cap with half-sent requests; a scrape still gets in and is
        answered, the oldest idle connection is closed, the younger ones are left alone."""
        async with connections(capped, 4) as idle:
            for _, writer in idle:
                writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n")  # headers never end
            async with connections(capped, 1) as (scrape,):
                scrape[1].write(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert (await answer(scrape[0])).startswith(b"HTTP/1.1 200")
            assert await answer(idle[0][0]) == b""  # the oldest, closed to make room
            for reader, writer in idle[1:]:
                writer.write(b"Connection: close\r\n\r\n")  # the rest of the headers
                assert (await answer(reader)).startswith(b"HTTP/1.1 200")

    async def test_a_newcomer_is_refused_when_every_older_connection_is_busy(self, capped) -> None:
        """Attack: every connection inside a handler; the newcomer gets a JSON 503 and the
        requests being served are never cut."""
        async with connections(capped, 4) as held:
            for connection in held:
                await busy_webhook(connection)
            async with connections(capped, 1) as (newcomer,):
                refused = await answer(newcomer[0])
            head, _, body = refused.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503"), head
            assert b"too many connections" in body
            for reader, writer in held:
                writer.write(b"{}" + b" " * 4998)  # the body at last: each request is answered
                assert (await status_line(reader)).startswith(b"HTTP/1.1 400")
