"""Certificates made in the test (trustme), web config files, and a running exporter."""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import pytest_asyncio
import trustme

from agent_registry_exporter import AgentRegistry, InProcessSource, Settings
from agent_registry_exporter.http import ExporterServer, create_app

# The lowest cost bcrypt allows: the tests check behaviour, not bcrypt's slowness.
FAST_COST = 4
WEBHOOK_TOKEN = "hook-t0ken"


def basic(user: str, password: str) -> dict[str, str]:
    """The Authorization header of HTTP basic auth."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bcrypt_hash(password: str, cost: int = FAST_COST) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


@dataclass
class Pki:
    """A CA and the files a web config names, in the test's own directory."""

    dir: Path
    ca: trustme.CA

    def server_cert(self, name: str = "server", *identities: str) -> trustme.LeafCert:
        cert = self.ca.issue_cert(*(identities or ("127.0.0.1", "localhost")))
        cert.private_key_pem.write_to_path(str(self.dir / f"{name}.key"))
        cert.cert_chain_pems[0].write_to_path(str(self.dir / f"{name}.crt"))
        return cert

    def client_context(self, *identities: str) -> ssl.SSLContext:
        """A client trusting the CA; with identities, it presents a certificate for them."""
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        if identities:
            self.ca.issue_cert(*identities).configure_cert(ctx)
        return ctx

    def write(self, text: str, name: str = "web.yml") -> Path:
        path = self.dir / name
        path.write_text(text)
        return path


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pki(tmp_path: Path, ca: trustme.CA) -> Pki:
    made = Pki(tmp_path, ca)
    made.server_cert()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return made


Serve = Callable[..., Any]


@pytest_asyncio.fixture
async def serve(registry: AgentRegistry) -> AsyncIterator[Serve]:
    """Start the exporter on 127.0.0.1 with these settings; stopped after the test."""
    started: list[ExporterServer] = []

    async def start(**settings: Any) -> ExporterServer:
        full = Settings(
            listen_host="127.0.0.1", listen_port=0, webhook_token=WEBHOOK_TOKEN, **settings
        )
        server = ExporterServer(create_app(InProcessSource(registry), full), "127.0.0.1", 0)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


async def get(
    url: str,
    ctx: ssl.SSLContext | None = None,
    **kwargs: Any,
) -> tuple[int, dict[str, str], str]:
    """One request on a fresh connection: (status, headers, body)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, ssl=ctx if ctx is not None else False, **kwargs) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.text()
