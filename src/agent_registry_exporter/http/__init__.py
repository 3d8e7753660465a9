"""The exporter's HTTP server: the app factory, `/metrics`, the webhook, probes, the landing
page; connection and body limits; TLS, basic auth and the web config file.

    app.py          create_app: state on typed keys, setup_middlewares, setup_routes, cleanup_ctx
    keys.py         the typed app keys the handlers share
    middlewares.py  setup_middlewares (connection bookkeeping, web config, bodies, JSON errors)
    routes.py       setup_routes
    metrics.py      GET /metrics
    webhook.py      POST /webhook/alertmanager and its bearer token
    remediator.py   the Remediator behind the webhook, opened and closed with the app
    probes.py       GET /-/healthy, GET /-/ready, GET /
    limits.py       connection cap, listen backlog, descriptor bound
    server.py       ExporterServer, start_exporter, ListenError
    security/       TLS, basic auth, the web config file
"""

from .app import create_app
from .server import ExporterServer, ListenError, start_exporter

__all__ = ["ExporterServer", "ListenError", "create_app", "start_exporter"]
