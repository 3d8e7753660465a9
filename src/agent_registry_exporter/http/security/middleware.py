"""What the web config does to each request: client-certificate SANs, the rate limit, basic
auth, response headers. Probes stay open; paths with their own authentication (the webhook's
bearer token) skip basic auth."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from prometheus_client import Counter

from ...common.endpoints import PROBE_PATHS
from ...common.json_errors import json_error
from .basic_auth import AuthFailure, BasicAuthChecker
from .reload import ActiveWebConfig, WebConfigWatcher

__all__ = ["PROBE_PATHS", "PortGuard"]

_REALM = 'Basic realm="agent-registry-exporter", charset="UTF-8"'
_ACTIVE = web.RequestKey("web_config", ActiveWebConfig)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PortGuard:
    """The aiohttp middleware enforcing the web config (and its `on_response_prepare` hook)."""

    __middleware_version__ = 1  # what @web.middleware marks: a new-style middleware

    def __init__(
        self,
        watcher: WebConfigWatcher,
        failures: Counter,
        *,
        own_auth_paths: frozenset[str] = frozenset(),
        checker: BasicAuthChecker | None = None,
    ) -> None:
        self.watcher = watcher
        self.checker = checker or BasicAuthChecker()
        self._failures = failures
        self._own_auth_paths = own_auth_paths

    async def __call__(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        active = self.watcher.current()
        request[_ACTIVE] = active
        tls = active.config.tls_server_config
        if tls.client_allowed_sans is not None:
            peer = request.transport.get_extra_info("peercert") if request.transport else None
            if not tls.allows_sans(list((peer or {}).get("subjectAltName", ()))):
                # Go ends the handshake; here the connection ends after this answer.
                self._failures.labels(reason=AuthFailure.CLIENT_CERTIFICATE.value).inc()
                refused = json_error(403, "the client certificate has none of client_allowed_sans")
                refused.force_close()
                return refused
        if request.path in PROBE_PATHS:
            return await handler(request)
        if active.rate_limit is not None and not active.rate_limit.try_take():
            return json_error(429, "rate limit of the web config reached; retry later")
        if active.users and request.path not in self._own_auth_paths:
            failure = await self.checker.check(
                active.users, request.headers.get(hdrs.AUTHORIZATION)
            )
            if failure is not None:
                self._failures.labels(reason=failure.value).inc()
                refused = json_error(401, "authentication required")
                refused.headers[hdrs.WWW_AUTHENTICATE] = _REALM
                return refused
        return await handler(request)

    async def add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """Sets `http_server_config.headers` on every response, errors included."""
        active = request.get(_ACTIVE) or self.watcher.current()
        response.headers.update(active.headers)
