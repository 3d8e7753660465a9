"""Rows about what the registries hold: now, over time, per user."""

from __future__ import annotations

from typing import Any

from ...exporting import catalogue as c
from .promql import SEL, SESSION, SESSION_AGE, USER_SEL, WORKER_SEL, threshold, threshold_line
from .sdk import (
    Dashboard,
    Row,
    graph_panel,
    panel,
    query,
    stat_panel,
    table,
    table_panel,
)

__all__ = ["now", "over_time", "users"]


def now(board: Dashboard) -> Dashboard:
    return (
        board.with_row(Row("Now"))
        .with_panel(
            stat_panel(
                "Users",
                "How many sessions do the selected registries hold?",
                f"sum({c.USERS.sample}{{{WORKER_SEL}}})",
            )
        )
        .with_panel(
            stat_panel(
                "Agents",
                "How many live agents do the selected registries hold?",
                f"sum({c.AGENTS.sample}{{{WORKER_SEL}}})",
            )
        )
        .with_panel(
            stat_panel(
                "Users over the agent limit",
                "How many sessions hold more agents than agents_per_user? The webhook cleans "
                "them up.",
                f"count({c.USER_AGENTS.sample}{{{USER_SEL}}} > on (job, instance) "
                f"group_left {threshold('agents_per_user')}) or vector(0)",
            )
        )
        .with_panel(
            stat_panel(
                "Sessions over the age limit",
                "How many sessions are older than session_age_seconds? The webhook cleans them up.",
                f"count(({SESSION_AGE}) > on (job, instance) group_left "
                f"{threshold('session_age_seconds')}) or vector(0)",
            )
        )
        .with_panel(
            panel(
                table.Panel(),
                "Firing alerts",
                "Which agent-registry alerts fire now, for which instance, worker and user?",
                "none",
                [
                    query(
                        "sum by (alertname, instance, worker, user_id, severity) "
                        f'(ALERTS{{{SEL}, alertstate="firing", alertname=~"AgentRegistry.*"}})',
                        instant=True,
                    )
                ],
                w=24,
                h=6,
            )
        )
    )


def over_time(board: Dashboard) -> Dashboard:
    return (
        board.with_row(Row("Over time"))
        .with_panel(
            graph_panel(
                "Users and agents per instance",
                "How many sessions and agents does each replica hold (all its workers), against "
                "the total_agents limit?",
                "none",
                [
                    query(
                        f"sum by (instance) ({c.USERS.sample}{{{WORKER_SEL}}})",
                        "users {{instance}}",
                    ),
                    query(
                        f"sum by (instance) ({c.AGENTS.sample}{{{WORKER_SEL}}})",
                        "agents {{instance}}",
                    ),
                    query(threshold_line("total_agents"), "total limit"),
                ],
                w=12,
                h=8,
            )
        )
        .with_panel(
            graph_panel(
                "Agents per user against the limit",
                "Which ten sessions hold the most agents, against agents_per_user? In sidecar "
                "mode each line is one user's session on one worker: what the alert checks.",
                "none",
                [
                    query(f"topk(10, {c.USER_AGENTS.sample}{{{USER_SEL}}})", SESSION),
                    query(threshold_line("agents_per_user"), "limit"),
                ],
                w=12,
                h=8,
            )
        )
    )


def users(board: Dashboard) -> Dashboard:
    return (
        board.with_row(Row("Users"))
        .with_panel(
            table_panel(
                "Users with the most agents",
                "Which 20 sessions hold the most agents? Per worker in sidecar mode: the value "
                "each worker's lifecycle manager checks against agents_per_user.",
                "none",
                f"topk(20, {c.USER_AGENTS.sample}{{{USER_SEL}}})",
            )
        )
        .with_panel(
            table_panel(
                "Users with the most agents, all workers of a pod",
                "Which 20 users hold the most agents on a pod, summed over its workers? The "
                "same as the per-worker view in embedded mode; the limit applies per worker.",
                "none",
                f"topk(20, sum without (worker) ({c.USER_AGENTS.sample}{{{USER_SEL}}}))",
            )
        )
        .with_panel(
            table_panel(
                "Oldest sessions",
                "Which 20 sessions are the oldest (from their created timestamp)?",
                "s",
                f"topk(20, {SESSION_AGE})",
            )
        )
        .with_panel(
            graph_panel(
                "Agents-per-session distribution",
                "How many agents do sessions hold, over every session (the "
                "agent_registry_session_agents histogram, whatever the series cap and minimum "
                "pressure leave out), against agents_per_user?",
                "none",
                [
                    *_quantiles(c.SESSION_AGENTS.series[0]),
                    query(threshold_line("agents_per_user"), "limit"),
                ],
                w=12,
                h=9,
            )
        )
        .with_panel(
            graph_panel(
                "Session-age distribution",
                "How old are sessions, over every session (the "
                "agent_registry_session_age_seconds histogram), against session_age_seconds?",
                "s",
                [
                    *_quantiles(c.SESSION_AGE.series[0]),
                    query(threshold_line("session_age_seconds"), "limit"),
                ],
                w=12,
                h=9,
            )
        )
    )


def _quantiles(buckets: str) -> list[Any]:
    """The median, 90th and 99th percentiles of a histogram over the selected registries."""
    return [
        query(
            f"histogram_quantile({q}, sum by (le) ({buckets}{{{WORKER_SEL}}}))",
            f"p{round(q * 100)}",
        )
        for q in (0.5, 0.9, 0.99)
    ]
