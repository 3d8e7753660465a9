"""Every dashboard query, run against the live Prometheus scraping a demo workload."""

from __future__ import annotations

import asyncio
import time
import urllib.parse

import pytest

from agent_registry_exporter.artifacts.dashboard import render_dashboard
from agent_registry_exporter.demo import populate
from agent_registry_exporter.demo.stack import get_json

from ..test_dashboard import CORE_PANELS, data_panels, substitute
from .conftest import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

# A live registry with users must fill every core panel; alerts may be resolved already.
MUST_RETURN_DATA = (CORE_PANELS - {"Firing alerts"}) | {"Exporters up"}


async def test_every_panel_query_runs_and_core_panels_have_data(harness, registry) -> None:
    """Instant and range queries succeed for every target; the core panels return series."""
    await populate(registry)  # includes users over the limits: the loop calls the webhook
    expected = str(len(registry))
    prom = harness.stack.prometheus_url

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

    failures, empty = [], []
    now = time.time()
    for panel in data_panels(render_dashboard()):
        returned = False
        for target in panel["targets"]:
            expr = substitute(target["expr"], instance=harness.instance).replace("[1m]", "[4s]")
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
                    failures.append((panel["title"], expr, answer))
            returned = returned or bool(instant["data"]["result"])
        if panel["title"] in MUST_RETURN_DATA and not returned:
            empty.append(panel["title"])
    assert failures == []
    assert empty == []
