"""GET /metrics: the registry rendered at scrape time, in the format and encoding asked for,
streamed piece by piece."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from aiohttp import hdrs, web

from ..common.json_errors import json_error
from ..common.loggers import logger_name
from ..exporting import Format, Rendered, Renderer, choose_format, wants_gzip
from ..exporting.pauses import in_thread
from ..registry import RegistrySnapshot, SnapshotExpired
from ..sources import SCRAPE_TIMEOUT_HEADER, answer_within, peek, scrape_budget
from .keys import METRICS, SETTINGS, SOURCE

__all__ = ["RENDERING", "Rendering", "batches", "metrics"]

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

# Pieces joined into writes of about this size: few enough writes, each one short.
_WRITE_BYTES = 64 * 1024


def batches(parts: Iterable[bytes], size: int = _WRITE_BYTES) -> Iterator[bytes]:
    """`parts` joined into runs of about `size` bytes (a larger piece goes alone)."""
    run: list[bytes] = []
    held = 0
    for part in parts:
        run.append(part)
        held += len(part)
        if held >= size:
            yield b"".join(run) if len(run) > 1 else run[0]
            run, held = [], 0
    if run:
        yield b"".join(run)


async def _render(
    app: web.Application, snapshot: RegistrySnapshot, exposition: Format, gzipped: bool
) -> Rendered:
    settings = app[SETTINGS]
    # The render's pauses hand the GIL to this loop when it waits: see exporting/pauses.py.
    return await in_thread(
        app[RENDERING].renderer.render,
        snapshot,
        app[METRICS],
        format=exposition,
        gzipped=gzipped,
        max_user_series=settings.max_user_series,
        export_session_age=settings.export_session_age,
        user_series_min_pressure=settings.user_series_min_pressure,
    )


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
            try:
                rendered = await _render(app, snapshot, exposition, gzipped)
            except SnapshotExpired:
                # The render walked every user after all, and the registry had changed
                # since the snapshot (which kept only what a render of its changes reads).
                with answer_within(budget):
                    snapshot = await peek(app[SOURCE])
                rendered = await _render(app, snapshot, exposition, gzipped)
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
    # Sent a few pieces at a time, never joined whole (that would copy the body once more).
    response = web.StreamResponse(headers=headers)
    response.content_length = rendered.size
    try:
        await response.prepare(request)
        for batch in batches(rendered.parts):
            await response.write(batch)
            # A write that fits the transport's buffer does not yield: without this, a body
            # of thousands of pieces holds the host's loop for tens of milliseconds.
            await asyncio.sleep(0)
        await response.write_eof()
    except ConnectionError:
        # The scraper hung up (its timeout, a restart): routine, and nobody left to answer.
        _log.debug("scraper of /metrics hung up before the end of the body")
    return response
