"""Reading a scrape's Accept and Accept-Encoding headers: which format, whether gzip."""

from __future__ import annotations

from .formats import OPENMETRICS, TEXT, Format

__all__ = ["choose_format", "wants_gzip"]


def choose_format(accept: str) -> Format:
    """OpenMetrics when the Accept header lists it (Prometheus asks for it first), else text."""
    listed = (part.split(";", 1)[0].strip() for part in accept.split(","))
    return OPENMETRICS if "application/openmetrics-text" in listed else TEXT


def wants_gzip(accept_encoding: str) -> bool:
    """True when the client accepts gzip (and has not refused it with q=0)."""
    for part in accept_encoding.split(","):
        coding, _, params = part.partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False
