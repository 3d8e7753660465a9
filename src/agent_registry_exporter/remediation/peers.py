"""Who the other replicas are: `Settings.peers` resolved to the `host:port` instances.

`peers` is a DNS name (a headless Service: one A/AAAA record per ready pod, each taken with
the exporter's port, that of our own `instance`) or a comma-separated list of `host[:port]`
entries, each resolved the same way (an IP address resolves to itself). Resolution goes
through the system resolver, is cached for `ttl` seconds, and is redone at once, at most
every `refresh_interval` seconds, when an alert names an instance the cache does not hold
(a pod that just became ready).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from ..common.addresses import format_host_port, parse_peers, split_host_port
from ..common.loggers import logger_name

__all__ = [
    "PeerSet",
    "Peers",
    "Resolver",
    "parse_peers",
    "split_host_port",
    "system_resolver",
]

_log = logging.getLogger(logger_name("remediation.peers"))

# "No such name" means no peer right now (a headless Service with no ready pod), not a
# resolver failure.
_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


class Resolver(Protocol):
    """Resolves a host name to IP addresses (the seam tests inject faults through)."""

    async def __call__(self, host: str, port: int) -> list[str]: ...


async def system_resolver(host: str, port: int) -> list[str]:
    """A and AAAA records through the system resolver (the loop's getaddrinfo)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class PeerSet:
    """The peers known now; `error` says why the last resolution was incomplete."""

    addresses: frozenset[str]
    error: str | None = None


class Peers:
    """The current peers of this replica, resolved from `spec` and cached briefly."""

    def __init__(
        self,
        spec: str,
        own_instance: str,
        *,
        resolver: Resolver = system_resolver,
        ttl: float = 5.0,
        refresh_interval: float = 1.0,
        resolve_timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.own_instance = own_instance
        self._entries = parse_peers(spec)
        _, own_port = split_host_port(own_instance, port_required=True)
        assert own_port is not None
        self._default_port = own_port
        self._resolver = resolver
        self.ttl = ttl
        self.refresh_interval = refresh_interval
        self._resolve_timeout = resolve_timeout
        self._clock = clock
        self._current = PeerSet(frozenset(), "not resolved yet")
        self._resolved_at: float | None = None
        self._lock = asyncio.Lock()

    async def lookup(self, instances: Iterable[str]) -> PeerSet:
        """The peers, re-resolved first when stale or when one of `instances` is unknown."""
        async with self._lock:  # one resolution at a time; waiters see its result
            now = self._clock()
            age = None if self._resolved_at is None else now - self._resolved_at
            unknown = any(i not in self._current.addresses for i in instances)
            if age is None or age >= self.ttl or (unknown and age >= self.refresh_interval):
                await self._refresh()
            return self._current

    async def _refresh(self) -> None:
        found: set[str] = set()
        failures: list[str] = []
        for host, entry_port in self._entries:
            explicit_port = entry_port is not None
            port = entry_port or self._default_port
            try:
                addresses = await asyncio.wait_for(
                    self._resolver(host, port), self._resolve_timeout
                )
            except socket.gaierror as exc:
                if exc.errno not in _NO_SUCH_NAME:
                    failures.append(f"{host}: {exc.strerror or exc}")
                addresses = []
            except (OSError, TimeoutError) as exc:
                failures.append(f"{host}: {exc!r}")
                continue
            found.update(format_host_port(a, port) for a in addresses)
            if addresses and explicit_port:
                # A listed `host:port` is also the instance label a static target gets.
                found.add(format_host_port(host, port))
        self._resolved_at = self._clock()
        if failures:
            # Keep what was known: a resolver hiccup must not turn peers into strangers.
            error = "resolving peers failed: " + "; ".join(failures)
            self._current = PeerSet(frozenset(found | self._current.addresses), error)
            _log.warning(error)
            return
        if not found:
            _log.warning("peers %r resolved to no address", self.spec)
        self._current = PeerSet(frozenset(found))
