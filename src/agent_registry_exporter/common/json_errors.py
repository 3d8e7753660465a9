"""Every error answered as a JSON body naming the problem: one helper, one middleware.

Shared by the exporter's server and the backend's registry socket API, so both speak the
same error shape (``{"error": "..."}`` plus any detail fields).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

__all__ = ["Handler", "Middleware", "json_error", "json_errors"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Middleware(Protocol):
    """An aiohttp middleware (what `web.Application(middlewares=...)` takes)."""

    def __call__(self, request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]: ...


# Turns an exception into an answer, or None to leave it to the generic rules.
_Translate = Callable[[web.Request, Exception], web.StreamResponse | None]


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    """`{"error": message, **extra}` with `status`."""
    return web.json_response({"error": message, **extra}, status=status)


def json_errors(
    log: logging.Logger,
    *,
    whose_log: str,
    translate: _Translate | None = None,
) -> Middleware:
    """A middleware answering errors as JSON.

    `translate` is asked first; then an HTTP error (4xx/5xx) answers with its reason, and
    anything unexpected is logged to `log` and answers 500 pointing at `whose_log` (the
    caller learns nothing of the cause).
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Exception as exc:
            answer = translate(request, exc) if translate is not None else None
            if answer is not None:
                return answer
            if isinstance(exc, web.HTTPException):
                if exc.status < 400:
                    raise
                return json_error(exc.status, exc.reason)
            log.exception("unhandled error serving %s %s", request.method, request.path)
            return json_error(500, f"internal error; see {whose_log}")

    return middleware
