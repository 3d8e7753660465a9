"""The exporter app's shared state, each on a typed key: set by `create_app`, read by the
handlers and by `ExporterServer`."""

from __future__ import annotations

from aiohttp import web

from ..exporting import ExporterMetrics
from ..remediation import Remediator
from ..settings import Settings
from ..sources import RegistrySource
from .limits import ConnectionLimiter
from .security import WebConfigWatcher

__all__ = ["CONNECTIONS", "METRICS", "REMEDIATOR", "SETTINGS", "SOURCE", "WEB_CONFIG"]

SOURCE = web.AppKey("source", RegistrySource)
SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", ExporterMetrics)
# Opened with the app (see `remediator.remediator_context`), absent before it starts.
REMEDIATOR = web.AppKey("remediator", Remediator)
CONNECTIONS = web.AppKey("connections", ConnectionLimiter)
# Only when a web config file is set.
WEB_CONFIG = web.AppKey("web_config", WebConfigWatcher)
