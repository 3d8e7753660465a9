"""Basic auth from the web config: what it guards, how it refuses, what it costs."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from agent_registry_exporter import AgentRegistry, InProcessSource, Settings, create_app
from agent_registry_exporter.common.endpoints import WEBHOOK_PATH
from agent_registry_exporter.http.security import PortGuard, basic_auth
from agent_registry_exporter.http.security.basic_auth import AuthFailure, BasicAuthChecker

from ..conftest import DATA
from .conftest import WEBHOOK_TOKEN, basic, bcrypt_hash

ALICE = basic("alice", "wonderland")


def failures(text: str) -> dict[str, float]:
    """agent_registry_exporter_auth_failures_total by reason, as scraped."""
    return {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "agent_registry_exporter_auth_failures_total"
    }


def guard_of(app: web.Application) -> PortGuard:
    (guard,) = [m for m in app.middlewares if isinstance(m, PortGuard)]
    return guard


@pytest.fixture
def web_config(tmp_path: Path) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(
        f"basic_auth_users:\n  alice: {bcrypt_hash('wonderland')}\n"
        "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
    )
    return path


@pytest.fixture
async def client(aiohttp_client, registry: AgentRegistry, web_config: Path) -> TestClient:
    settings = Settings(web_config_file=web_config, webhook_token=WEBHOOK_TOKEN)
    return await aiohttp_client(create_app(InProcessSource(registry), settings))


async def scrape_failures(client: TestClient) -> dict[str, float]:
    resp = await client.get("/metrics", headers=ALICE)
    assert resp.status == 200
    return failures(await resp.text())


class TestWhatItGuards:
    async def test_right_password_gets_metrics(self, client, fill) -> None:
        """alice with her password scrapes /metrics."""
        await fill("u1", 3)
        resp = await client.get("/metrics", headers=ALICE)
        assert resp.status == 200
        assert 'agent_registry_user_agents{user_id="u1"} 3' in await resp.text()

    @pytest.mark.parametrize("path", ["/metrics", "/", "/no-such-page"])
    async def test_missing_credentials_are_refused_with_a_challenge(self, client, path) -> None:
        """No Authorization header: 401, a Basic challenge, a JSON reason, nothing else."""
        resp = await client.get(path)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith('Basic realm="agent-registry-exporter"')
        assert await resp.json() == {"error": "authentication required"}

    async def test_wrong_password_is_refused(self, client, fill) -> None:
        """The right user with the wrong password learns nothing about the registry."""
        await fill("secret-user", 3)
        resp = await client.get("/metrics", headers=basic("alice", "looking-glass"))
        assert resp.status == 401
        assert "secret-user" not in await resp.text()

    @pytest.mark.parametrize("path", ["/-/healthy", "/-/ready"])
    async def test_probes_stay_open_and_reveal_nothing(self, client, fill, path) -> None:
        """Probes need no credentials and answer one word."""
        await fill("u1", 3)
        resp = await client.get(path)
        assert resp.status == 200
        assert await resp.text() in ("healthy\n", "ready\n")

    async def test_failing_readiness_reveals_nothing(self, aiohttp_client, web_config) -> None:
        """A broken source makes /-/ready 503 without the exception's text."""

        class Broken(InProcessSource):
            async def snapshot(self) -> Any:
                raise ConnectionError("/run/secret/worker-7.sock refused")

            peek = snapshot  # what the probe reads

        settings = Settings(web_config_file=web_config)
        client = await aiohttp_client(create_app(Broken(AgentRegistry()), settings))
        resp = await client.get("/-/ready")
        assert resp.status == 503
        assert "secret" not in await resp.text()

    async def test_webhook_keeps_its_bearer_token(self, client, fill) -> None:
        """The webhook asks for its token, not for basic auth."""
        await fill("leaky", 60)
        body = (DATA / "webhook" / "firing-too-many-agents.json").read_bytes()
        with_token = await client.post(
            WEBHOOK_PATH, data=body, headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"}
        )
        assert with_token.status == 200, await with_token.text()
        with_basic = await client.post(WEBHOOK_PATH, data=body, headers=ALICE)
        assert with_basic.status == 401
        assert with_basic.headers["WWW-Authenticate"].startswith("Bearer")

    async def test_dot_segments_do_not_reach_metrics_through_a_probe(self, client) -> None:
        """`/-/healthy/../metrics` on the wire is /metrics: it needs credentials."""
        host, port = client.server.host, client.server.port
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /-/healthy/../metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


class TestRefusals:
    @pytest.mark.parametrize(
        ("header", "reason"),
        [
            (None, "missing_credentials"),
            ("Bearer abc", "malformed_credentials"),
            ("Basic !!!not-base64!!!", "malformed_credentials"),
            ("Basic " + base64.b64encode(b"no-colon").decode(), "malformed_credentials"),
            ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "malformed_credentials"),
            # Issue 20, finding 3: valid UTF-8 that is no base64 alphabet raised ValueError.
            ("Basic é", "malformed_credentials"),
            ("Basic \u00e9\u00e9\u00e9\u00e9", "malformed_credentials"),
            (basic("mallory", "wonderland")["Authorization"], "unknown_user"),
            (basic("alice", "looking-glass")["Authorization"], "wrong_password"),
            (basic("alice", "w" * 500)["Authorization"], "wrong_password"),
            (basic("alice", "wonder\x00land")["Authorization"], "wrong_password"),
        ],
    )
    async def test_each_refusal_is_counted_by_reason(self, client, header, reason) -> None:
        """One refused request adds one to its reason and to no other."""
        before = await scrape_failures(client)
        headers = {"Authorization": header} if header is not None else {}
        resp = await client.get("/metrics", headers=headers)
        assert resp.status == 401
        after = await scrape_failures(client)
        assert {k: after[k] - before[k] for k in after} == {
            k: (1.0 if k == reason else 0.0) for k in after
        }

    async def test_credentials_of_raw_non_utf8_bytes_are_a_counted_401(self, client, caplog):
        """Attack (finding 3): `Basic \\xff\\xfe` on the wire answered 500 with a traceback
        logged per request, and was not counted; now a 401 counted as malformed, no error."""
        before = await scrape_failures(client)
        caplog.set_level("WARNING")
        host, port = client.server.host, client.server.port
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic \xff\xfe\r\n"
            b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        after = await scrape_failures(client)
        assert after["malformed_credentials"] - before["malformed_credentials"] == 1
        assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]

    async def test_oversized_credentials_are_refused_before_any_check(self, client) -> None:
        """A 64 KiB Authorization header is refused by the HTTP parser: no bcrypt, no 200."""
        huge = basic("alice", "x" * 48_000)
        resp = await client.get("/metrics", headers=huge)
        assert resp.status in (400, 431)
        assert guard_of(client.app).checker.bcrypt_runs == 0

    async def test_wrong_webhook_token_is_counted(self, client) -> None:
        """The webhook's own refusals are auth failures too."""
        resp = await client.post(WEBHOOK_PATH, data=b"{}", headers={"Authorization": "Bearer x"})
        assert resp.status == 401
        assert (await scrape_failures(client))["webhook_token"] == 1

    async def test_password_never_reaches_the_log(self, client, caplog) -> None:
        """Neither a wrong nor a right password is logged."""
        caplog.set_level("DEBUG")
        await client.get("/metrics", headers=basic("alice", "looking-glass"))
        await client.get("/metrics", headers=ALICE)
        assert "looking-glass" not in caplog.text
        assert "wonderland" not in caplog.text

    async def test_configured_headers_are_on_every_answer(self, client) -> None:
        """http_server_config.headers are set on 200, 401 and probe answers alike."""
        for resp in (
            await client.get("/metrics", headers=ALICE),
            await client.get("/metrics"),
            await client.get("/-/healthy"),
        ):
            assert resp.headers["X-Content-Type-Options"] == "nosniff", resp.status


class TestCost:
    async def test_repeated_scrapes_run_bcrypt_once(self, client) -> None:
        """Twenty scrapes with the same credentials cost one bcrypt check."""
        for _ in range(20):
            assert (await client.get("/metrics", headers=ALICE)).status == 200
        assert guard_of(client.app).checker.bcrypt_runs == 1

    async def test_a_stale_password_runs_bcrypt_once(self, client) -> None:
        """A scraper with an old password is refused every time for one bcrypt check."""
        stale = basic("alice", "old-password")
        for _ in range(10):
            assert (await client.get("/metrics", headers=stale)).status == 401
        assert guard_of(client.app).checker.bcrypt_runs == 1

    async def test_concurrent_first_scrapes_share_one_check(self, client) -> None:
        """Ten scrapes racing with the same new credentials: one bcrypt, ten answers."""
        answers = await asyncio.gather(*(client.get("/metrics", headers=ALICE) for _ in range(10)))
        assert [r.status for r in answers] == [200] * 10
        assert guard_of(client.app).checker.bcrypt_runs == 1

    async def test_cached_success_does_not_outlive_a_changed_hash(self, client, web_config) -> None:
        """After alice's hash changes, her old password is refused at once."""
        assert (await client.get("/metrics", headers=ALICE)).status == 200
        web_config.write_text(f"basic_auth_users:\n  alice: {bcrypt_hash('new-password')}\n")
        assert (await client.get("/metrics", headers=ALICE)).status == 401
        new = basic("alice", "new-password")
        assert (await client.get("/metrics", headers=new)).status == 200

    async def test_rewrite_keeping_size_and_mtime_is_picked_up(self, client, web_config) -> None:
        """A new hash of the same length, the file's timestamps put back: still reloaded."""
        assert (await client.get("/metrics", headers=ALICE)).status == 200
        before = os.stat(web_config)
        web_config.write_text(
            web_config.read_text().replace(
                web_config.read_text().split("alice: ")[1].split("\n")[0], bcrypt_hash("rotated!!")
            )
        )
        os.utime(web_config, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert os.stat(web_config).st_size == before.st_size
        assert (await client.get("/metrics", headers=ALICE)).status == 401
        assert (await client.get("/metrics", headers=basic("alice", "rotated!!"))).status == 200


class ModelTime:
    """Time as a model: a bcrypt run at cost c takes 2**c units; sleeping takes what it asks.

    What a refusal costs is then exact, so comparing refusals is no wall-clock assertion.
    """

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)

    def bcrypt_run(self, hashed: bytes) -> None:
        self.now += 2 ** int(hashed.decode()[4:6])


@pytest.fixture
def model_time(monkeypatch) -> ModelTime:
    model = ModelTime()
    real_checkpw, real_hashpw = basic_auth.bcrypt.checkpw, basic_auth.bcrypt.hashpw

    def checkpw(password: bytes, hashed: bytes) -> bool:
        model.bcrypt_run(hashed)
        return real_checkpw(password, hashed)

    def hashpw(password: bytes, salt: bytes) -> bytes:
        model.bcrypt_run(salt)
        return real_hashpw(password, salt)

    monkeypatch.setattr(basic_auth.bcrypt, "checkpw", checkpw)
    monkeypatch.setattr(basic_auth.bcrypt, "hashpw", hashpw)
    return model


class TestRefusalTiming:
    """Issue 20, finding 4: the time of a refusal named which users exist (a cost-10 decoy
    for unknown users against each user's own cost: 152 ms, 767 ms at cost 12, 11 ms at 5)."""

    USERS: Mapping[str, str] = MappingProxyType(
        {"low": bcrypt_hash("pw-low", 4), "high": bcrypt_hash("pw-high", 6)}
    )

    async def refusal_cost(self, checker: BasicAuthChecker, model: ModelTime, user: str) -> float:
        started = model.now
        verdict = await checker.check(self.USERS, basic(user, "wrong guess")["Authorization"])
        assert verdict in (AuthFailure.UNKNOWN_USER, AuthFailure.WRONG_PASSWORD)
        return model.now - started

    async def test_a_refusal_costs_the_same_whoever_is_named(self, model_time) -> None:
        """Unknown user, a cost-4 user and a cost-6 user: each refusal costs one cost-6 run."""
        checker = BasicAuthChecker(clock=model_time.clock, sleep=model_time.sleep)
        await self.refusal_cost(checker, model_time, "warm-up")  # the first pays a decoy
        costs = {
            user: await self.refusal_cost(checker, model_time, user)
            for user in ("mallory", "low", "high", "eve")
        }
        assert costs == dict.fromkeys(costs, 2.0**6)

    async def test_the_first_refusal_costs_the_same_for_known_and_unknown_users(
        self, model_time
    ) -> None:
        """The decoy of the highest cost is made by whichever refusal comes first."""
        firsts = []
        for user in ("mallory", "low"):
            checker = BasicAuthChecker(clock=model_time.clock, sleep=model_time.sleep)
            firsts.append(await self.refusal_cost(checker, model_time, user))
        assert firsts[0] == firsts[1]

    async def test_a_right_password_is_not_slowed_down(self, model_time) -> None:
        """Only refusals are padded: alice at cost 4 is let in after her own check."""
        checker = BasicAuthChecker(clock=model_time.clock, sleep=model_time.sleep)
        await self.refusal_cost(checker, model_time, "warm-up")
        started = model_time.now
        assert await checker.check(self.USERS, basic("low", "pw-low")["Authorization"]) is None
        assert model_time.now - started == 2.0**4


class TestRateLimit:
    async def test_requests_over_the_rate_are_answered_429_but_probes_pass(
        self, aiohttp_client, registry, tmp_path
    ) -> None:
        """burst 2 per hour: the third scrape is 429 with a reason; probes are never limited."""
        path = tmp_path / "web.yml"
        path.write_text("rate_limit:\n  interval: 1h\n  burst: 2\n")
        app = create_app(InProcessSource(registry), Settings(web_config_file=path))
        client = await aiohttp_client(app)
        statuses = [(await client.get("/metrics")).status for _ in range(3)]
        assert statuses == [200, 200, 429]
        limited = await client.get("/")
        assert json.loads(await limited.text())["error"].startswith("rate limit")
        assert (await client.get("/-/healthy")).status == 200
