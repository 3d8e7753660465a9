"""What the exporter answers about itself: liveness, readiness and the landing page.

Probes are unauthenticated, so they name no reason: the log does.
"""

from __future__ import annotations

import logging
from html import escape as html_escape

from aiohttp import web

from ..common.endpoints import HEALTHY_PATH, METRICS_PATH, READY_PATH, WEBHOOK_PATH
from ..common.json_errors import json_error
from ..common.loggers import logger_name
from ..common.version import __version__
from ..sources import WorkerSources, peek
from .keys import SETTINGS, SOURCE
from .metrics import RENDERING

__all__ = ["healthy", "landing", "ready"]

_log = logging.getLogger(logger_name("server"))


async def healthy(request: web.Request) -> web.Response:
    """Liveness: the loop answers."""
    return web.Response(text="healthy\n")


async def ready(request: web.Request) -> web.Response:
    """Readiness: the source answers and the last /metrics render succeeded."""
    source = request.app[SOURCE]
    try:
        if isinstance(source, WorkerSources):
            # A cheap call per worker: a probe must not cost the backends a snapshot each.
            # The reason (a path, a worker's error) is not the caller's to read; the source
            # logs it, and agent_registry_source_up shows it.
            if await source.ready() is not None:
                return json_error(503, "no worker answers; see the exporter's log")
        else:
            await peek(source)
    except Exception:
        _log.exception("readiness check failed")
        return json_error(503, "registry unavailable; see the exporter's log")
    if request.app[RENDERING].last_error is not None:
        return json_error(503, "the last /metrics render failed; see the exporter's log")
    return web.Response(text="ready\n")


async def landing(request: web.Request) -> web.Response:
    """A page linking the endpoints, with the replica's identity."""
    links = "".join(
        f'<li><a href="{path}">{path}</a> {what}</li>'
        for path, what in [
            (METRICS_PATH, "metrics"),
            (HEALTHY_PATH, "liveness"),
            (READY_PATH, "readiness"),
        ]
    )
    settings = request.app[SETTINGS]
    replica = (
        f"<p>Instance: <code>{html_escape(settings.instance or 'unset')}</code>; peers: "
        f"<code>{html_escape(settings.peers or 'none')}</code></p>"
    )
    html = (
        "<!doctype html><html><head><title>agent-registry-exporter</title></head><body>"
        f"<h1>agent-registry-exporter {__version__}</h1>{replica}<ul>{links}</ul>"
        f"<p>Alertmanager webhook: <code>POST {WEBHOOK_PATH}</code></p></body></html>"
    )
    return web.Response(text=html, content_type="text/html")
