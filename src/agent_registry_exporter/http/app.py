"""The app factory: `create_app` builds the exporter's aiohttp application.

State hangs on typed keys (`keys`), middlewares and routes are set up by named functions,
and what needs a running loop (the remediator's connections, the sidecar's workers) opens
and closes through `app.cleanup_ctx`, unwound in reverse.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from ..common.version import __version__
from ..exporting import ExporterMetrics
from ..remediation import Decision
from ..settings import Settings
from ..sources import RegistrySource, UserIdHasher, WorkerSources, private_ids
from .keys import METRICS, SETTINGS, SOURCE
from .metrics import RENDERING, Rendering
from .middlewares import setup_middlewares
from .remediator import remediator_context, zero_decision_counters
from .routes import setup_routes
from .security import AuthFailure
from .webhook import WEBHOOK_AUTH, WebhookAuth

__all__ = ["create_app"]


def create_app(
    source: RegistrySource,
    settings: Settings | None = None,
    *,
    metrics: ExporterMetrics | None = None,
    on_decision: Callable[[Decision], None] | None = None,
) -> web.Application:
    """Build the exporter app serving /metrics, the webhook, health and a landing page.

    `on_decision` is called with every remediation decision, after it is counted.
    """
    settings = settings or Settings()
    if settings.user_id_hmac_key_file is not None:
        source = private_ids(source, UserIdHasher.from_file(settings.user_id_hmac_key_file))
    app = web.Application(client_max_size=settings.webhook_max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = metrics or ExporterMetrics(__version__)
    app[METRICS].exporter_info.labels(address=settings.instance or "").set(1)
    app[SOURCE] = source
    app[WEBHOOK_AUTH] = WebhookAuth(settings)
    app[RENDERING] = Rendering()
    zero_decision_counters(app)
    for failure in AuthFailure:
        app[METRICS].auth_failures.labels(reason=failure.value)
    setup_middlewares(app)
    setup_routes(app)
    app.cleanup_ctx.append(_worker_sources)
    app.cleanup_ctx.append(remediator_context(on_decision))
    return app


async def _worker_sources(app: web.Application) -> AsyncIterator[None]:
    """Sidecar mode: each worker's health is scraped beside its registry; closed last."""
    source = app[SOURCE]
    if not isinstance(source, WorkerSources):
        yield
        return
    app[METRICS].registry.register(source)
    yield
    await source.close()
