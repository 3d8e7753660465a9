"""The Grafana dashboard, as code: `grafana/agent-registry.json` is its rendering.

Built with Grafana's foundation SDK (the `dashboard` extra). Every query filters on `$job` and
`$instance`; queries of registry families (those a sidecar labels per worker) also on `$worker`,
per-user ones also on `$user_id`; every counter goes through `rate` over `$__rate_interval`.
"""

from __future__ import annotations

import json
from typing import Any

from . import operations_rows, registry_rows
from .sdk import Dashboard, encode, model, number_panels
from .variables import variables

__all__ = ["UID", "build_dashboard", "render_dashboard", "render_dashboard_json"]

UID = "agent-registry"


def build_dashboard() -> model.Dashboard:
    """The dashboard as the SDK's model."""
    board = (
        Dashboard("Agent registry")
        .uid(UID)
        .description("Sessions, agents, workers, cleanups and memory of agent-registry-exporter.")
        .tags(["agent-registry", "prometheus"])
        .readonly()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .version(1)
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("browser")
    )
    for section in (
        variables,
        registry_rows.now,
        registry_rows.over_time,
        registry_rows.users,
        operations_rows.workers,
        operations_rows.remediation,
        operations_rows.memory,
        operations_rows.exporter,
    ):
        board = section(board)
    return number_panels(board.build())


def render_dashboard_json() -> str:
    """The dashboard as committed in `grafana/agent-registry.json`."""
    return encode(build_dashboard())


def render_dashboard() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    data: dict[str, Any] = json.loads(render_dashboard_json())
    return data
