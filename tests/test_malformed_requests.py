"""Attack: requests aiohttp cannot parse (a request line or a header past its 8190-byte
limit, garbage bytes) on the exporter's port and on a worker's registry socket. Anyone who
reaches the port can send them: each is the client's mistake, logged at INFO in one line
(no ERROR, no traceback in the backend's log), answered 400, and the server serves on."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent_registry_exporter import AgentRegistry, Settings, start_exporter
from agent_registry_exporter.common.malformed import RequestLogger
from agent_registry_exporter.sources import serve_registry

ATTACKS = {
    "long request line": b"GET /v1/snapshot?since=1&epoch=" + b"x" * 9000 + b" HTTP/1.1\r\n\r\n",
    "long header": b"GET /metrics HTTP/1.1\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n",
    "garbage": b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
}


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes):
    writer.write(data)
    await writer.drain()
    answer = await reader.read(65536)
    writer.close()
    return answer


def assert_logged_as_the_clients_doing(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [], [r.getMessage() for r in errors]
    (line,) = [r for r in caplog.records if "malformed request" in r.getMessage()]
    assert line.levelno == logging.INFO
    assert line.exc_info is None
    assert "\n" not in line.getMessage()
    assert "x" * 200 not in line.getMessage()


@pytest.mark.parametrize("attack", ATTACKS)
async def test_exporter_port_logs_a_malformed_request_as_the_clients_doing(caplog, attack) -> None:
    caplog.set_level(logging.DEBUG)
    server = await start_exporter(AgentRegistry(), Settings(listen_host="127.0.0.1", listen_port=0))
    try:
        caplog.clear()
        answer = await exchange(
            *await asyncio.open_connection("127.0.0.1", server.port), ATTACKS[attack]
        )
        assert answer.startswith((b"HTTP/1.0 400 ", b"HTTP/1.1 400 "))
        assert_logged_as_the_clients_doing(caplog)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        ok = await exchange(reader, writer, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 ")
    finally:
        await server.stop()


@pytest.mark.parametrize("attack", ATTACKS)
async def test_registry_socket_logs_a_malformed_request_as_the_clients_doing(
    caplog, tmp_path, attack
) -> None:
    caplog.set_level(logging.DEBUG)
    handle = await serve_registry(AgentRegistry(), tmp_path, worker="w0", strict=True)
    try:
        caplog.clear()
        assert handle.path is not None
        answer = await exchange(*await asyncio.open_unix_connection(handle.path), ATTACKS[attack])
        assert answer.startswith((b"HTTP/1.0 400 ", b"HTTP/1.1 400 "))
        assert_logged_as_the_clients_doing(caplog)
    finally:
        await handle.stop()


def test_any_other_error_aiohttp_logs_keeps_its_level_and_traceback(caplog) -> None:
    """Only the parser's complaints are the client's: anything else stays an ERROR."""
    logger = RequestLogger(logging.getLogger("agent_registry_exporter.server"))
    try:
        raise RuntimeError("a bug of ours")
    except RuntimeError as exc:
        logger.exception("Error handling request from %s", "127.0.0.1", exc_info=exc)
    (record,) = caplog.records
    assert (record.levelno, record.exc_info[0]) == (logging.ERROR, RuntimeError)
