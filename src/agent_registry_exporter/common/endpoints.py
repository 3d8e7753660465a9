"""The exporter's HTTP paths, named once: the server routes them, the rendered Alertmanager
route, manifests and the test harness point at them."""

from __future__ import annotations

__all__ = [
    "HEALTHY_PATH",
    "LANDING_PATH",
    "METRICS_PATH",
    "PROBE_PATHS",
    "READY_PATH",
    "WEBHOOK_PATH",
]

LANDING_PATH = "/"
METRICS_PATH = "/metrics"
WEBHOOK_PATH = "/webhook/alertmanager"
HEALTHY_PATH = "/-/healthy"
READY_PATH = "/-/ready"
PROBE_PATHS = frozenset({HEALTHY_PATH, READY_PATH})
