"""The exporter's routes, all in one place."""

from __future__ import annotations

from aiohttp import web

from ..common.endpoints import HEALTHY_PATH, LANDING_PATH, METRICS_PATH, READY_PATH, WEBHOOK_PATH
from .metrics import metrics
from .probes import healthy, landing, ready
from .webhook import webhook

__all__ = ["setup_routes"]


def setup_routes(app: web.Application) -> None:
    """Route /metrics, the webhook, the probes and the landing page."""
    app.router.add_get(LANDING_PATH, landing)
    app.router.add_get(METRICS_PATH, metrics)
    app.router.add_post(WEBHOOK_PATH, webhook)
    app.router.add_get(HEALTHY_PATH, healthy)
    app.router.add_get(READY_PATH, ready)
