"""The exporter's middlewares, outermost first: the connection cap's bookkeeping, the web
config (client certificates, rate limit, basic auth, headers), the refusal of compressed
bodies, JSON errors."""

from __future__ import annotations

import logging

from aiohttp import web

from ..common.bodies import refuse_encoded_bodies
from ..common.endpoints import WEBHOOK_PATH
from ..common.json_errors import json_errors
from ..common.loggers import logger_name
from .keys import CONNECTIONS, METRICS, SETTINGS, WEB_CONFIG
from .limits import ConnectionLimiter, descriptor_bound
from .security import CertificateExpiry, PortGuard, WebConfigWatcher

__all__ = ["setup_middlewares"]

_log = logging.getLogger(logger_name("server"))


def setup_middlewares(app: web.Application) -> None:
    """Add the middlewares; sets `CONNECTIONS`, and `WEB_CONFIG` when a web config is set."""
    settings = app[SETTINGS]
    connections = ConnectionLimiter(descriptor_bound(settings.max_connections))
    app[CONNECTIONS] = connections
    app.middlewares.append(connections.track)
    if settings.web_config_file is not None:
        guard = PortGuard(
            WebConfigWatcher(settings.web_config_file),
            app[METRICS].auth_failures,
            own_auth_paths=frozenset({WEBHOOK_PATH}),
        )
        # Inside the connection bound, before anything reads a body or the registry.
        app.middlewares.append(guard)
        app[WEB_CONFIG] = guard.watcher
        app.on_response_prepare.append(guard.add_headers)
        if guard.watcher.tls:
            # The served certificate's expiry, scraped beside the registry.
            app[METRICS].registry.register(CertificateExpiry(guard.watcher))
    app.middlewares.append(refuse_encoded_bodies)
    app.middlewares.append(json_errors(_log, whose_log="the exporter's log"))
