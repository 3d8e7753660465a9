"""The real server under hostile clients: compressed bombs, slow or idle connections, floods.

Each test names the attack; each runs the exporter as it runs in production (its own
runner, or the console script), not aiohttp's test server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import socket
import subprocess
import urllib.request
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession
from aiohttp.http_parser import DeflateBuffer

from agent_registry_exporter import AgentRegistry, ExporterServer
from agent_registry_exporter.testing import wait_until_async

from .conftest import console_script, loopback_exporter

TOKEN = "s3cret-t0ken"
# 1 MiB of zeros per copy: the bomb inflates to `copies` MiB from a few KiB on the wire.
_MIB = bytes(1 << 20)


def gzip_bomb(mebibytes: int) -> bytes:
    """A gzip body inflating to `mebibytes` MiB of zeros."""
    return gzip.compress(_MIB * mebibytes, compresslevel=9)


@pytest.fixture
async def exporter(registry: AgentRegistry, fill) -> AsyncIterator[ExporterServer]:
    """The exporter on loopback with short bounds, so slow clients are cut off quickly."""
    await fill("leaky", 60)
    server = await loopback_exporter(
        registry, webhook_token=TOKEN, idle_timeout_seconds=0.5, body_timeout_seconds=0.5
    )
    yield server
    await server.stop()


@pytest.fixture
def inflated(monkeypatch) -> list[int]:
    """Compressed bytes aiohttp's decompressor was fed (observation only, behaviour kept)."""
    fed: list[int] = []
    original = DeflateBuffer.feed_data

    def counting(self: DeflateBuffer, chunk: bytes, size: int) -> bool:
        fed.append(size)
        return original(self, chunk, size)

    monkeypatch.setattr(DeflateBuffer, "feed_data", counting)
    return fed


async def raw_exchange(server: ExporterServer, request: bytes) -> tuple[bytes, bytes]:
    """Send raw bytes, read until the server closes; (status line + headers, body)."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(request)
        response = await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return head, body


class TestCompressedBodies:
    @pytest.mark.parametrize(
        ("method", "path"),
        [("POST", "/webhook/alertmanager"), ("POST", "/metrics"), ("PUT", "/nowhere")],
        ids=["webhook", "wrong-method", "unknown-path"],
    )
    async def test_gzip_bomb_without_a_token_is_refused_and_never_inflated(
        self, exporter, registry, inflated, method, path
    ) -> None:
        """Attack: 64 MiB of zeros in a few KiB of gzip, no token: 415, nothing inflated."""
        async with ClientSession() as http:
            resp = await http.request(
                method,
                f"{exporter.url}{path}",
                data=gzip_bomb(64),
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            )
            assert resp.status == 415
            assert "Content-Encoding" in (await resp.json())["error"]
        assert sum(inflated) == 0
        assert registry.get_session("leaky").agent_count == 60

    async def test_compressed_webhook_with_a_valid_token_is_refused_too(
        self, exporter, registry, inflated
    ) -> None:
        """A compressed body is refused whoever sends it; nothing is cleaned."""
        body = json.dumps({"version": "4", "alerts": []}).encode()
        async with ClientSession() as http:
            resp = await http.post(
                f"{exporter.url}/webhook/alertmanager",
                data=gzip.compress(body),
                headers={"Content-Encoding": "gzip", "Authorization": f"Bearer {TOKEN}"},
            )
            assert resp.status == 415
        assert sum(inflated) == 0
        assert registry.get_session("leaky").agent_count == 60

    async def test_identity_encoding_is_accepted(self, exporter) -> None:
        """`Content-Encoding: identity` is no compression: the request goes through."""
        async with ClientSession() as http:
            resp = await http.post(
                f"{exporter.url}/webhook/alertmanager",
                data=b"{}",
                headers={"Content-Encoding": "identity", "Authorization": f"Bearer {TOKEN}"},
            )
            assert resp.status == 400  # an empty payload, judged on its content


class TestSlowClients:
    async def test_connection_that_never_sends_a_request_is_closed(self, exporter) -> None:
        """Attack: connect and say nothing; the server hangs up after the idle bound."""
        head, body = await raw_exchange(exporter, b"")
        assert (head, body) == (b"", b"")

    async def test_headers_dribbled_byte_by_byte_are_cut_off(self, exporter) -> None:
        """Attack (slowloris): a byte every 50 ms never completes the headers; cut off."""
        reader, writer = await asyncio.open_connection(exporter.host, exporter.port)
        dribble = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 10_000
        closed = asyncio.ensure_future(reader.read())
        try:
            for byte in dribble:
                if closed.done():
                    break
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)
            await asyncio.wait_for(closed, timeout=30)
        finally:
            writer.close()
        assert closed.result() == b""

    async def test_webhook_body_that_never_arrives_is_408(self, exporter, registry) -> None:
        """Attack: announce 5,000 bytes, send 10: answered 408 after the body bound."""
        request = (
            b"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 5000\r\n\r\n".encode()
            + b'{"version"'
        )
        head, body = await raw_exchange(exporter, request)
        assert head.startswith(b"HTTP/1.1 408"), head
        assert "body_timeout_seconds" in json.loads(body)["error"]
        assert registry.get_session("leaky").agent_count == 60

    async def test_webhook_body_cut_off_by_the_client_is_no_error(
        self, exporter, registry, caplog
    ) -> None:
        """Attack: announce 5,000 bytes, send 10 and hang up: logged as the client's doing.

        Not an exporter failure: no ERROR record, no traceback, nothing cleaned; the next
        request is served as usual.
        """
        request = (
            b"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 5000\r\n\r\n".encode()
            + b'{"version"'
        )
        caplog.set_level("DEBUG", logger="agent_registry_exporter")
        _reader, writer = await asyncio.open_connection(exporter.host, exporter.port)
        writer.write(request)
        await writer.drain()
        await asyncio.sleep(0.1)  # the handler is reading the body now
        writer.close()
        await writer.wait_closed()
        async with ClientSession() as http, http.get(f"{exporter.url}/-/healthy") as resp:
            assert resp.status == 200

        def ours() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name.startswith("agent_registry_exporter")]

        # The cut-off handler's line, however long a loaded machine takes to get there (a
        # fixed 0.1 s sleep here was a race with the handler, not a bound on it).
        await wait_until_async(
            lambda: any("closed the connection" in r.getMessage() for r in ours()),
            message="the cut-off handler logged the client's hang-up",
        )
        assert not [r for r in ours() if r.levelno >= 40 or r.exc_info], [
            r.getMessage() for r in ours()
        ]
        assert registry.get_session("leaky").agent_count == 60


class TestConnectionFlood:
    @pytest.mark.processes
    def test_metrics_answers_under_more_slow_connections_than_file_descriptors(self) -> None:
        """Attack: 400 half-sent requests against a process allowed 256 descriptors."""
        command = f"ulimit -n 256 && exec {console_script()} serve --demo"
        env = {
            "PATH": "/usr/bin:/bin",
            "AGENT_REGISTRY_EXPORTER_LISTEN_HOST": "127.0.0.1",
            "AGENT_REGISTRY_EXPORTER_LISTEN_PORT": "0",
            "AGENT_REGISTRY_EXPORTER_WEBHOOK_TOKEN": TOKEN,
            "AGENT_REGISTRY_EXPORTER_LOG_FORMAT": "json",
        }
        proc = subprocess.Popen(
            ["bash", "-c", command],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        slow: list[socket.socket] = []
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().split()[-1]
            host, port = url.removeprefix("http://").removesuffix("/metrics").split(":")
            for _ in range(400):
                try:
                    conn = socket.create_connection((host, int(port)), timeout=2)
                except OSError:
                    break  # the server no longer accepts: the flood did its work
                conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                slow.append(conn)
            statuses = []
            for _ in range(6):  # a few tries: the flood may still be being accepted
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(url, timeout=5) as resp,  # noqa: S310 (loopback)
                ):
                    statuses.append(resp.status)
                    break
            assert statuses == [200], "no scrape got through the flood"
            assert proc.poll() is None
        finally:
            for conn in slow:
                conn.close()
            proc.terminate()
            proc.communicate(timeout=30)
