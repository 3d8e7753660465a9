"""The webhook endpoint, driven with a corpus of Alertmanager payloads.

Every case asserts the registry afterwards, not only the response.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from agent_registry_exporter import AgentRegistry, InProcessSource, Settings, create_app
from agent_registry_exporter.cli import main
from agent_registry_exporter.settings import NO_WEBHOOK_TOKEN

from .conftest import DATA, RecordingAgent

WEBHOOK = DATA / "webhook"
TOKEN = "s3cret-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LOCAL = "127.0.0.1:8464"

Post = Callable[..., Awaitable[tuple[int, dict[str, Any]]]]


@pytest.fixture
async def users(registry: AgentRegistry, fill) -> dict[str, list[RecordingAgent]]:
    """leaky: 60 agents; stale: 26 h old; healthy: 5 agents, 1 h old."""
    return {
        "leaky": await fill("leaky", 60),
        "stale": await fill("stale", 3, age_hours=26),
        "healthy": await fill("healthy", 5, age_hours=1),
    }


def make_client_factory(aiohttp_client, registry: AgentRegistry):
    async def factory(**settings: Any) -> TestClient:
        settings.setdefault("webhook_token", TOKEN)
        settings.setdefault("instance", LOCAL)
        return await aiohttp_client(create_app(InProcessSource(registry), Settings(**settings)))

    return factory


@pytest.fixture
def client_factory(aiohttp_client, registry):
    return make_client_factory(aiohttp_client, registry)


@pytest.fixture
async def client(client_factory, users) -> TestClient:
    return await client_factory()


@pytest.fixture
def post(client: TestClient) -> Post:
    async def _post(case: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
        body = (WEBHOOK / f"{case}.json").read_bytes()
        resp = await client.post(
            "/webhook/alertmanager", data=body, headers=AUTH if headers is None else headers
        )
        return resp.status, await resp.json()

    return _post


def outcomes(body: dict) -> list[str]:
    return [a["outcome"] for a in body["alerts"]]


def closed(agents: list[RecordingAgent]) -> list[int]:
    return sorted({a.closes for a in agents})


class TestCorpus:
    async def test_firing_too_many_agents_cleans_that_user(self, post, registry, users) -> None:
        """A firing remediation alert for a violating user cleans exactly that session."""
        status, body = await post("firing-too-many-agents")
        assert status == 200
        assert outcomes(body) == ["cleaned"]
        assert body["alerts"][0]["agents_cleaned"] == 60
        assert registry.get_session("leaky") is None
        assert closed(users["leaky"]) == [1]
        assert registry.get_session("stale") is not None
        assert registry.get_session("healthy").agent_count == 5

    async def test_session_too_old_with_nanosecond_timestamp(self, post, registry, users) -> None:
        """startsAt with nanoseconds parses; the old session is cleaned."""
        status, body = await post("firing-session-too-old")
        assert (status, outcomes(body)) == (200, ["cleaned"])
        assert registry.get_session("stale") is None
        assert closed(users["stale"]) == [1]

    async def test_resolved_alert_cleans_nothing(self, post, registry, users) -> None:
        """Resolved alerts are ignored."""
        status, body = await post("resolved")
        assert (status, outcomes(body)) == (200, ["ignored_resolved"])
        assert registry.get_session("leaky").agent_count == 60

    async def test_grouped_alerts_act_per_user(self, post, registry, users) -> None:
        """Two violating users are cleaned; the healthy one in the same group is kept."""
        status, body = await post("grouped-several-users")
        assert status == 200
        assert outcomes(body) == ["cleaned", "cleaned", "not_violating"]
        assert registry.get_session("leaky") is None
        assert registry.get_session("stale") is None
        assert registry.get_session("healthy").agent_count == 5
        assert closed(users["healthy"]) == [0]

    async def test_the_same_payload_twice_cleans_once(self, post, registry, fill) -> None:
        """A re-sent alert is a duplicate, even after the user leaked again."""
        await post("firing-too-many-agents")
        fresh = await fill("leaky", 70)
        status, body = await post("firing-too-many-agents")
        assert (status, outcomes(body)) == (200, ["duplicate"])
        assert registry.get_session("leaky").agent_count == 70
        assert closed(fresh) == [0]

    async def test_duplicate_alert_in_one_payload_acts_once(self, post, registry, users) -> None:
        """The same alert twice in one body: one cleanup."""
        status, body = await post("duplicate-in-one-payload")
        assert (status, outcomes(body)) == (200, ["cleaned", "duplicate"])
        assert closed(users["leaky"]) == [1]

    async def test_the_same_alert_from_two_alertmanagers_acts_once(self, post, users) -> None:
        """HA pairs deliver at least once: the second delivery is a duplicate."""
        _, first = await post("ha-pair-alertmanager-0")
        _, second = await post("ha-pair-alertmanager-1")
        assert (outcomes(first), outcomes(second)) == (["cleaned"], ["duplicate"])
        assert closed(users["leaky"]) == [1]

    async def test_concurrent_deliveries_from_an_ha_pair_act_once(self, post, users) -> None:
        """Both members delivering at the same moment still clean once."""
        (_, a), (_, b) = await asyncio.gather(
            post("ha-pair-alertmanager-0"), post("ha-pair-alertmanager-1")
        )
        assert sorted(outcomes(a) + outcomes(b)) == ["cleaned", "duplicate"]
        assert closed(users["leaky"]) == [1]

    async def test_missing_user_id_is_ignored(self, post, registry, users) -> None:
        """No user_id label, nothing to clean."""
        status, body = await post("missing-user-id")
        assert (status, outcomes(body)) == (200, ["ignored_no_user_id"])
        assert len(registry) == 3

    async def test_alert_without_remediation_label_is_ignored(self, post, registry, users):
        """The total-agents alert never cleans anything."""
        status, body = await post("no-remediation-label")
        assert (status, outcomes(body)) == (200, ["ignored_not_remediable"])
        assert len(registry) == 3

    async def test_real_alertmanager_sample_is_parsed_and_ignored(self, post, registry, users):
        """The body Alertmanager 0.25 really sent parses; it carries no remediation label."""
        status, body = await post("am-0.25-real-sample")
        assert (status, outcomes(body)) == (200, ["ignored_not_remediable"])
        assert registry.get_session("leaky").agent_count == 60

    async def test_another_replicas_alert_is_not_acted_on_here(self, post, registry, users):
        """An alert naming another instance leaves this registry alone."""
        status, body = await post("other-replica")
        assert (status, outcomes(body)) == (200, ["other_instance"])
        assert registry.get_session("leaky").agent_count == 60

    async def test_unknown_user_is_a_no_op(self, post, registry, users) -> None:
        """A user the registry does not know: no session, nothing created."""
        status, body = await post("unknown-user")
        assert (status, outcomes(body)) == (200, ["no_session"])
        assert registry.get_session("ghost") is None

    async def test_user_healthy_again_is_not_cleaned(self, post, registry, users) -> None:
        """A stale or forged alert cannot wipe a healthy session."""
        status, body = await post("healthy-again")
        assert (status, outcomes(body)) == (200, ["not_violating"])
        assert registry.get_session("healthy").agent_count == 5
        assert closed(users["healthy"]) == [0]

    async def test_truncated_payload_acts_on_what_it_carries(self, post, registry, users) -> None:
        """truncatedAlerts > 0 is reported back; the alerts present are handled."""
        status, body = await post("truncated")
        assert (status, outcomes(body), body["truncated_alerts"]) == (200, ["cleaned"], 3)
        assert registry.get_session("leaky") is None

    async def test_unknown_fields_from_newer_alertmanagers_are_ignored(self, post, registry, users):
        """notification_reason and routeLabels do not break parsing."""
        status, body = await post("newer-alertmanager-fields")
        assert (status, outcomes(body)) == (200, ["cleaned"])
        assert registry.get_session("leaky") is None


class TestBadInput:
    @pytest.mark.parametrize(
        ("case", "fragment"),
        [
            ("bad-invalid-json", "invalid JSON"),
            ("bad-wrong-types", "alerts.0.labels.user_id"),
            ("bad-missing-fields", "alerts.0.fingerprint"),
            ("bad-empty-alerts", "alerts"),
            ("bad-wrong-version", "version"),
        ],
    )
    async def test_invalid_payload_is_400_and_cleans_nothing(
        self, post, registry, users, case: str, fragment: str
    ) -> None:
        """Each malformed body gets 400 and a JSON body naming the problem."""
        status, body = await post(case)
        assert status == 400
        assert fragment in json.dumps(body)
        assert {len(registry), registry.get_session("leaky").agent_count} == {3, 60}
        assert closed(users["leaky"]) == [0]

    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": TOKEN},
        ],
        ids=["none", "wrong", "basic-scheme", "no-scheme"],
    )
    async def test_missing_or_wrong_token_is_401(self, client, registry, users, headers) -> None:
        """401 with WWW-Authenticate; nothing is cleaned."""
        body = (WEBHOOK / "firing-too-many-agents.json").read_bytes()
        resp = await client.post("/webhook/alertmanager", data=body, headers=headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert "token" in (await resp.json())["error"]
        assert registry.get_session("leaky").agent_count == 60

    async def test_no_token_configured_refuses_to_act(
        self, aiohttp_client, registry, users, caplog
    ) -> None:
        """Without a token, start-up warns and the webhook refuses, saying how to enable it."""
        with caplog.at_level(logging.WARNING, logger="agent_registry_exporter"):
            app = create_app(InProcessSource(registry), Settings())
        assert any("webhook disabled" in r.getMessage() for r in caplog.records)
        client = await aiohttp_client(app)
        body = (WEBHOOK / "firing-too-many-agents.json").read_bytes()
        resp = await client.post("/webhook/alertmanager", data=body, headers=AUTH)
        assert resp.status == 403
        assert "AGENT_REGISTRY_EXPORTER_WEBHOOK_TOKEN" in (await resp.json())["error"]
        assert registry.get_session("leaky").agent_count == 60

    async def test_no_token_is_one_sentence_everywhere(
        self, aiohttp_client, registry, users, caplog, capsys
    ) -> None:
        """Start-up log, the 403 answer and --check-config say the same sentence."""
        with caplog.at_level(logging.WARNING, logger="agent_registry_exporter"):
            app = create_app(InProcessSource(registry), Settings())
        logged = [r.getMessage() for r in caplog.records if "token" in r.getMessage()]
        client = await aiohttp_client(app)
        body = (WEBHOOK / "firing-too-many-agents.json").read_bytes()
        answered = (await (await client.post("/webhook/alertmanager", data=body)).json())["error"]
        assert main(["serve", "--check-config", "--listen-port", "0"]) == 0
        checked = capsys.readouterr().err.splitlines()
        assert logged == [NO_WEBHOOK_TOKEN]
        assert answered == NO_WEBHOOK_TOKEN
        assert f"warning: {NO_WEBHOOK_TOKEN}" in checked

    async def test_unauthenticated_mode_must_be_explicit(self, client_factory, registry, users):
        """webhook_allow_unauthenticated=true acts without a token."""
        client = await client_factory(webhook_token=None, webhook_allow_unauthenticated=True)
        body = (WEBHOOK / "firing-too-many-agents.json").read_bytes()
        resp = await client.post("/webhook/alertmanager", data=body)
        assert resp.status == 200
        assert registry.get_session("leaky") is None

    async def test_oversized_body_is_413(self, client_factory, registry, users) -> None:
        """A body over the limit is refused before parsing."""
        client = await client_factory(webhook_max_body_bytes=1024)
        body = (WEBHOOK / "firing-too-many-agents.json").read_bytes() + b" " * 2048
        resp = await client.post("/webhook/alertmanager", data=body, headers=AUTH)
        assert resp.status == 413
        assert "1024" in (await resp.json())["error"]
        assert registry.get_session("leaky").agent_count == 60

    async def test_oversized_chunked_body_is_413(self, client_factory, registry, users) -> None:
        """Without Content-Length the limit still holds."""
        client = await client_factory(webhook_max_body_bytes=1024)

        async def chunks():
            for _ in range(4):
                yield b" " * 512

        resp = await client.post("/webhook/alertmanager", data=chunks(), headers=AUTH)
        assert resp.status == 413
        assert registry.get_session("leaky").agent_count == 60

    async def test_get_is_not_allowed(self, client) -> None:
        """Only POST reaches the receiver."""
        resp = await client.get("/webhook/alertmanager", headers=AUTH)
        assert resp.status == 405


class TestObservability:
    async def test_decisions_and_responses_are_counted(self, client, post, users) -> None:
        """cleanups_total, cleaned_agents_total and webhook_requests_total move."""
        await post("grouped-several-users")
        await post("firing-too-many-agents", headers={})
        text = await (await client.get("/metrics")).text()
        assert 'agent_registry_cleanups_total{result="cleaned",trigger="webhook"} 2.0' in text
        assert 'agent_registry_cleanups_total{result="not_violating",trigger="webhook"} 1.0' in text
        assert 'agent_registry_cleanups_total{result="error",trigger="webhook"} 0.0' in text
        assert "agent_registry_cleaned_agents_total 63.0" in text
        assert 'agent_registry_webhook_requests_total{code="200"} 1.0' in text
        assert 'agent_registry_webhook_requests_total{code="401"} 1.0' in text

    async def test_one_log_line_per_decision_without_the_token(self, post, users, caplog):
        """Each decision is one structured record; the token appears nowhere."""
        with caplog.at_level(logging.INFO, logger="agent_registry_exporter"):
            await post("grouped-several-users")
            await post("firing-too-many-agents", headers={"Authorization": "Bearer wrong"})
        decisions = [r for r in caplog.records if r.getMessage() == "remediation decision"]
        assert [r.fields["outcome"] for r in decisions] == ["cleaned", "cleaned", "not_violating"]
        assert {"alertname", "user_id", "instance", "fingerprint", "outcome", "duration_ms"} <= set(
            decisions[0].fields
        )
        everything = "\n".join(
            f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records
        )
        assert TOKEN not in everything
        assert "wrong" not in everything


async def token_file_webhook(
    aiohttp_client, registry: AgentRegistry, token_file: Path
) -> Callable[[str], Awaitable[int]]:
    """A webhook reading its token from `token_file`; returns `status_with(token)`."""
    app = create_app(InProcessSource(registry), Settings(webhook_token_file=token_file))
    client = await aiohttp_client(app)
    body = (WEBHOOK / "healthy-again.json").read_bytes()

    async def status_with(token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        return (await client.post("/webhook/alertmanager", data=body, headers=headers)).status

    return status_with


class TestTokenRotation:
    async def test_rotated_token_file_is_picked_up(
        self, aiohttp_client, registry, users, tmp_path, caplog
    ) -> None:
        """A new token in the file replaces the old one; a vanished file keeps the last good one."""
        token_file = tmp_path / "token"
        token_file.write_text("first\n")
        status_with = await token_file_webhook(aiohttp_client, registry, token_file)

        assert await status_with("first") == 200
        token_file.write_text("second\n")
        stat = token_file.stat()
        os.utime(token_file, (stat.st_atime, stat.st_mtime + 5))  # a visible change
        assert await status_with("first") == 401
        assert await status_with("second") == 200

        token_file.unlink()
        with caplog.at_level(logging.WARNING, logger="agent_registry_exporter"):
            assert await status_with("second") == 200
            assert await status_with("second") == 200
        warnings = [r for r in caplog.records if "not reloaded" in r.getMessage()]
        assert len(warnings) == 1
        assert registry.get_session("healthy").agent_count == 5

    async def test_token_file_rewritten_with_unchanged_mtime_and_size_is_picked_up(
        self, aiohttp_client, registry, users, tmp_path
    ) -> None:
        """Attack on rotation: same length, mtime put back; the new token must still count."""
        token_file = tmp_path / "token"
        token_file.write_text("alpha-1\n")
        before = token_file.stat()
        status_with = await token_file_webhook(aiohttp_client, registry, token_file)

        assert await status_with("alpha-1") == 200
        token_file.write_text("alpha-2\n")
        os.utime(token_file, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert token_file.stat().st_mtime_ns == before.st_mtime_ns
        assert token_file.stat().st_size == before.st_size
        assert await status_with("alpha-1") == 401
        assert await status_with("alpha-2") == 200


class TestHostileHeaders:
    async def test_non_utf8_authorization_header_is_401_without_a_traceback(
        self, client, registry, users, caplog
    ) -> None:
        """Attack: raw bytes 0xff 0xfe in the bearer token answer 401, logging no exception."""
        body = (WEBHOOK / "firing-too-many-agents.json").read_bytes()
        request = (
            b"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nAuthorization: Bearer \xff\xfe\x80\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        with caplog.at_level(logging.DEBUG):
            reader, writer = await asyncio.open_connection(client.host, client.port)
            writer.write(request)
            response = await reader.read()
            writer.close()
        head, _, payload = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), head
        assert "token" in json.loads(payload)["error"]
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        assert registry.get_session("leaky").agent_count == 60


class TestUnexpectedFailure:
    async def test_a_crash_in_the_receiver_is_a_counted_json_500(
        self, client, registry, users, monkeypatch
    ) -> None:
        """An unexpected error answers 500 (Alertmanager retries) and is counted like any answer."""
        from agent_registry_exporter.remediation import Remediator

        async def crash(self, payload):
            raise RuntimeError("bug")

        monkeypatch.setattr(Remediator, "handle", crash)
        body = (WEBHOOK / "firing-too-many-agents.json").read_bytes()
        resp = await client.post("/webhook/alertmanager", data=body, headers=AUTH)
        assert resp.status == 500
        assert "internal error" in (await resp.json())["error"]
        text = await (await client.get("/metrics")).text()
        assert 'agent_registry_webhook_requests_total{code="500"} 1.0' in text
        assert registry.get_session("leaky").agent_count == 60
