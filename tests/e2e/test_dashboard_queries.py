"""Every dashboard query, run against the live Prometheus scraping each workload it is made
for: an embedded exporter, a sidecar over two workers, a fleet of replicas."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import ClientSession

from agent_registry_exporter import AgentRegistry, Settings, SidecarSource
from agent_registry_exporter.artifacts.dashboard import render_dashboard
from agent_registry_exporter.demo import populate
from agent_registry_exporter.http import ExporterServer, create_app
from agent_registry_exporter.testing import free_port, start_on_free_port_async, wait_until_async
from agent_registry_exporter.testing.fleet import LocalFleet
from agent_registry_exporter.testing.stack import LocalStack, get_json

from ..conftest import add_agents, serving_workers
from ..test_dashboard import CORE_PANELS, data_panels, substitute
from ..test_remediation import payload
from .conftest import STACK_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

# What one embedded exporter with users fills: every target of these panels returns series.
# Alerts may be resolved already; the sidecar's and the fleet's panels need what those modes
# export.
EMBEDDED_PANELS = (CORE_PANELS - {"Firing alerts"}) | {
    "Exporters up",
    "Failed renders",
    "Requests refused for their credentials",
    "Users with the most agents, all workers of a pod",
    "Agents per worker",
    "Cleaned agents still alive",
    "Cleaned agents not watched",
    "Resident memory against agents",
    "Bytes per agent",
}

# What a sidecar over workers with users fills without any alert delivered.
SIDECAR_PANELS = (
    CORE_PANELS
    - {"Firing alerts", "Cleanups per second by trigger and result", "Webhook responses by code"}
) | {
    "Users with the most agents, all workers of a pod",
    "Workers answering",
    "Worker gather time",
    "Agents per worker",
    "Dead worker sockets removed",
    "Cleaned agents still alive",
    "Cleaned agents not watched",
    "Resident memory against agents",
    "Bytes per agent",
    "Exporters up",
}
FLEET_PANEL = "Alerts forwarded to the owning replica"


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


async def instant(prom: str, expr: str) -> list[dict[str, Any]]:
    answer = await asyncio.to_thread(
        get_json, f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    )
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def target(dashboard: dict[str, Any], title: str, ref: str = "A") -> str:
    (panel,) = [p for p in data_panels(dashboard) if p["title"] == title]
    (expr,) = [t["expr"] for t in panel["targets"] if t["refId"] == ref]
    return str(expr)


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

    await wait_until_async(
        lambda: asyncio.to_thread(scraped), timeout=20, message="Prometheus scraped the workload"
    )
    await wait_until_async(
        lambda: asyncio.to_thread(webhook_called_and_scraped),
        timeout=30,
        message="a webhook call was scraped",
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


@dataclass
class Modes:
    """A sidecar over two workers and two fleet replicas, scraped by one Prometheus whose
    alerts reach no receiver: the test alone decides what the webhooks get."""

    stack: LocalStack
    sidecar: str
    workers: dict[str, AgentRegistry]
    fleet: LocalFleet
    token: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def modes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Modes]:
    token = secrets.token_urlsafe(24)

    async def sidecar_on(port: int, source: SidecarSource) -> ExporterServer:
        settings = Settings(
            listen_host="127.0.0.1",
            listen_port=port,
            webhook_token=token,
            instance=f"127.0.0.1:{port}",
        )
        server = ExporterServer(create_app(source, settings), "127.0.0.1", port)
        await server.start()
        return server

    async with contextlib.AsyncExitStack() as running:
        # A short directory: a Unix socket path must fit in 107 bytes.
        sockets = Path(running.enter_context(tempfile.TemporaryDirectory(prefix="ars-")))
        workers = await running.enter_async_context(serving_workers(sockets, "w1", "w2"))
        source = SidecarSource(sockets)
        running.push_async_callback(source.close)
        sidecar = await start_on_free_port_async(lambda port: sidecar_on(port, source))
        running.push_async_callback(sidecar.stop)
        port = sidecar.port
        fleet = LocalFleet(("127.0.0.5", "127.0.0.6"), token)
        await fleet.start()
        running.push_async_callback(fleet.stop)
        stack = LocalStack(
            workdir=tmp_path_factory.mktemp("modes"),
            targets=[f"127.0.0.1:{port}", *fleet.targets],
            token=token,
            webhook_address=f"127.0.0.1:{free_port()}",  # nobody listens
        )
        running.push_async_callback(asyncio.to_thread, stack.stop)
        await asyncio.to_thread(stack.start)
        previous = request.config.stash.get(STACK_KEY, None)
        request.config.stash[STACK_KEY] = stack
        try:
            yield Modes(stack, f"127.0.0.1:{port}", workers, fleet, token)
        finally:
            if previous is not None:
                request.config.stash[STACK_KEY] = previous


async def test_sidecar_fills_the_worker_panels_and_the_pod_view_sums_workers(modes) -> None:
    """Two workers behind a sidecar: the worker variable lists both, every worker panel has
    data, one worker selected narrows the per-worker view, the pod view adds a user's sessions."""
    await add_agents(modes.workers["w1"], "both", 3)
    await add_agents(modes.workers["w2"], "both", 4)
    await add_agents(modes.workers["w1"], "greedy", 60)  # over the limit: its alert goes nowhere
    await add_agents(modes.workers["w2"], "solo", 2)
    prom = modes.stack.prometheus_url

    async def both_workers_scraped() -> bool:
        found = await instant(prom, f'agent_registry_users{{instance="{modes.sidecar}"}}')
        return {r["metric"].get("worker") for r in found} == {"w1", "w2"}

    await wait_until_async(
        both_workers_scraped, timeout=20, message="Prometheus scraped both workers"
    )
    await asyncio.sleep(4)  # a few more samples, so rate() over 4 s has two points
    dashboard = render_dashboard()
    assert await variable_values(prom, dashboard, "worker", instance=modes.sidecar) == [
        "w1",
        "w2",
    ]
    answers = await ask_every_target(prom, dashboard, instance=modes.sidecar)
    assert answers.failures == []
    assert answers.silent_targets(SIDECAR_PANELS, dashboard) == []

    async def ask(title: str, worker: str = ".*") -> list[dict[str, Any]]:
        return await instant(prom, substitute(target(dashboard, title), modes.sidecar, worker))

    (over,) = await ask("Users over the agent limit")
    assert over["value"][1] == "1"  # the limit joined per target though labelled per worker
    pod = {
        r["metric"]["user_id"]: r
        for r in await ask("Users with the most agents, all workers of a pod")
    }
    assert pod["both"]["value"][1] == "7"
    assert "worker" not in pod["both"]["metric"]
    sessions = await ask("Users with the most agents")
    both = sorted(
        (r["metric"]["worker"], r["value"][1]) for r in sessions if r["metric"]["user_id"] == "both"
    )
    assert both == [("w1", "3"), ("w2", "4")]
    # Memory per worker (what each worker's snapshot carries), not the sidecar's own process.
    per_agent = await ask("Bytes per agent")
    assert sorted(r["metric"].get("worker") for r in per_agent) == ["w1", "w2"]
    only_w2 = await ask("Users with the most agents", worker="w2")
    assert {(r["metric"]["worker"], r["metric"]["user_id"]) for r in only_w2} == {
        ("w2", "both"),
        ("w2", "solo"),
    }


async def test_fleet_panel_shows_forwarded_and_unknown_instance_by_replica(modes) -> None:
    """Replica a receives an alert for b's session (forwarded) and one naming an instance that
    is no peer (unknown_instance): the panel shows both results on a, at a rate above 0."""
    a, b = modes.fleet.replicas
    await add_agents(b.registry, "leaky", 60)
    prom = modes.stack.prometheus_url
    fleet_instances = "|".join(r.address for r in modes.fleet.replicas)  # as Grafana's multi

    async def scraped_before() -> bool:
        return bool(await instant(prom, f'agent_registry_cleanups_total{{instance="{a.address}"}}'))

    await wait_until_async(
        scraped_before, timeout=20, message="Prometheus scraped the replicas' zeroed counters"
    )
    async with ClientSession() as http:
        for user, instance in (("leaky", b.address), ("ghost", "127.0.0.9:9")):
            body = payload(user, instance=instance).model_dump_json(by_alias=True)
            async with http.post(
                f"http://{a.address}/webhook/alertmanager",
                data=body,
                headers={"Authorization": f"Bearer {modes.token}"},
            ) as resp:
                assert resp.status == 200, await resp.text()
    assert a.outcomes("leaky") == ["forwarded"]
    assert a.outcomes("ghost") == ["unknown_instance"]

    dashboard = render_dashboard()
    expr = substitute(target(dashboard, FLEET_PANEL), fleet_instances).replace("1m", "30s")

    async def both_results_seen() -> bool:
        rates = {
            (r["metric"]["instance"], r["metric"]["result"]): float(r["value"][1])
            for r in await instant(prom, expr)
        }
        return rates.get((a.address, "forwarded"), 0) > 0 and (
            rates.get((a.address, "unknown_instance"), 0) > 0
        )

    await wait_until_async(
        both_results_seen, timeout=20, message="forwarded and unknown_instance rates on a"
    )
    answers = await ask_every_target(prom, dashboard, instance=fleet_instances)
    assert answers.failures == []
    assert answers.silent_targets({FLEET_PANEL}, dashboard) == []
