"""The exporter on its own port: `ExporterServer` runs an app from `create_app`,
`start_exporter` builds and starts one for a backend that embeds the exporter."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

from aiohttp import web

from ..common.addresses import bracket_host, format_host_port
from ..common.loggers import logger_name
from ..common.logs import show_decisions
from ..common.malformed import RequestLogger
from ..exporting import delta_users_limit
from ..registry import AgentRegistry
from ..settings import Settings
from ..sources import InProcessSource, RegistrySource
from .app import create_app
from .keys import CONNECTIONS, REMEDIATOR, SETTINGS, SOURCE, WEB_CONFIG
from .limits import LISTEN_BACKLOG
from .security import ReloadingSSLContext

__all__ = ["ExporterServer", "ListenError", "start_exporter"]

_log = logging.getLogger(logger_name("server"))


class ListenError(OSError):
    """The exporter could not listen; the message names the address and the setting to fix."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        if cause.errno in (errno.EADDRINUSE, errno.EACCES):
            self.setting = "listen_port"
        elif cause.errno == errno.EADDRNOTAVAIL or isinstance(cause, socket.gaierror):
            self.setting = "listen_host"
        else:
            self.setting = "listen_host/listen_port"
        self.address = format_host_port(host, port)
        self.reason = cause.strerror or str(cause)

    def __str__(self) -> str:
        return f"cannot listen on {self.address} (setting {self.setting}): {self.reason}"


class ExporterServer:
    """A running exporter app on its own port; `stop()` releases everything."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.port = port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else bracket_host(self.host)
        return f"{'https' if self._ssl_context() else 'http'}://{host}:{self.port}"

    def _ssl_context(self) -> ReloadingSSLContext | None:
        watcher = self.app.get(WEB_CONFIG)
        return ReloadingSSLContext(watcher.ssl_context) if watcher and watcher.tls else None

    async def start(self) -> None:
        settings = self.app[SETTINGS]
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            logger=RequestLogger(_log),  # a request aiohttp cannot parse: the client's doing
            # Never inflate a request body: an unread one is drained as wire bytes.
            auto_decompress=False,
            # aiohttp closes a connection still waiting for a complete request after this,
            # counted from connecting or from its previous answer: slow headers, idle peers.
            keepalive_timeout=settings.idle_timeout_seconds,
            # What requests still in flight get at stop() before they are cancelled.
            shutdown_timeout=settings.shutdown_grace_seconds,
        )
        await runner.setup()
        assert runner.server is not None  # set by setup()
        ssl_context = self._ssl_context()
        try:
            # Our own listener rather than a site: aiohttp's web.Server is the protocol
            # factory, seen through the connection cap, and the handshake is bounded.
            listener = await asyncio.get_running_loop().create_server(
                self.app[CONNECTIONS].protocol_factory(runner.server),
                self.host,
                self._requested_port,
                ssl=ssl_context,
                # A TLS client must finish its handshake as fast as its request headers.
                ssl_handshake_timeout=settings.idle_timeout_seconds if ssl_context else None,
                backlog=LISTEN_BACKLOG,
            )
        except OSError as exc:
            await runner.cleanup()
            raise ListenError(self.host, self._requested_port, exc) from exc
        self._runner, self._listener = runner, listener
        self.port = int(listener.sockets[0].getsockname()[1])
        instance = settings.instance
        _log.info("exporter listening on %s as instance %s", self.url, instance or "(unset)")

    async def stop(self) -> None:
        """Stop accepting, give running cleanups `shutdown_grace_seconds`, then release all.

        Each cleanup still running after the grace is logged with its user and the agents it
        has left to close; in an embedding backend it keeps running on the backend's loop.
        """
        runner, listener = self._runner, self._listener
        self._runner = self._listener = None
        if runner is None or listener is None:
            return
        listener.close()  # no new connections; requests in flight carry on
        self.app[CONNECTIONS].stop_accepting()  # nor TLS handshakes finishing meanwhile
        grace = self.app[SETTINGS].shutdown_grace_seconds
        unfinished = await self.app[REMEDIATOR].drain(grace)
        self._log_unfinished(unfinished)
        await runner.cleanup()  # requests still in flight get the same grace
        _log.info(
            "exporter stopped",
            extra={"fields": {"unfinished_cleanups": len(unfinished), "grace_seconds": grace}},
        )

    def _log_unfinished(self, unfinished: list[tuple[str | None, str]]) -> None:
        source = self.app[SOURCE]
        left = (
            source.registry.lifecycle_manager.agents_left()
            if isinstance(source, InProcessSource)
            else {}
        )
        for worker, user_id in unfinished:
            fields: dict[str, object] = {"user_id": user_id, "agents_left": left.get(user_id)}
            if worker is not None:
                fields["worker"] = worker
            _log.warning("cleanup unfinished at shutdown", extra={"fields": fields})


async def start_exporter(
    registry: AgentRegistry | RegistrySource,
    settings: Settings | None = None,
    *,
    log_decisions: bool = False,
) -> ExporterServer:
    """Serve /metrics and the webhook for `registry` on its own port (embedding).

    `log_decisions=True` makes every remediation decision one line on stderr (at
    `settings.log_level`, in `settings.log_format`) even when the host leaves logging
    unconfigured, as uvicorn does; a host that configured logging keeps its handlers.
    """
    settings = settings or Settings()
    if log_decisions:
        show_decisions(settings.log_level, settings.log_format)
    source: RegistrySource = (
        InProcessSource(
            registry,
            leak_grace_seconds=settings.leak_grace_seconds,
            delta_renders_up_to=delta_users_limit(
                settings.max_user_series, settings.user_series_min_pressure
            ),
        )
        if isinstance(registry, AgentRegistry)
        else registry
    )
    server = ExporterServer(
        create_app(source, settings), settings.listen_host, settings.listen_port
    )
    await server.start()
    return server
