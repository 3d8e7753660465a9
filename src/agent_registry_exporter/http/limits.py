"""Bounds on connections, applied before any handler or authentication.

Public API only: aiohttp's `web.Server` is documented as a protocol factory for
`loop.create_server`; `ConnectionLimiter.protocol_factory` wraps it, so every accepted
connection is seen (and may be refused or make room) before aiohttp is handed it.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable

from aiohttp import web

from ..common.json_errors import Handler
from ..common.loggers import logger_name

__all__ = ["LISTEN_BACKLOG", "ConnectionLimiter", "descriptor_bound"]

_log = logging.getLogger(logger_name("serving.limits"))

# Sockets the kernel queues for accept; the loop accepts up to this many in one go.
LISTEN_BACKLOG = 128
# Descriptors kept for everything but client connections (logs, the registry's own files).
_RESERVED_FILES = 64
# Written to a connection refused because every other one is serving a request.
_BUSY_BODY = b'{"error": "too many connections; retry later"}\n'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


def descriptor_bound(wanted: int) -> int:
    """`wanted`, or less when the process's open-file limit cannot hold that many.

    Room is kept for one accept burst (the listen backlog: the loop accepts that many
    sockets before any of them is admitted) and for the files the process itself needs;
    half of the rest may be connections, the other half is left to the embedding backend.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    bound = max((soft - LISTEN_BACKLOG - _RESERVED_FILES) // 2, 1)
    if wanted <= bound:
        return wanted
    _log.warning(
        "max_connections=%d lowered to %d: the process may open only %d files", wanted, bound, soft
    )
    return bound


class ConnectionLimiter:
    """At most `limit` open connections; past it the oldest idle one is closed.

    "Idle" means not inside a request handler: still sending its headers, or waiting between
    keep-alive requests. A flood of slow clients therefore only ever displaces itself, while
    a scrape, which sends its request at once, gets in and is answered. A TLS connection
    counts once its handshake is done (until then `ssl_handshake_timeout` bounds it).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # In accept order; closed ones leave when their transport reports them lost.
        self._open: dict[_Connection, None] = {}
        self._busy: set[asyncio.BaseTransport] = set()
        self.accepting = True

    @web.middleware
    async def track(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Marks the connection busy while its request is handled (so it is never evicted)."""
        transport = request.transport
        if transport is None:  # the client is already gone
            return await handler(request)
        self._busy.add(transport)
        try:
            return await handler(request)
        finally:
            self._busy.discard(transport)

    def protocol_factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for `loop.create_server`: `server`'s, within the cap."""
        return lambda: _Connection(self, server)

    def stop_accepting(self) -> None:
        """From now on close every new connection at once (the server is stopping)."""
        self.accepting = False

    def admit(self, newcomer: _Connection) -> bool:
        """Count `newcomer` in; True when it may be served, once the oldest idle connection
        made room if needed (False: it is to be closed at once)."""
        self._open[newcomer] = None
        if not self.accepting:
            return False
        open_ = [c for c in self._open if not c.closing]
        if len(open_) <= self.limit:
            return True
        # Oldest first, and only from the older half: a connection just accepted has not had
        # its request read yet, and must survive the accept bursts that follow it until it has.
        for connection in open_[: len(open_) - self.limit // 2]:
            if connection is not newcomer and connection.transport not in self._busy:
                connection.close()
                return True
        return False

    def forget(self, connection: _Connection) -> None:
        """`connection` is closed."""
        self._open.pop(connection, None)


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's protocol for it once admitted, nothing before.

    Every protocol callback asyncio makes is passed on, so aiohttp sees the connection as
    if it had been created by its own site.
    """

    def __init__(self, limiter: ConnectionLimiter, server: web.Server) -> None:
        self._limiter = limiter
        self._server = server
        self._inner: asyncio.Protocol | None = None
        self.transport: asyncio.BaseTransport | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if not self._limiter.admit(self):
            self.closing = True
            if self._limiter.accepting:  # else the server is stopping: nothing to say
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(_BUSY)
            transport.close()
            return
        self._inner = self._server()
        self._inner.connection_made(transport)

    def close(self) -> None:
        """Make room: close this (idle) connection; aiohttp learns it as a lost connection."""
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._limiter.forget(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()
