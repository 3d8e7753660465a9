"""The Grafana dashboard, as code: `grafana/agent-registry.json` is its rendering.

Built with Grafana's foundation SDK (the `dashboard` extra). Every query filters on `$job` and
`$instance`; per-user queries also on `$user_id`; every counter goes through `rate` over
`$__rate_interval`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .grafana import (
    DATASOURCE,
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
    TextBoxVariable,
    common_builders,
    encode,
    histogram,
    legend,
    model,
    number_panels,
    panel,
    prometheus,
    query,
    stat,
    table,
    timeseries,
)

__all__ = ["UID", "build_dashboard", "render_dashboard", "render_dashboard_json"]

UID = "agent-registry"
SEL = 'job=~"$job", instance=~"$instance"'
USER_SEL = f'{SEL}, user_id=~"$user_id"'


def _stat(
    title: str,
    description: str,
    expr: str,
    legend_format: str = "__auto",
    *,
    w: int = 6,
    h: int = 4,
) -> stat.Panel:
    return panel(
        stat.Panel(),
        title,
        description,
        "none",
        [query(expr, legend_format, instant=True)],
        w=w,
        h=h,
    ).reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))


def _graph(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    w: int,
    h: int,
) -> timeseries.Panel:
    return panel(timeseries.Panel(), title, description, unit, targets, w=w, h=h).legend(legend())


def _table(title: str, description: str, unit: str, expr: str) -> table.Panel:
    return panel(table.Panel(), title, description, unit, [query(expr, instant=True)], w=8, h=9)


def _threshold_line(name: str) -> str:
    return f'max(agent_registry_threshold{{{SEL}, threshold="{name}"}})'


def _now(board: Dashboard) -> Dashboard:
    board = (
        board.with_row(Row("Now"))
        .with_panel(
            _stat(
                "Users",
                "Sessions in the selected registries.",
                f"sum(agent_registry_users{{{SEL}}})",
            )
        )
        .with_panel(
            _stat(
                "Agents",
                "Live agents in the selected registries.",
                f"sum(agent_registry_agents{{{SEL}}})",
            )
        )
        .with_panel(
            _stat(
                "Users over the agent limit",
                "Users holding more agents than agents_per_user; the webhook cleans them up.",
                f"count(agent_registry_user_agents{{{USER_SEL}}} > on (job, instance) group_left "
                f'agent_registry_threshold{{{SEL}, threshold="agents_per_user"}}) or vector(0)',
            )
        )
        .with_panel(
            _stat(
                "Sessions over the age limit",
                "Sessions older than session_age_seconds; the webhook cleans them up.",
                "count((time() - "
                f"agent_registry_user_session_created_timestamp_seconds{{{USER_SEL}}})"
                " > on (job, instance) group_left "
                f'agent_registry_threshold{{{SEL}, threshold="session_age_seconds"}}) or vector(0)',
            )
        )
    )
    return board.with_panel(
        panel(
            table.Panel(),
            "Firing alerts",
            "Alerts of the agent-registry group firing now, per instance and user.",
            "none",
            [
                query(
                    f"sum by (alertname, instance, user_id, severity) (ALERTS{{{SEL}, "
                    'alertstate="firing", alertname=~"AgentRegistry.*"})',
                    instant=True,
                )
            ],
            w=24,
            h=6,
        )
    )


def _over_time(board: Dashboard) -> Dashboard:
    return (
        board.with_row(Row("Over time"))
        .with_panel(
            _graph(
                "Users and agents per instance",
                "Sessions and agents in each replica's registry.",
                "none",
                [
                    query(
                        f"sum by (instance) (agent_registry_users{{{SEL}}})", "users {{instance}}"
                    ),
                    query(
                        f"sum by (instance) (agent_registry_agents{{{SEL}}})", "agents {{instance}}"
                    ),
                    query(_threshold_line("total_agents"), "total limit"),
                ],
                w=12,
                h=8,
            )
        )
        .with_panel(
            _graph(
                "Agents per user against the limit",
                "The ten users with the most agents, and the agents_per_user limit.",
                "none",
                [
                    query(
                        f"topk(10, agent_registry_user_agents{{{USER_SEL}}})",
                        "{{user_id}} on {{instance}}",
                    ),
                    query(_threshold_line("agents_per_user"), "limit"),
                ],
                w=12,
                h=8,
            )
        )
    )


def _users(board: Dashboard) -> Dashboard:
    age = f"time() - agent_registry_user_session_created_timestamp_seconds{{{USER_SEL}}}"
    return (
        board.with_row(Row("Users"))
        .with_panel(
            _table(
                "Users with the most agents",
                "Top 20 sessions by agent count.",
                "none",
                f"topk(20, agent_registry_user_agents{{{USER_SEL}}})",
            )
        )
        .with_panel(
            _table(
                "Oldest sessions",
                "Top 20 sessions by age, computed from their created timestamp.",
                "s",
                f"topk(20, {age})",
            )
        )
        .with_panel(
            panel(
                histogram.Panel(),
                "Session-age distribution",
                "How many sessions fall into each age bucket.",
                "s",
                [query(age, instant=True)],
                w=8,
                h=9,
            ).legend(legend())
        )
    )


def _rate(counter: str, by: str, matchers: str = SEL) -> str:
    return f"sum by ({by}) (rate({counter}{{{matchers}}}[$__rate_interval]))"


def _remediation(board: Dashboard) -> Dashboard:
    return (
        board.with_row(Row("Remediation"))
        .with_panel(
            _graph(
                "Cleanups per second by trigger and result",
                "Webhook decisions: cleaned, not violating, duplicate, rate limited, error, ...",
                "ops",
                [
                    query(
                        _rate("agent_registry_cleanups_total", "trigger, result"),
                        "{{trigger}} {{result}}",
                    )
                ],
                w=8,
                h=8,
            )
        )
        .with_panel(
            _graph(
                "Agents closed per second",
                "Agents closed by cleanups.",
                "ops",
                [query(_rate("agent_registry_cleaned_agents_total", "instance"), "{{instance}}")],
                w=8,
                h=8,
            )
        )
        .with_panel(
            _graph(
                "Webhook responses by code",
                "200 handled, 429 deferred (rate limit, breaker), 4xx refused, 5xx retried.",
                "reqps",
                [query(_rate("agent_registry_webhook_requests_total", "code"), "{{code}}")],
                w=8,
                h=8,
            )
        )
    )


def _exporter(board: Dashboard) -> Dashboard:
    return (
        board.with_row(Row("Exporter"))
        .with_panel(
            _graph(
                "Scrape render duration",
                "Time each replica took to render /metrics.",
                "s",
                [
                    query(
                        f"agent_registry_exporter_scrape_duration_seconds{{{SEL}}}", "{{instance}}"
                    )
                ],
                w=8,
                h=7,
            )
        )
        .with_panel(
            _graph(
                "Users left out by the series cap",
                "Users not exported per user because of max_user_series; totals stay exact.",
                "none",
                [query(f"agent_registry_user_series_omitted{{{SEL}}}", "{{instance}}")],
                w=8,
                h=7,
            )
        )
        .with_panel(
            _stat(
                "Exporters up",
                "Scrape targets answering; 0 means nothing is monitored there.",
                f"up{{{SEL}}}",
                "{{instance}}",
                w=8,
                h=7,
            )
        )
    )


def _label_values(metric: str, label: str) -> str:
    return f"label_values({metric}, {label})"


def _query_variable(name: str, label: str, definition: str) -> QueryVariable:
    return (
        QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query({"query": definition, "refId": name})
        .definition(definition)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )


def _all_of(variable: QueryVariable) -> QueryVariable:
    """Multi-select with an All whose value `.*` also matches series lacking the label."""
    return (
        variable.multi(True)
        .include_all(True)
        .all_value(".*")
        .current(model.VariableOption(text="All", value="$__all"))
    )


def _variables(board: Dashboard) -> Dashboard:
    return (
        board.with_variable(
            DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(
            _query_variable(
                "job", "Job", _label_values("agent_registry_exporter_build_info", "job")
            )
            .multi(False)
            .include_all(False)
        )
        .with_variable(
            _all_of(
                _query_variable(
                    "instance",
                    "Instance",
                    _label_values('agent_registry_exporter_build_info{job=~"$job"}', "instance"),
                )
            )
        )
        .with_variable(
            TextBoxVariable("user_id")
            .label("User (regex)")
            .default_value(".*")
            .current(model.VariableOption(text=".*", value=".*"))
            .description("Optional: a user id or regex to narrow the per-user panels.")
        )
    )


def build_dashboard() -> model.Dashboard:
    """The dashboard as the SDK's model."""
    board = (
        Dashboard("Agent registry")
        .uid(UID)
        .description("Sessions, agents and cleanups of agent-registry-exporter.")
        .tags(["agent-registry", "prometheus"])
        .readonly()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .version(1)
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("browser")
    )
    for section in (_variables, _now, _over_time, _users, _remediation, _exporter):
        board = section(board)
    return number_panels(board.build())


def render_dashboard_json() -> str:
    """The dashboard as committed in `grafana/agent-registry.json`."""
    return encode(build_dashboard())


def render_dashboard() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    data: dict[str, Any] = json.loads(render_dashboard_json())
    return data
