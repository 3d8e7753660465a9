"""The secured exporter on the real binaries: Prometheus scrapes it over HTTPS with basic
auth, Alertmanager calls its webhook over HTTPS, user ids are exported as keyed hashes and
the right session is still cleaned. No clear user id reaches either system."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import bcrypt
import pytest
import pytest_asyncio
import trustme

from agent_registry_exporter import AgentRegistry, InProcessSource, Settings
from agent_registry_exporter.http import ExporterServer, create_app
from agent_registry_exporter.remediation import Decision
from agent_registry_exporter.testing import wait_until_async
from agent_registry_exporter.testing.stack import JOB, ExporterAccess, LocalStack

from ..conftest import add_agents

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

WRONG_JOB = "wrong-password"
HASHED = re.compile(r"h:[0-9a-f]{20}")


@dataclass
class Secured:
    registry: AgentRegistry
    server: ExporterServer
    stack: LocalStack
    decisions: list[Decision] = field(default_factory=list)

    def raw(self, url: str) -> str:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback only
            return resp.read().decode()

    def api_answers(self) -> dict[str, str]:
        """Every Prometheus and Alertmanager API answer that could hold a label value."""
        prom, am = self.stack.prometheus_url, self.stack.alertmanager_url
        series = urllib.parse.urlencode({"match[]": '{__name__=~".+"}'})
        query = urllib.parse.urlencode({"query": '{__name__=~"agent_registry.*"}'})
        urls = {
            "series": f"{prom}/api/v1/series?{series}",
            "user_id values": f"{prom}/api/v1/label/user_id/values",
            "query": f"{prom}/api/v1/query?{query}",
            "prometheus alerts": f"{prom}/api/v1/alerts",
            "rules": f"{prom}/api/v1/rules",
            "targets": f"{prom}/api/v1/targets",
            "alertmanager alerts": f"{am}/api/v2/alerts",
            "alertmanager groups": f"{am}/api/v2/alerts/groups",
        }
        return {name: self.raw(url) for name, url in urls.items()}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def secured(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Secured]:
    workdir = tmp_path_factory.mktemp("secured")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(workdir / "tls.key"))
    cert.cert_chain_pems[0].write_to_path(str(workdir / "tls.crt"))
    ca.cert_pem.write_to_path(str(workdir / "ca.crt"))
    hashed = bcrypt.hashpw(b"scrape-pass", bcrypt.gensalt(4)).decode()
    (workdir / "web.yml").write_text(
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
        f"basic_auth_users:\n  prometheus: {hashed}\n"
    )
    (workdir / "password").write_text("scrape-pass")
    (workdir / "wrong-password").write_text("guess")
    (workdir / "hmac.key").write_text("an e2e key of more than sixteen bytes")

    registry = AgentRegistry()
    decisions: list[Decision] = []
    settings = Settings(
        listen_host="127.0.0.1",
        listen_port=0,  # bound here, in this process: the port is read back, never guessed
        webhook_token="e2e-hook-token",
        web_config_file=workdir / "web.yml",
        user_id_hmac_key_file=workdir / "hmac.key",
    )
    app = create_app(InProcessSource(registry), settings, on_decision=decisions.append)
    server = ExporterServer(app, "127.0.0.1", 0)
    await server.start()
    address = f"127.0.0.1:{server.port}"
    wrong = ExporterAccess(workdir / "ca.crt", "prometheus", workdir / "wrong-password")
    stack = LocalStack(
        workdir=workdir,
        targets=[address],
        token="e2e-hook-token",
        access=ExporterAccess(workdir / "ca.crt", "prometheus", workdir / "password"),
        extra_scrape_configs=[
            {
                "job_name": WRONG_JOB,
                "static_configs": [{"targets": [address]}],
                **wrong.scrape_config(),
            }
        ],
    )
    try:
        await asyncio.to_thread(stack.start)
        yield Secured(registry, server, stack, decisions)
    finally:
        await asyncio.to_thread(stack.stop)
        await server.stop()


async def up(secured: Secured, job: str) -> str | None:
    result = await asyncio.to_thread(secured.stack.query, f'up{{job="{job}"}}')
    return result[0]["value"][1] if result else None


async def test_https_scrape_with_basic_auth_is_up_and_a_wrong_password_is_down(
    secured: Secured,
) -> None:
    """up == 1 with the right password over HTTPS; up == 0 with a wrong one, counted."""

    async def refused_count() -> float:
        refused = await asyncio.to_thread(
            secured.stack.query,
            f'agent_registry_exporter_auth_failures_total{{job="{JOB}",reason="wrong_password"}}',
        )
        return float(refused[0]["value"][1]) if refused else 0.0

    async def both_scraped() -> bool:
        return await up(secured, JOB) == "1" and await up(secured, WRONG_JOB) == "0"

    await wait_until_async(
        both_scraped, timeout=30, message="up 1 for the right password and 0 for the wrong one"
    )

    async def refusals_counted() -> bool:
        # Seen by the next good scrape after a refused one.
        return await refused_count() >= 1

    await wait_until_async(
        refusals_counted, timeout=30, message="the exporter counting the wrong password"
    )


async def test_hashed_ids_loop_cleans_the_right_user_and_leaks_no_id(secured: Secured) -> None:
    """Alertmanager calls back over HTTPS with a hash; that user's session alone is cleaned,
    and no API answer of Prometheus or Alertmanager ever holds a clear id."""
    registry = secured.registry
    leaky = await add_agents(registry, "leaky-alice@example.com", 60)
    calm = await add_agents(registry, "calm-bob@example.com", 5)
    clear_ids = ("leaky-alice", "calm-bob", "example.com")
    answers: list[dict[str, str]] = []

    async def cleaned() -> bool:
        answers.append(await asyncio.to_thread(secured.api_answers))
        return registry.get_session("leaky-alice@example.com") is None

    await wait_until_async(
        cleaned, timeout=45, message="the leaking user's session cleaned through the webhook"
    )
    answers.append(await asyncio.to_thread(secured.api_answers))

    assert {a.closes for a in leaky} == {1}
    assert registry.get_session("calm-bob@example.com").agent_count == 5
    assert {a.closes for a in calm} == {0}
    (decision,) = [d for d in secured.decisions if d.outcome == "cleaned"]
    assert decision.user_id is not None
    assert HASHED.fullmatch(decision.user_id)
    assert decision.agents_cleaned == 60

    for answer in answers:
        for name, body in answer.items():
            for clear in clear_ids:
                assert clear not in body, f"{clear!r} in Prometheus/Alertmanager {name}"
    # The answers did hold the users (as hashes): the check above looked at real data.
    values = json.loads(answers[-1]["user_id values"])["data"]
    assert len(values) == 2
    assert all(HASHED.fullmatch(v) for v in values)
    assert any(decision.user_id in a["alertmanager alerts"] for a in answers), (
        "the alert was never seen in Alertmanager while it was active"
    )
