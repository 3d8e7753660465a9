"""The two exposition formats, each an object chosen once per request.

A `Format` holds everything the formats disagree on: the content type, whether `# EOF`
ends the body, how a family's header is written (text 0.0.4 names a counter family with
`_total`, OpenMetrics without, and writes `# UNIT`), and prometheus_client's encoder for
the exporter's own metrics. Nothing else in the renderer asks which format it writes
(gzip is one member in both).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest as _generate_text
from prometheus_client.openmetrics.exposition import (
    generate_latest as _untyped_generate_openmetrics,
)

from .catalogue import Family, Kind

__all__ = ["FORMATS", "OPENMETRICS", "TEXT", "Format"]


def _generate_openmetrics(registry: CollectorRegistry) -> bytes:
    # prometheus_client's OpenMetrics encoder has no annotations.
    result: bytes = _untyped_generate_openmetrics(registry)  # type: ignore[no-untyped-call]
    return result


@dataclass(frozen=True, slots=True)
class Format:
    """One exposition format: what a body in it looks like, and its content type."""

    name: str
    content_type: str
    trailer: bytes  # what ends every body (OpenMetrics' `# EOF`)
    counter_header_total: bool  # a counter family's header names it with `_total`
    writes_units: bool  # `# UNIT` lines for families with a unit
    _encode_collected: Callable[[CollectorRegistry], bytes]

    def family_name(self, family: Family) -> str:
        """The family's name in its header lines."""
        if family.kind is Kind.COUNTER and self.counter_header_total:
            return family.sample
        return family.name

    def header(self, family: Family) -> str:
        """The lines opening `family`: HELP, TYPE and, where this format has it, UNIT."""
        name = self.family_name(family)
        header = f"# HELP {name} {family.help}\n# TYPE {name} {family.kind}\n"
        if self.writes_units and family.unit:
            header += f"# UNIT {name} {family.unit}\n"
        return header

    def collected(self, registry: CollectorRegistry) -> bytes:
        """prometheus_client's rendering of `registry` in this format, without the trailer."""
        return self._encode_collected(registry).removesuffix(self.trailer)


TEXT = Format(
    name="text 0.0.4",
    content_type="text/plain; version=0.0.4; charset=utf-8",
    trailer=b"",
    counter_header_total=True,
    writes_units=False,
    _encode_collected=_generate_text,
)
OPENMETRICS = Format(
    name="OpenMetrics 1.0",
    content_type="application/openmetrics-text; version=1.0.0; charset=utf-8",
    trailer=b"# EOF\n",
    counter_header_total=False,
    writes_units=True,
    _encode_collected=_generate_openmetrics,
)
FORMATS = (OPENMETRICS, TEXT)
