"""GET /metrics: the registry rendered at scrape time, in the format and encoding asked for,
streamed piece by piece."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiohttp import hdrs, web

from .._meta import logger_name
from ..common.json_errors import json_error
from ..exporting import Renderer, choose_format, wants_gzip
from ..sources import SCRAPE_TIMEOUT_HEADER, answer_within, scrape_budget
from .keys import METRICS, SETTINGS, SOURCE

__all__ = ["RENDERING", "Rendering", "metrics"]

_log = logging.getLogger(logger_name("server"))

# Two renders at once at most: a burst of scrapes queues instead of piling up threads.
_MAX_CONCURRENT_RENDERS = 2


@dataclass
class Rendering:
    """The renderer, the slots renders take turns in, and why the last render failed (until
    one succeeds: /-/ready reports it)."""

    renderer: Renderer = field(default_factory=Renderer)
    slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(_MAX_CONCURRENT_RENDERS)
    )
    last_error: str | None = None


RENDERING = web.AppKey("rendering", Rendering)


async def metrics(request: web.Request) -> web.StreamResponse:
    """The exposition, Prometheus text or OpenMetrics by Accept, gzip by Accept-Encoding."""
    app = request.app
    # Chosen once: the format decides the body, its content type and its end.
    exposition = choose_format(",".join(request.headers.getall(hdrs.ACCEPT, [])))
    gzipped = wants_gzip(request.headers.get(hdrs.ACCEPT_ENCODING, ""))
    rendering = app[RENDERING]
    # Counted from the request's arrival: the scraper's timeout runs while a scrape queues.
    budget = scrape_budget(request.headers.get(SCRAPE_TIMEOUT_HEADER))
    async with rendering.slots:
        # Taken once a slot is free, so a queued scrape does not render stale data.
        with answer_within(budget):
            snapshot = await app[SOURCE].snapshot()
        try:
            rendered = await asyncio.to_thread(
                rendering.renderer.render,
                snapshot,
                app[METRICS],
                format=exposition,
                gzipped=gzipped,
                max_user_series=app[SETTINGS].max_user_series,
                export_session_age=app[SETTINGS].export_session_age,
                user_series_min_pressure=app[SETTINGS].user_series_min_pressure,
            )
        except Exception as exc:
            # Never silent: counted, logged, and /-/ready fails until a render succeeds.
            _log.exception("rendering /metrics failed")
            app[METRICS].render_failures.inc()
            rendering.last_error = f"{type(exc).__name__}: {exc}"
            return json_error(500, f"/metrics render failed: {rendering.last_error}")
    rendering.last_error = None
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
