"""Exporting registry snapshots: the metric catalogue, the formats, the renderer.

`catalogue` lists every family served; a `Format` (chosen per request by `choose_format`)
says how a body looks; the `Renderer` writes snapshots with the fast writer, reusing
unchanged chunks, beside the exporter's own metrics (`ExporterMetrics`), and gzips with a
`DeflateEngine` (ISA-L where it imports, else zlib).
"""

from . import catalogue
from .catalogue import CATALOGUE, Family, Kind
from .chunks import DEFAULT_CHUNK_USERS, check_chunk_users
from .deflate import ISAL, ZLIB, DeflateEngine, default_engine, engines
from .exporter_metrics import ExporterMetrics
from .formats import FORMATS, OPENMETRICS, TEXT, Format
from .negotiation import choose_format, wants_gzip
from .renderer import Rendered, Renderer, RenderOptions, delta_users_limit, render

__all__ = [
    "CATALOGUE",
    "DEFAULT_CHUNK_USERS",
    "FORMATS",
    "ISAL",
    "OPENMETRICS",
    "TEXT",
    "ZLIB",
    "DeflateEngine",
    "ExporterMetrics",
    "Family",
    "Format",
    "Kind",
    "RenderOptions",
    "Rendered",
    "Renderer",
    "catalogue",
    "check_chunk_users",
    "choose_format",
    "default_engine",
    "delta_users_limit",
    "engines",
    "render",
    "wants_gzip",
]
