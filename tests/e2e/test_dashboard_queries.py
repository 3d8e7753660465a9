"""Every dashboard query, run against the live Prometheus scraping a demo workload."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent_registry_exporter.artifacts.dashboard import render_dashboard
from agent_registry_exporter.demo import populate
from agent_registry_exporter.demo.stack import get_json

from ..test_dashboard import CORE_PANELS, data_panels, substitute
from .conftest import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

# What one embedded exporter with users fills: every target of these panels returns series.
# Alerts may be resolved already; the sidecar's and the fleet's panels need what those modes
# export.
EMBEDDED_PANELS = (CORE_PANELS - {"Firing alerts"}) | {
    "Exporters up",
    "Users with the most agents, all workers of a pod",
    "Agents per worker",
    "Cleaned agents still alive",
    "Resident memory against agents",
    "Bytes per agent",
}


@dataclass
class Answers:
    """What Prometheus answered for each panel's targets, instant and range."""

    failures: list[tuple[str, str, Any]] = field(default_factory=list)
    returned: dict[str, set[str]] = field(default_factory=dict)  # title -> refIds with series

    def silent_targets(self, titles: set[str], dashboard: dict[str, Any]) -> list[str]:
        return [
            f"{p['title']} {t['refId']}"
            for p in data_panels(dashboard)
            if p["title"] in titles
            for t in p["targets"]
            if t["refId"] not in self.returned.get(p["title"], set())
        ]


async def ask_every_target(prom: str, dashboard: dict[str, Any], **variables: str) -> Answers:
    answers = Answers()
    now = time.time()
    for panel in data_panels(dashboard):
        for target in panel["targets"]:
            expr = substitute(target["expr"], **variables).replace("[1m]", "[4s]")
            instant = await asyncio.to_thread(
                get_json, f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            )
            ranged = await asyncio.to_thread(
                get_json,
                f"{prom}/api/v1/query_range?"
                + urllib.parse.urlencode(
                    {"query": expr, "start": now - 30, "end": now, "step": "1s"}
                ),
            )
            for answer in (instant, ranged):
                if answer["status"] != "success":
                    answers.failures.append((panel["title"], expr, answer))
            if instant["data"]["result"]:
                answers.returned.setdefault(panel["title"], set()).add(target["refId"])
    return answers


async def variable_values(
    prom: str, dashboard: dict[str, Any], name: str, **variables: str
) -> list[str]:
    """The values Grafana would offer for a `label_values(selector, label)` variable."""
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == name]
    selector, label = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["definition"]).groups()
    url = f"{prom}/api/v1/label/{label}/values?" + urllib.parse.urlencode(
        {"match[]": substitute(selector, **variables)}
    )
    answer = await asyncio.to_thread(get_json, url)
    assert answer["status"] == "success", answer
    values: list[str] = answer["data"]
    return values


async def test_every_panel_query_runs_and_embedded_panels_have_data(harness, registry) -> None:
    """Instant and range queries succeed for every target; the embedded panels return series."""
    await populate(registry)  # includes users over the limits: the loop calls the webhook
    expected = str(len(registry))

    def scraped() -> bool:
        result = harness.stack.query(f'agent_registry_users{{instance="{harness.instance}"}}')
        return bool(result) and result[0]["value"][1] == expected

    def webhook_called_and_scraped() -> bool:
        return bool(
            harness.stack.query(
                f'agent_registry_webhook_requests_total{{instance="{harness.instance}"}}'
            )
        )

    await eventually(lambda: asyncio.to_thread(scraped), 20, "Prometheus scraped the workload")
    await eventually(
        lambda: asyncio.to_thread(webhook_called_and_scraped), 30, "a webhook call was scraped"
    )
    await asyncio.sleep(4)  # a few more samples, so rate() over 4 s has two points

    dashboard = render_dashboard()
    prom = harness.stack.prometheus_url
    # The worker variable as Grafana would fill it: nothing in embedded mode, so it stays on All
    # (`.*`), which the queries above already used.
    assert await variable_values(prom, dashboard, "worker", instance=harness.instance) == []
    assert harness.instance in await variable_values(prom, dashboard, "instance")
    answers = await ask_every_target(prom, dashboard, instance=harness.instance)
    assert answers.failures == []
    assert answers.silent_targets(EMBEDDED_PANELS, dashboard) == []
