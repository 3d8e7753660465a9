"""A local replica fleet: exporters on 127.0.0.2, .3, .4 (one port, like pods) behind a
round-robin TCP proxy standing in for the Kubernetes Service.

Used by the end-to-end replica tests and the forwarding benchmark. Everything listens on
loopback and is stopped by handle.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..common.addresses import format_host_port, split_host_port
from ..http import ExporterServer, create_app
from ..registry import AgentRegistry
from ..remediation import Decision
from ..settings import Settings
from ..sources import InProcessSource, RegistrySource
from .ports import free_port_on, start_on_free_port_async

__all__ = ["LocalFleet", "Replica", "RoundRobinProxy"]

_CHUNK = 64 * 1024


class RoundRobinProxy:
    """Hands each new TCP connection to the next backend, like kube-proxy does a Service's.

    `pause()` holds every new connection and every byte in flight until `resume()` (`held`
    counts what waited): the tests use it to keep a delivery back while they stop a replica.
    """

    def __init__(self, backends: Sequence[tuple[str, int]], host: str = "127.0.0.1") -> None:
        self.backends = list(backends)
        self.host = host
        self.port = 0
        self.connections: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.held = 0
        self._next = 0
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.resume()
        if self._server is not None:
            self._server.close()
            # Closing both ends lets every relay finish by itself (a cancelled connection
            # handler makes asyncio's stream callback log an error).
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    async def _pass(self) -> None:
        if not self._open.is_set():
            self.held += 1
            await self._open.wait()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._pass()
            host, port = self.backends[self._next % len(self.backends)]
            self._next += 1
            backend = format_host_port(host, port)
            try:
                up_reader, up_writer = await asyncio.open_connection(host, port)
            except OSError:
                self.refused[backend] += 1
                return
            self.connections[backend] += 1
            self._writers.add(up_writer)
            try:
                await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
        finally:
            writer.close()
            self._writers.discard(writer)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(_CHUNK):
                await self._pass()
                writer.write(chunk)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


@dataclass
class Replica:
    """One exporter replica with its own registry (or `source`, e.g. a sidecar's);
    decisions recorded with their time."""

    address: str
    settings: Settings
    registry: AgentRegistry = field(default_factory=AgentRegistry)
    source: RegistrySource | None = None
    decisions: list[tuple[float, Decision]] = field(default_factory=list)
    server: ExporterServer | None = None

    async def start(self) -> None:
        def record(decision: Decision) -> None:
            self.decisions.append((time.monotonic(), decision))

        source = self.source or InProcessSource(self.registry)
        app = create_app(source, self.settings, on_decision=record)
        host, port = split_host_port(self.address, port_required=True)
        assert port is not None
        self.server = ExporterServer(app, host, port)
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    def outcomes(self, user_id: str) -> list[str]:
        """This replica's decisions about `user_id`, oldest first."""
        return [d.outcome.value for _, d in self.decisions if d.user_id == user_id]


@dataclass
class LocalFleet:
    """Replicas on `hosts` (IPv4 or IPv6), one shared port, peers listed, behind a
    round-robin proxy; each knows its own instance from `instance_host`, as in a pod."""

    hosts: Sequence[str]
    token: str
    settings: dict[str, Any] = field(default_factory=dict)
    replicas: list[Replica] = field(default_factory=list)
    proxy: RoundRobinProxy | None = None

    @property
    def targets(self) -> list[str]:
        return [r.address for r in self.replicas]

    async def start(self) -> None:
        """Every replica on one port free on all hosts (another one if it is taken)."""
        await start_on_free_port_async(self._start_on, choose=lambda: free_port_on(self.hosts))

    async def _start_on(self, port: int) -> None:
        addresses = [format_host_port(host, port) for host in self.hosts]
        peers = ",".join(addresses) if len(addresses) > 1 else None
        self.replicas = []
        for host, address in zip(self.hosts, addresses, strict=True):
            settings = Settings(
                listen_host=host,
                listen_port=port,
                webhook_token=self.token,
                instance_host=host,
                peers=peers,
                **self.settings,
            )
            self.replicas.append(Replica(address, settings))
        try:
            for replica in self.replicas:
                await replica.start()
            self.proxy = RoundRobinProxy([(h, port) for h in self.hosts])
            await self.proxy.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.stop()
        for replica in self.replicas:
            await replica.stop()

    def cleaned(self, user_id: str) -> list[tuple[str, float]]:
        """(replica address, time) of every `cleaned` decision about `user_id`."""
        return [
            (r.address, at)
            for r in self.replicas
            for at, d in r.decisions
            if d.user_id == user_id and d.outcome.value == "cleaned"
        ]
