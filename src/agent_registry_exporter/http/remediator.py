"""The `Remediator` the webhook hands alerts to, opened and closed with the app: its router
to workers and peer replicas holds connections that only a running app may open."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from ..common.endpoints import WEBHOOK_PATH
from ..remediation import (
    Decision,
    Forwarder,
    InstanceRouter,
    Outcome,
    Peers,
    RemediationPolicy,
    Remediator,
)
from ..settings import Settings
from .keys import METRICS, REMEDIATOR, SETTINGS, SOURCE, WEB_CONFIG
from .security import ReloadingSSLContext, WebConfigWatcher
from .webhook import WEBHOOK_AUTH

__all__ = ["remediator_context"]

_Context = Callable[[web.Application], AsyncIterator[None]]


def remediator_context(on_decision: Callable[[Decision], None] | None) -> _Context:
    """A `cleanup_ctx` entry setting `REMEDIATOR`; `on_decision` sees each decision, counted."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        metrics = app[METRICS]

        def count(decision: Decision) -> None:
            metrics.cleanups.labels(trigger="webhook", result=decision.outcome.value).inc()
            if decision.agents_cleaned:
                metrics.cleaned_agents.inc(decision.agents_cleaned)
            if on_decision is not None:
                on_decision(decision)

        settings = app[SETTINGS]
        router = _router(settings, app[WEBHOOK_AUTH].token, app.get(WEB_CONFIG))
        app[REMEDIATOR] = Remediator(
            app[SOURCE],
            RemediationPolicy.from_settings(settings),
            on_decision=count,
            router=router,
        )
        yield
        await router.close()

    return context


def zero_decision_counters(app: web.Application) -> None:
    """Every outcome's counter at 0, so the first error is an increase that rules can see."""
    for outcome in Outcome:
        app[METRICS].cleanups.labels(trigger="webhook", result=outcome.value)


def _router(
    settings: Settings, token: Callable[[], str | None], web_config: WebConfigWatcher | None
) -> InstanceRouter:
    if settings.peers is None or settings.instance is None:
        return InstanceRouter(settings.instance)
    tls = web_config is not None and web_config.tls
    forwarder = Forwarder(
        settings.instance,
        path=WEBHOOK_PATH,
        token=token,
        timeout_seconds=settings.forward_timeout_seconds,
        max_request_bytes=settings.webhook_max_body_bytes,  # every peer shares our limit
        # A peer answers one short decision per alert it was sent: bounded like a request.
        max_response_bytes=2 * settings.webhook_max_body_bytes,
        # Peers serve the same web config: HTTPS when it says so, with its newest files.
        scheme="https" if tls else "http",
        ssl_context=(
            ReloadingSSLContext(web_config.peer_context, ssl.PROTOCOL_TLS_CLIENT)
            if web_config is not None and tls
            else None
        ),
    )
    return InstanceRouter(settings.instance, Peers(settings.peers, settings.instance), forwarder)
