"""The exporter's HTTP server: `create_app` builds it, `start_exporter` embeds it."""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from html import escape as html_escape
from typing import Any

from aiohttp import hdrs, web
from pydantic import ValidationError

from .._meta import __version__, logger_name
from ..common.bodies import refuse_encoded_bodies
from ..common.endpoints import WEBHOOK_PATH
from ..common.json_errors import json_error, json_errors
from ..common.logs import show_decisions
from ..exporting.renderer import ExporterMetrics, Renderer, wants_gzip, wants_openmetrics
from ..registry import AgentRegistry
from ..remediation import (
    HOP_HEADER,
    Decision,
    Forwarder,
    InstanceRouter,
    Outcome,
    Peers,
    RemediationPolicy,
    Remediator,
    WebhookPayload,
)
from ..settings import ENV_PREFIX, Settings
from ..sources import (
    InProcessSource,
    RegistrySource,
    UserIdHasher,
    WorkerSources,
    private_ids,
)
from .limits import (
    LISTEN_BACKLOG,
    BoundedRunner,
    ConnectionLimiter,
    descriptor_bound,
)
from .security import (
    AuthFailure,
    HandshakeBoundSite,
    PortGuard,
    ReloadingSSLContext,
    WebConfigWatcher,
)

__all__ = ["ExporterServer", "ListenError", "create_app", "start_exporter"]

_log = logging.getLogger(logger_name("server"))

# Two renders at once at most: a burst of scrapes queues instead of piling up threads.
_MAX_CONCURRENT_RENDERS = 2


class _WebhookAuth:
    """The bearer token, re-read from its file when its content changes (secret rotation).

    The file is read on every webhook request: a few microseconds for a small file, and
    unlike a stat it notices a rewrite that keeps size and mtime (a restored mtime, a
    coarse-grained filesystem clock).
    """

    def __init__(self, settings: Settings) -> None:
        self.allow_unauthenticated = settings.webhook_allow_unauthenticated
        self._file = settings.webhook_token_file
        self._token = settings.resolved_webhook_token()
        self._problem: str | None = None

    def token(self) -> str | None:
        if self._file is None:
            return self._token
        try:
            read = Settings.read_token_file(self._file)
        except ValueError as exc:
            if self._problem != str(exc):
                self._problem = str(exc)  # warned once per distinct failure
                # Keep the last good token: a half-written or vanished file must not lock
                # out Alertmanager, nor open the endpoint.
                _log.warning("webhook token not reloaded: %s", exc)
            return self._token
        self._problem = None
        if read != self._token:
            self._token = read
            _log.info("webhook token reloaded from %s", self._file)
        return self._token


@dataclass
class _RenderHealth:
    """Why the last /metrics render failed, until one succeeds; /-/ready reports it."""

    last_error: str | None = None


SOURCE = web.AppKey("source", RegistrySource)
SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", ExporterMetrics)
REMEDIATOR = web.AppKey("remediator", Remediator)
_AUTH = web.AppKey("webhook_auth", _WebhookAuth)
_RENDER_SLOTS = web.AppKey("render_slots", asyncio.Semaphore)
_RENDER_HEALTH = web.AppKey("render_health", _RenderHealth)
_CONNECTIONS = web.AppKey("connections", ConnectionLimiter)
WEB_CONFIG = web.AppKey("web_config", WebConfigWatcher)
_RENDERER = web.AppKey("renderer", Renderer)


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
    metrics = metrics or ExporterMetrics(__version__)
    auth = _WebhookAuth(settings)
    if auth.token() is None and not auth.allow_unauthenticated:
        _log.warning(
            "webhook disabled: no token configured; set %sWEBHOOK_TOKEN or %sWEBHOOK_TOKEN_FILE "
            "(or %sWEBHOOK_ALLOW_UNAUTHENTICATED=true on a trusted network)",
            ENV_PREFIX,
            ENV_PREFIX,
            ENV_PREFIX,
        )

    # Zero-initialised, so the first error is an increase that rules can see.
    for outcome in Outcome:
        metrics.cleanups.labels(trigger="webhook", result=outcome.value)

    def count(decision: Decision) -> None:
        metrics.cleanups.labels(trigger="webhook", result=decision.outcome.value).inc()
        if decision.agents_cleaned:
            metrics.cleaned_agents.inc(decision.agents_cleaned)
        if on_decision is not None:
            on_decision(decision)

    for failure in AuthFailure:
        metrics.auth_failures.labels(reason=failure.value)
    if settings.user_id_hmac_key_file is not None:
        source = private_ids(source, UserIdHasher.from_file(settings.user_id_hmac_key_file))

    connections = ConnectionLimiter(descriptor_bound(settings.max_connections))
    middlewares: list[Any] = [connections.track, refuse_encoded_bodies, _json_errors]
    guard = None
    if settings.web_config_file is not None:
        guard = PortGuard(
            WebConfigWatcher(settings.web_config_file),
            metrics.auth_failures,
            own_auth_paths=frozenset({WEBHOOK_PATH}),
        )
        # Inside the connection bound, before anything reads a body or the registry.
        middlewares.insert(1, guard)
    app = web.Application(client_max_size=settings.webhook_max_body_bytes, middlewares=middlewares)
    app[_CONNECTIONS] = connections
    if guard is not None:
        app[WEB_CONFIG] = guard.watcher
        app.on_response_prepare.append(guard.add_headers)
    app[SOURCE] = source
    app[SETTINGS] = settings
    app[METRICS] = metrics
    router = _router(settings, auth, guard.watcher if guard is not None else None)
    app[REMEDIATOR] = Remediator(
        source, RemediationPolicy.from_settings(settings), on_decision=count, router=router
    )
    app.on_cleanup.append(lambda _: router.close())
    app[_AUTH] = auth
    app[_RENDER_SLOTS] = asyncio.Semaphore(_MAX_CONCURRENT_RENDERS)
    app[_RENDER_HEALTH] = _RenderHealth()
    if isinstance(source, WorkerSources):
        # Sidecar mode: each worker's health is scraped beside its registry.
        metrics.registry.register(source)
        app.on_cleanup.append(lambda _: source.close())
    app[_RENDERER] = Renderer()
    app.router.add_get("/", _landing)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post(WEBHOOK_PATH, _webhook)
    app.router.add_get("/-/healthy", _healthy)
    app.router.add_get("/-/ready", _ready)
    return app


def _router(
    settings: Settings, auth: _WebhookAuth, web_config: WebConfigWatcher | None
) -> InstanceRouter:
    if settings.peers is None or settings.instance is None:
        return InstanceRouter(settings.instance)
    tls = web_config is not None and web_config.tls
    forwarder = Forwarder(
        settings.instance,
        path=WEBHOOK_PATH,
        token=auth.token,
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


_json_errors = json_errors(_log, whose_log="the exporter's log")


async def _landing(request: web.Request) -> web.Response:
    links = "".join(
        f'<li><a href="{path}">{path}</a> {what}</li>'
        for path, what in [
            ("/metrics", "metrics"),
            ("/-/healthy", "liveness"),
            ("/-/ready", "readiness"),
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


async def _metrics(request: web.Request) -> web.StreamResponse:
    app = request.app
    accept = ",".join(request.headers.getall(hdrs.ACCEPT, []))
    gzipped = wants_gzip(request.headers.get(hdrs.ACCEPT_ENCODING, ""))
    health = app[_RENDER_HEALTH]
    async with app[_RENDER_SLOTS]:
        # Taken once a slot is free, so a queued scrape does not render stale data.
        snapshot = await app[SOURCE].snapshot()
        try:
            rendered = await asyncio.to_thread(
                app[_RENDERER].render,
                snapshot,
                app[METRICS],
                openmetrics=wants_openmetrics(accept),
                gzipped=gzipped,
                max_user_series=app[SETTINGS].max_user_series,
                export_session_age=app[SETTINGS].export_session_age,
            )
        except Exception as exc:
            # Never silent: counted, logged, and /-/ready fails until a render succeeds.
            _log.exception("rendering /metrics failed")
            app[METRICS].render_failures.inc()
            health.last_error = f"{type(exc).__name__}: {exc}"
            return json_error(500, f"/metrics render failed: {health.last_error}")
    health.last_error = None
    headers = {hdrs.CONTENT_TYPE: rendered.content_type, hdrs.VARY: "Accept, Accept-Encoding"}
    if rendered.gzipped:
        headers[hdrs.CONTENT_ENCODING] = "gzip"
    # Sent piece by piece: joining them would copy the whole body once more.
    response = web.StreamResponse(headers=headers)
    response.content_length = rendered.size
    try:
        await response.prepare(request)
        for part in rendered.parts:
            await response.write(part)
        await response.write_eof()
    except ConnectionError:
        # The scraper hung up (its timeout, a restart): routine, and nobody left to answer.
        _log.debug("scraper of /metrics hung up before the end of the body")
    return response


async def _healthy(request: web.Request) -> web.Response:
    return web.Response(text="healthy\n")


async def _ready(request: web.Request) -> web.Response:
    source = request.app[SOURCE]
    try:
        if isinstance(source, WorkerSources):
            # A cheap call per worker: a probe must not cost the backends a snapshot each.
            # Probes are unauthenticated: the reason (a path, a worker's error) is not
            # theirs to read; the source logs it, and agent_registry_source_up shows it.
            if await source.ready() is not None:
                return json_error(503, "no worker answers; see the exporter's log")
        else:
            await source.snapshot()
    except Exception:
        # Probes are unauthenticated: the reason goes to the log, not to the caller.
        _log.exception("readiness check failed")
        return json_error(503, "registry unavailable; see the exporter's log")
    if request.app[_RENDER_HEALTH].last_error is not None:
        return json_error(503, "the last /metrics render failed; see the exporter's log")
    return web.Response(text="ready\n")


async def _webhook(request: web.Request) -> web.Response:
    try:
        response = await _webhook_response(request)
    except Exception:
        # Answered here rather than by the middleware, so this 500 is counted too.
        _log.exception("webhook failed")
        response = json_error(500, "internal error; see the exporter's log")
    request.app[METRICS].webhook_requests.labels(code=str(response.status)).inc()
    return response


async def _webhook_response(request: web.Request) -> web.Response:
    auth = request.app[_AUTH]
    token = auth.token()
    if token is None:
        if not auth.allow_unauthenticated:
            return json_error(
                403,
                "webhook disabled: no token configured (set "
                f"{ENV_PREFIX}WEBHOOK_TOKEN or {ENV_PREFIX}WEBHOOK_TOKEN_FILE)",
            )
    elif not _bearer_matches(request.headers.get(hdrs.AUTHORIZATION, ""), token):
        request.app[METRICS].auth_failures.labels(reason=AuthFailure.WEBHOOK_TOKEN.value).inc()
        response = json_error(401, "missing or wrong bearer token")
        response.headers[hdrs.WWW_AUTHENTICATE] = 'Bearer realm="agent-registry-exporter"'
        return response

    limit = request.app[SETTINGS].webhook_max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return json_error(413, f"body of {request.content_length} bytes exceeds {limit} bytes")
    deadline = request.app[SETTINGS].body_timeout_seconds
    try:
        async with asyncio.timeout(deadline):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return json_error(413, f"body exceeds {limit} bytes")
    except TimeoutError:
        slow = json_error(408, f"body not received within body_timeout_seconds={deadline:g}")
        slow.force_close()
        return slow

    try:
        payload = WebhookPayload.model_validate_json(body)
    except ValidationError as exc:
        return _invalid_payload(exc)

    forwarded = HOP_HEADER in request.headers
    decisions = await request.app[REMEDIATOR].handle(payload, forwarded=forwarded)
    # A forwarded alert answers as the peer did: its failure is retried, its limit defers.
    outcomes = [d.effective_outcome for d in decisions]
    if any(o.retry_helps for o in outcomes):
        status, verdict = 500, "retry: some cleanups failed or did not finish"
    elif any(o.deferred for o in outcomes):
        status, verdict = 429, "deferred: some cleanups held back by the rate limit or breaker"
    else:
        status, verdict = 200, "ok"
    summary: dict[str, int] = {}
    for decision in decisions:
        summary[decision.outcome.value] = summary.get(decision.outcome.value, 0) + 1
    return web.json_response(
        {
            "status": verdict,
            "summary": summary,
            "truncated_alerts": payload.truncated_alerts,
            "alerts": [d.as_dict() for d in decisions],
        },
        status=status,
    )


def _bearer_matches(header: str, token: str) -> bool:
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    # aiohttp decodes header bytes that are not UTF-8 as surrogates; encode them back the
    # same way, so such a header is a wrong token (401), never an encoding error (500).
    presented = credentials.strip().encode("utf-8", "surrogateescape")
    return hmac.compare_digest(presented, token.encode())


def _invalid_payload(exc: ValidationError) -> web.Response:
    errors = exc.errors(include_url=False, include_input=False)
    if errors and errors[0]["type"] == "json_invalid":
        return json_error(400, f"invalid JSON: {errors[0]['msg'].removeprefix('Invalid JSON: ')}")
    problems = [
        {"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in errors[:20]
    ]
    return json_error(400, "payload is not an Alertmanager v4 webhook", problems=problems)


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
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
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
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"{'https' if self._ssl_context() else 'http'}://{host}:{self.port}"

    def _ssl_context(self) -> ReloadingSSLContext | None:
        watcher = self.app.get(WEB_CONFIG)
        return ReloadingSSLContext(watcher.ssl_context) if watcher and watcher.tls else None

    async def start(self) -> None:
        settings = self.app[SETTINGS]
        runner = BoundedRunner(
            self.app,
            self.app[_CONNECTIONS],
            access_log=None,
            handle_signals=False,
            # Never inflate a request body: an unread one is drained as wire bytes.
            auto_decompress=False,
            # aiohttp closes a connection still waiting for a complete request after this,
            # counted from connecting or from its previous answer: slow headers, idle peers.
            keepalive_timeout=settings.idle_timeout_seconds,
            shutdown_timeout=settings.shutdown_grace_seconds,
        )
        await runner.setup()
        site = HandshakeBoundSite(
            runner,
            self.host,
            self._requested_port,
            backlog=LISTEN_BACKLOG,
            ssl_context=self._ssl_context(),
            # A TLS client must finish its handshake as fast as its request headers.
            handshake_timeout=settings.idle_timeout_seconds,
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ListenError(self.host, self._requested_port, exc) from exc
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        instance = settings.instance
        _log.info("exporter listening on %s as instance %s", self.url, instance or "(unset)")

    async def stop(self) -> None:
        """Stop accepting, give running cleanups `shutdown_grace_seconds`, then release all.

        Each cleanup still running after the grace is logged with its user and the agents it
        has left to close; in an embedding backend it keeps running on the backend's loop.
        """
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()  # no new connections; requests in flight carry on
        grace = self.app[SETTINGS].shutdown_grace_seconds
        unfinished = await self.app[REMEDIATOR].drain(grace)
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
        await runner.cleanup()  # requests still in flight get the same grace
        _log.info(
            "exporter stopped",
            extra={"fields": {"unfinished_cleanups": len(unfinished), "grace_seconds": grace}},
        )


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
        InProcessSource(registry, leak_grace_seconds=settings.leak_grace_seconds)
        if isinstance(registry, AgentRegistry)
        else registry
    )
    server = ExporterServer(
        create_app(source, settings), settings.listen_host, settings.listen_port
    )
    await server.start()
    return server
