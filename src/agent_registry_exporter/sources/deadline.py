"""The scrape's deadline, as the sources see it: how long a snapshot may take this time.

Prometheus sends its `scrape_timeout` with every scrape (`X-Prometheus-Scrape-Timeout-
Seconds`); a scrape answered later is lost whole. The /metrics handler turns it into a
budget (`scrape_budget`, a margin kept for the render) and asks for the snapshot inside
`answer_within(budget)`; a source gathering workers (the sidecar) gives each of them no more
than what is left, and marks the late ones down for that scrape.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["SCRAPE_TIMEOUT_HEADER", "answer_within", "scrape_budget", "time_left"]

SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
# Kept for rendering and sending the answer: blackbox_exporter keeps half a second too; a
# short timeout keeps a quarter of itself.
_MARGIN_SECONDS = 0.5
_MARGIN_SHARE = 0.25

_DEADLINE: ContextVar[float | None] = ContextVar("scrape_deadline", default=None)


def scrape_budget(header: str | None) -> float | None:
    """Seconds the snapshot may take for a scraper that sent `header`; None when the header
    is absent or no positive finite number (it is then ignored, never trusted)."""
    if header is None:
        return None
    try:
        timeout = float(header)
    except ValueError:
        return None
    if not math.isfinite(timeout) or timeout <= 0:
        return None
    return timeout - min(_MARGIN_SECONDS, _MARGIN_SHARE * timeout)


@contextlib.contextmanager
def answer_within(seconds: float | None) -> Iterator[None]:
    """Snapshots asked for inside the block are due within `seconds` (None: no deadline)."""
    token = _DEADLINE.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def time_left() -> float | None:
    """Seconds left until the current scrape's deadline (never below 0), or None."""
    deadline = _DEADLINE.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())
