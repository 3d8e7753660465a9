"""Bounds on connections and request bodies, applied before any handler or authentication."""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .._meta import logger_name

__all__ = [
    "LISTEN_BACKLOG",
    "BoundedRunner",
    "ConnectionLimiter",
    "descriptor_bound",
]

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
    a scrape, which sends its request at once, gets in and is answered.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._busy: set[RequestHandler] = set()
        # Closed by us, until aiohttp forgets them (a close completes on the next loop turn).
        self._closing: set[RequestHandler] = set()

    @web.middleware
    async def track(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Marks the connection busy while its request is handled (so it is never evicted)."""
        protocol = request.protocol
        self._busy.add(protocol)
        try:
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            self._busy.discard(protocol)

    def attach(self, server: web.Server) -> None:
        """Watch every connection `server` accepts."""
        accepted = server.connection_made

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            accepted(handler, transport)
            self._admit(server, handler, transport)

        server.connection_made = connection_made  # type: ignore[method-assign]

    def _admit(
        self, server: web.Server, newcomer: RequestHandler, transport: asyncio.Transport
    ) -> None:
        current = server.connections
        self._closing.intersection_update(current)
        open_ = [h for h in current if h not in self._closing]
        if len(open_) <= self.limit:
            return
        # Oldest first (the server keeps them in accept order), and only from the older half:
        # a connection just accepted has not had its request read yet, and must survive the
        # accept bursts that follow it until it has.
        for handler in open_[: len(open_) - self.limit // 2]:
            if handler not in self._busy:
                self._closing.add(handler)
                handler.force_close()
                return
        self._closing.add(newcomer)
        transport.write(_BUSY)
        # After aiohttp has finished setting the connection up, which this call is part of.
        asyncio.get_running_loop().call_soon(newcomer.force_close)


class BoundedRunner(web.AppRunner):
    """aiohttp's runner with the connection cap attached to the server it builds."""

    def __init__(self, app: web.Application, limiter: ConnectionLimiter, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limiter = limiter

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        self._limiter.attach(server)
        return server
