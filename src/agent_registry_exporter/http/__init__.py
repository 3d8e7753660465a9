"""The exporter's HTTP server: the app factory, `/metrics`, the webhook, probes, the landing
page; connection and body limits; TLS, basic auth and the web config file."""

from .server import ExporterServer, ListenError, create_app, start_exporter

__all__ = ["ExporterServer", "ListenError", "create_app", "start_exporter"]
