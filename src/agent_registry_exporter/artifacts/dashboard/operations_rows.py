"""Rows about the machinery around the registries: workers, remediation, memory, the exporter."""

from __future__ import annotations

from ...exporting import catalogue as c
from .promql import REGISTRY_MEMORY, SEL, WORKER_SEL, rate
from .sdk import Dashboard, Row, graph_panel, model, query, stat_panel

__all__ = ["exporter", "memory", "remediation", "workers"]


def workers(board: Dashboard) -> Dashboard:
    return (
        board.with_row(Row("Workers (sidecar mode)"))
        .with_panel(
            graph_panel(
                "Workers answering",
                "Did each backend worker answer the sidecar's last gathers? 1 answered, 0 down "
                "or too slow (its series vanish meanwhile). Empty in embedded mode.",
                "none",
                [query(f"{c.SOURCE_UP.sample}{{{WORKER_SEL}}}", "{{worker}} on {{instance}}")],
                w=6,
                h=7,
            ).min(0)
        )
        .with_panel(
            graph_panel(
                "Worker gather time",
                "How long did the sidecar wait for each worker's snapshot? Close to the deadline, "
                "the worker's event loop is stalled. Empty in embedded mode.",
                "s",
                [
                    query(
                        f"{c.SOURCE_SCRAPE_DURATION.sample}{{{WORKER_SEL}}}",
                        "{{worker}} on {{instance}}",
                    )
                ],
                w=6,
                h=7,
            )
        )
        .with_panel(
            graph_panel(
                "Agents per worker",
                "How are each pod's agents spread over its workers? One line per replica in "
                "embedded mode.",
                "none",
                [
                    query(
                        f"sum by (instance, worker) ({c.AGENTS.sample}{{{WORKER_SEL}}})",
                        "{{worker}} on {{instance}}",
                    )
                ],
                w=6,
                h=7,
            )
        )
        .with_panel(
            graph_panel(
                "Dead worker sockets removed",
                "How often does the sidecar remove the socket of a dead worker (connections "
                "refused repeatedly)? Steady removals: workers crash and restart.",
                "ops",
                [
                    query(
                        rate(c.SOURCE_SOCKETS_REMOVED.sample, "instance"),
                        "{{instance}}",
                    )
                ],
                w=6,
                h=7,
            )
        )
    )


def remediation(board: Dashboard) -> Dashboard:
    return (
        board.with_row(Row("Remediation"))
        .with_panel(
            graph_panel(
                "Cleanups per second by trigger and result",
                "What did the webhook decide? cleaned, not violating, duplicate, rate limited, "
                "forwarded, error, ...",
                "ops",
                [
                    query(
                        rate(c.CLEANUPS.sample, "trigger, result"),
                        "{{trigger}} {{result}}",
                    )
                ],
                w=6,
                h=8,
            )
        )
        .with_panel(
            graph_panel(
                "Agents closed per second",
                "How many agents do cleanups close on each replica?",
                "ops",
                [query(rate(c.CLEANED_AGENTS.sample, "instance"), "{{instance}}")],
                w=6,
                h=8,
            )
        )
        .with_panel(
            graph_panel(
                "Webhook responses by code",
                "How did the webhook answer? 200 handled, 429 deferred (rate limit, breaker), "
                "4xx refused, 5xx retried.",
                "reqps",
                [query(rate(c.WEBHOOK_REQUESTS.sample, "code"), "{{code}}")],
                w=6,
                h=8,
            )
        )
        .with_panel(
            graph_panel(
                "Alerts forwarded to the owning replica",
                "Which replica received alerts for sessions on another pod (forwarded), or "
                "naming an instance that is no current peer (unknown_instance: forged, or a pod "
                "that is gone)?",
                "ops",
                [
                    query(
                        rate(
                            c.CLEANUPS.sample,
                            "instance, result",
                            f'{SEL}, result=~"forwarded|unknown_instance"',
                        ),
                        "{{result}} by {{instance}}",
                    )
                ],
                w=6,
                h=8,
            )
        )
    )


def memory(board: Dashboard) -> Dashboard:
    per_registry = "{{instance}} {{worker}}"
    return (
        board.with_row(Row("Memory"))
        .with_panel(
            graph_panel(
                "Cleaned agents still alive",
                "Are the agents that cleanups closed really freed? Above 0, something still "
                "references them leak_grace_seconds after their cleanup.",
                "none",
                [query(f"{c.CLEANED_AGENTS_ALIVE.sample}{{{WORKER_SEL}}}", per_registry)],
                w=6,
                h=8,
            ).min(0)
        )
        .with_panel(
            graph_panel(
                "Cleaned agents not watched",
                "How many cleaned agents could not be watched for a leak (no weak reference "
                "support, or over the tracking bound)? Those are missing from the count beside.",
                "ops",
                [
                    query(
                        rate(
                            c.CLEANED_AGENTS_UNTRACKED.sample,
                            "instance, worker",
                            WORKER_SEL,
                        ),
                        per_registry,
                    )
                ],
                w=6,
                h=8,
            )
        )
        .with_panel(
            graph_panel(
                "Resident memory against agents",
                "Does the memory of each process holding a registry follow its agents? Resident "
                "memory on the left axis, live agents on the right.",
                "bytes",
                [
                    query(REGISTRY_MEMORY, f"memory {per_registry}"),
                    query(f"{c.AGENTS.sample}{{{WORKER_SEL}}}", f"agents {per_registry}"),
                ],
                w=6,
                h=8,
            ).override_by_query(
                "B",
                [
                    model.DynamicConfigValue(id_val="unit", value="none"),
                    model.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                ],
            )
        )
        .with_panel(
            graph_panel(
                "Bytes per agent",
                "What does one live agent cost in resident memory, over time? Rising while the "
                "agents stay flat: memory held outside the registry.",
                "bytes",
                [
                    query(
                        f"({REGISTRY_MEMORY}) / ({c.AGENTS.sample}{{{WORKER_SEL}}} > 0)",
                        per_registry,
                    )
                ],
                w=6,
                h=8,
            )
        )
    )


def exporter(board: Dashboard) -> Dashboard:
    return (
        board.with_row(Row("Exporter"))
        .with_panel(
            graph_panel(
                "Scrape render duration",
                "How long did each replica take to render /metrics?",
                "s",
                [query(f"{c.SCRAPE_DURATION.sample}{{{SEL}}}", "{{instance}}")],
                w=6,
                h=7,
            )
        )
        .with_panel(
            graph_panel(
                "Users left out by the series cap",
                "How many users are not exported per user because of max_user_series? Totals "
                "stay exact.",
                "none",
                [
                    query(
                        f"{c.USER_SERIES_OMITTED.sample}{{{WORKER_SEL}}}",
                        "{{instance}} {{worker}}",
                    )
                ],
                w=6,
                h=7,
            )
        )
        .with_panel(
            graph_panel(
                "Failed renders",
                "Did any /metrics render fail (answered 500, the scrape lost)?",
                "ops",
                [
                    query(
                        rate(c.RENDER_FAILURES.sample, "instance"),
                        "{{instance}}",
                    )
                ],
                w=6,
                h=7,
            )
        )
        .with_panel(
            graph_panel(
                "Requests refused for their credentials",
                "Which requests did the exporter refuse for their credentials, by reason? A "
                "steady rate: a scraper with a stale password or token, or someone probing.",
                "reqps",
                [
                    query(
                        rate(c.AUTH_FAILURES.sample, "instance, reason"),
                        "{{reason}} on {{instance}}",
                    )
                ],
                w=6,
                h=7,
            )
        )
        .with_panel(
            stat_panel(
                "Exporters up",
                "Which scrape targets answer? 0 means nothing is monitored there.",
                f"up{{{SEL}}}",
                "{{instance}}",
                w=24,
                h=4,
            )
        )
    )
