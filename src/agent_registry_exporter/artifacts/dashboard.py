"""The Grafana dashboard, as code: `grafana/agent-registry.json` is its rendering.

Every query filters on `$job` and `$instance`; per-user queries also on `$user_id`; every
counter goes through `rate`/`increase` over `$__rate_interval`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["UID", "render_dashboard", "render_dashboard_json"]

UID = "agent-registry"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'
USER_SEL = f'{SEL}, user_id=~"$user_id"'
_WIDTH = 24


@dataclass
class _Layout:
    """Places panels left to right, wrapping rows of 24 grid units."""

    y: int = 0
    x: int = 0
    row_height: int = 0
    next_id: int = 1
    panels: list[dict[str, Any]] = field(default_factory=list)

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "id": self._id(),
                "title": title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": self.y, "w": _WIDTH, "h": 1},
                "panels": [],
            }
        )
        self.y += 1

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self.x + w > _WIDTH:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)

    def _newline(self) -> None:
        self.y += self.row_height
        self.x = 0
        self.row_height = 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def _target(
    expr: str, legend: str = "", ref: str = "A", *, instant: bool = False
) -> dict[str, Any]:
    target: dict[str, Any] = {
        "datasource": DATASOURCE,
        "expr": expr,
        "refId": ref,
        "legendFormat": legend or "__auto",
    }
    if instant:
        target.update({"instant": True, "range": False, "format": "table"})
    return target


def _panel(
    kind: str,
    title: str,
    description: str,
    unit: str,
    targets: list[dict[str, Any]],
    **options: Any,
) -> dict[str, Any]:
    panel: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
    }
    panel.update(options)
    return panel


def _threshold_line(name: str) -> str:
    return f'max(agent_registry_threshold{{{SEL}, threshold="{name}"}})'


def _panels() -> list[dict[str, Any]]:
    layout = _Layout()
    layout.row("Now")
    for title, desc, expr in (
        ("Users", "Sessions in the selected registries.", f"sum(agent_registry_users{{{SEL}}})"),
        (
            "Agents",
            "Live agents in the selected registries.",
            f"sum(agent_registry_agents{{{SEL}}})",
        ),
        (
            "Users over the agent limit",
            "Users holding more agents than agents_per_user; the webhook cleans them up.",
            f"count(agent_registry_user_agents{{{USER_SEL}}} > on (job, instance) group_left "
            f'agent_registry_threshold{{{SEL}, threshold="agents_per_user"}}) or vector(0)',
        ),
        (
            "Sessions over the age limit",
            "Sessions older than session_age_seconds; the webhook cleans them up.",
            f"count((time() - agent_registry_user_session_created_timestamp_seconds{{{USER_SEL}}})"
            " > on (job, instance) group_left "
            f'agent_registry_threshold{{{SEL}, threshold="session_age_seconds"}}) or vector(0)',
        ),
    ):
        layout.add(
            _panel(
                "stat",
                title,
                desc,
                "none",
                [_target(expr, instant=True)],
                options={"reduceOptions": {"calcs": ["lastNotNull"]}},
            ),
            w=6,
            h=4,
        )
    layout.add(
        _panel(
            "table",
            "Firing alerts",
            "Alerts of the agent-registry group firing now, per instance and user.",
            "none",
            [
                _target(
                    f"sum by (alertname, instance, user_id, severity) (ALERTS{{{SEL}, "
                    'alertstate="firing", alertname=~"AgentRegistry.*"})',
                    instant=True,
                )
            ],
        ),
        w=24,
        h=6,
    )

    layout.row("Over time")
    layout.add(
        _panel(
            "timeseries",
            "Users and agents per instance",
            "Sessions and agents in each replica's registry.",
            "none",
            [
                _target(f"sum by (instance) (agent_registry_users{{{SEL}}})", "users {{instance}}"),
                _target(
                    f"sum by (instance) (agent_registry_agents{{{SEL}}})", "agents {{instance}}"
                ),
                _target(_threshold_line("total_agents"), "total limit"),
            ],
        ),
        w=12,
        h=8,
    )
    layout.add(
        _panel(
            "timeseries",
            "Agents per user against the limit",
            "The ten users with the most agents, and the agents_per_user limit.",
            "none",
            [
                _target(
                    f"topk(10, agent_registry_user_agents{{{USER_SEL}}})",
                    "{{user_id}} on {{instance}}",
                ),
                _target(_threshold_line("agents_per_user"), "limit"),
            ],
        ),
        w=12,
        h=8,
    )

    layout.row("Users")
    layout.add(
        _panel(
            "table",
            "Users with the most agents",
            "Top 20 sessions by agent count.",
            "none",
            [_target(f"topk(20, agent_registry_user_agents{{{USER_SEL}}})", instant=True)],
        ),
        w=8,
        h=9,
    )
    layout.add(
        _panel(
            "table",
            "Oldest sessions",
            "Top 20 sessions by age, computed from their created timestamp.",
            "s",
            [
                _target(
                    "topk(20, time() - "
                    f"agent_registry_user_session_created_timestamp_seconds{{{USER_SEL}}})",
                    instant=True,
                )
            ],
        ),
        w=8,
        h=9,
    )
    layout.add(
        _panel(
            "histogram",
            "Session-age distribution",
            "How many sessions fall into each age bucket.",
            "s",
            [
                _target(
                    f"time() - agent_registry_user_session_created_timestamp_seconds{{{USER_SEL}}}",
                    instant=True,
                )
            ],
        ),
        w=8,
        h=9,
    )

    layout.row("Remediation")
    layout.add(
        _panel(
            "timeseries",
            "Cleanups per second by trigger and result",
            "Webhook decisions: cleaned, not violating, duplicate, rate limited, error, ...",
            "ops",
            [
                _target(
                    "sum by (trigger, result) "
                    f"(rate(agent_registry_cleanups_total{{{SEL}}}[$__rate_interval]))",
                    "{{trigger}} {{result}}",
                )
            ],
        ),
        w=8,
        h=8,
    )
    layout.add(
        _panel(
            "timeseries",
            "Agents closed per second",
            "Agents closed by cleanups.",
            "ops",
            [
                _target(
                    "sum by (instance) "
                    f"(rate(agent_registry_cleaned_agents_total{{{SEL}}}[$__rate_interval]))",
                    "{{instance}}",
                )
            ],
        ),
        w=8,
        h=8,
    )
    layout.add(
        _panel(
            "timeseries",
            "Webhook responses by code",
            "200 handled, 429 deferred (rate limit, breaker), 4xx refused, 5xx retried.",
            "reqps",
            [
                _target(
                    "sum by (code) "
                    f"(rate(agent_registry_webhook_requests_total{{{SEL}}}[$__rate_interval]))",
                    "{{code}}",
                )
            ],
        ),
        w=8,
        h=8,
    )

    layout.row("Exporter")
    layout.add(
        _panel(
            "timeseries",
            "Scrape render duration",
            "Time each replica took to render /metrics.",
            "s",
            [_target(f"agent_registry_exporter_scrape_duration_seconds{{{SEL}}}", "{{instance}}")],
        ),
        w=8,
        h=7,
    )
    layout.add(
        _panel(
            "timeseries",
            "Users left out by the series cap",
            "Users not exported per user because of max_user_series; totals stay exact.",
            "none",
            [_target(f"agent_registry_user_series_omitted{{{SEL}}}", "{{instance}}")],
        ),
        w=8,
        h=7,
    )
    layout.add(
        _panel(
            "stat",
            "Exporters up",
            "Scrape targets answering; 0 means nothing is monitored there.",
            "none",
            [_target(f"up{{{SEL}}}", "{{instance}}", instant=True)],
        ),
        w=8,
        h=7,
    )
    return layout.panels


def _variables() -> list[dict[str, Any]]:
    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "hide": 0,
        },
        {
            "name": "job",
            "label": "Job",
            "type": "query",
            "datasource": DATASOURCE,
            "query": {
                "query": "label_values(agent_registry_exporter_build_info, job)",
                "refId": "job",
            },
            "definition": "label_values(agent_registry_exporter_build_info, job)",
            "refresh": 2,
            "multi": False,
            "includeAll": False,
            "sort": 1,
        },
        {
            "name": "instance",
            "label": "Instance",
            "type": "query",
            "datasource": DATASOURCE,
            "query": {
                "query": 'label_values(agent_registry_exporter_build_info{job=~"$job"}, instance)',
                "refId": "instance",
            },
            "definition": 'label_values(agent_registry_exporter_build_info{job=~"$job"}, instance)',
            "refresh": 2,
            "multi": True,
            "includeAll": True,
            "allValue": ".*",
            "current": {"text": "All", "value": "$__all"},
            "sort": 1,
        },
        {
            "name": "user_id",
            "label": "User (regex)",
            "type": "textbox",
            "query": ".*",
            "current": {"text": ".*", "value": ".*"},
            "description": "Optional: a user id or regex to narrow the per-user panels.",
        },
    ]


def render_dashboard() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    return {
        "uid": UID,
        "title": "Agent registry",
        "description": "Sessions, agents and cleanups of agent-registry-exporter.",
        "tags": ["agent-registry", "prometheus"],
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": _variables()},
        "panels": _panels(),
    }


def render_dashboard_json() -> str:
    """The dashboard as committed in `grafana/agent-registry.json`."""
    return json.dumps(render_dashboard(), indent=2) + "\n"
