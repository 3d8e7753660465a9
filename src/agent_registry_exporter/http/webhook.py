"""POST /webhook/alertmanager: the Alertmanager receiver and its bearer token.

Each alert becomes a decision of the `Remediator`; the answer's status tells Alertmanager
whether a retry can help (5xx), the rate limit held some back (429), or all is done (200).
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from aiohttp import hdrs, web
from pydantic import ValidationError

from ..common.json_errors import json_error
from ..common.loggers import logger_name
from ..remediation import HOP_HEADER, WebhookPayload
from ..settings import NO_WEBHOOK_TOKEN, Settings
from .keys import METRICS, REMEDIATOR, SETTINGS
from .security import AuthFailure

__all__ = ["WEBHOOK_AUTH", "WebhookAuth", "webhook"]

_log = logging.getLogger(logger_name("server"))
# How many validation problems an invalid payload's answer lists.
_MAX_PROBLEMS = 20


class WebhookAuth:
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
        if self.token() is None and not self.allow_unauthenticated:
            _log.warning(NO_WEBHOOK_TOKEN)

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


WEBHOOK_AUTH = web.AppKey("webhook_auth", WebhookAuth)


async def webhook(request: web.Request) -> web.Response:
    """The receiver; every answer, a 500 included, is counted by status code."""
    try:
        response = await _webhook_response(request)
    except Exception:
        # Answered here rather than by the middleware, so this 500 is counted too.
        _log.exception("webhook failed")
        response = json_error(500, "internal error; see the exporter's log")
    request.app[METRICS].webhook_requests.labels(code=str(response.status)).inc()
    return response


async def _webhook_response(request: web.Request) -> web.Response:
    refused = _refused(request)
    if refused is not None:
        return refused
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
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


def _refused(request: web.Request) -> web.Response | None:
    """The answer to a request without the right token, or None to go on."""
    auth = request.app[WEBHOOK_AUTH]
    token = auth.token()
    if token is None:
        if auth.allow_unauthenticated:
            return None
        return json_error(403, NO_WEBHOOK_TOKEN)
    if _bearer_matches(request.headers.get(hdrs.AUTHORIZATION, ""), token):
        return None
    request.app[METRICS].auth_failures.labels(reason=AuthFailure.WEBHOOK_TOKEN.value).inc()
    response = json_error(401, "missing or wrong bearer token")
    response.headers[hdrs.WWW_AUTHENTICATE] = 'Bearer realm="agent-registry-exporter"'
    return response


async def _body(request: web.Request) -> bytes | web.Response:
    """The body within its size and time bounds, or the answer saying which it broke."""
    limit = request.app[SETTINGS].webhook_max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return json_error(413, f"body of {request.content_length} bytes exceeds {limit} bytes")
    deadline = request.app[SETTINGS].body_timeout_seconds
    try:
        async with asyncio.timeout(deadline):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return json_error(413, f"body exceeds {limit} bytes")
    except TimeoutError:
        slow = json_error(408, f"body not received within body_timeout_seconds={deadline:g}")
        slow.force_close()
        return slow
    except ConnectionResetError:
        # The client's doing, not ours: no traceback, nothing acted on. The answer is never
        # read; it is still counted, as a bad request.
        _log.info("webhook client %s closed the connection mid-body", request.remote)
        cut = json_error(400, "the client closed the connection before the body was complete")
        cut.force_close()
        return cut


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
        message = errors[0]["msg"].removeprefix("Invalid JSON: ")
        return json_error(400, f"invalid JSON: {message}")
    problems = [
        {"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]}
        for e in errors[:_MAX_PROBLEMS]
    ]
    return json_error(400, "payload is not an Alertmanager v4 webhook", problems=problems)
