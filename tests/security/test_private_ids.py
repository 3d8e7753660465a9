"""Private user ids: hashes out on /metrics, hashes back in on the webhook, the right session
cleaned, and no clear id on the way."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent_registry_exporter import (
    AgentRegistry,
    InProcessSource,
    Settings,
    SidecarSource,
    Status,
    create_app,
)
from agent_registry_exporter.cli import main
from agent_registry_exporter.common.endpoints import WEBHOOK_PATH
from agent_registry_exporter.exporting import TEXT, ExporterMetrics, render
from agent_registry_exporter.remediation import Outcome, Remediator
from agent_registry_exporter.settings import describe_validation_error
from agent_registry_exporter.sources import PrivateIdSource, UserIdHasher, private_ids

from ..conftest import DATA, add_agents, serving_workers
from ..test_remediation import payload
from .conftest import WEBHOOK_TOKEN

LABEL = re.compile(r'user_id="(h:[0-9a-f]{20})"')
KEY = b"k" * 32


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "hmac.key"
    path.write_bytes(KEY + b"\n")
    return path


@pytest.fixture
def make_client(aiohttp_client, registry: AgentRegistry, key_file: Path):
    async def make():
        settings = Settings(user_id_hmac_key_file=key_file, webhook_token=WEBHOOK_TOKEN)
        return await aiohttp_client(create_app(InProcessSource(registry), settings))

    return make


def alert_for(user_label: str) -> bytes:
    payload = json.loads((DATA / "webhook" / "firing-too-many-agents.json").read_text())
    for alert in payload["alerts"]:
        alert["labels"]["user_id"] = user_label
    payload["commonLabels"]["user_id"] = user_label
    return json.dumps(payload).encode()


async def post_alert(client, user_label: str) -> dict:
    resp = await client.post(
        WEBHOOK_PATH,
        data=alert_for(user_label),
        headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"},
    )
    assert resp.status == 200, await resp.text()
    return await resp.json()


class TestExport:
    async def test_metrics_carry_hashes_only(self, make_client, fill) -> None:
        """Every user_id on /metrics is h: plus 20 hex digits; no clear id appears."""
        await fill("alice@example.com", 3)
        await fill("bob@example.com", 60)
        text = await (await (await make_client()).get("/metrics")).text()
        assert "example.com" not in text
        assert len(set(LABEL.findall(text))) == 2
        assert "agent_registry_agents 63" in text

    async def test_labels_are_stable_and_keyed(self, make_client, fill) -> None:
        """The same id hashes the same on every scrape; another key gives another label."""
        await fill("alice", 3)
        client = await make_client()
        first = LABEL.findall(await (await client.get("/metrics")).text())
        second = LABEL.findall(await (await client.get("/metrics")).text())
        assert first == second == [UserIdHasher(KEY)("alice")] * 3
        assert UserIdHasher(b"x" * 32)("alice") != first[0]

    def test_hash_cache_stays_bounded_and_right(self) -> None:
        """A cache of 2 entries hashing 5 ids keeps at most 2 and never changes a label."""
        small, fresh = UserIdHasher(KEY, cache_size=2), UserIdHasher(KEY)
        for n in range(5):
            assert small(f"u{n}") == fresh(f"u{n}")
            assert len(small) <= 2
        assert small(f"u{0}") == fresh("u0")

    async def test_searching_for_a_hash_does_not_churn_the_cache(self) -> None:
        """A hash not in the cache is searched among the sessions without evicting the labels
        already cached (the renderer re-hashes only changed chunks, so an evicted label
        would stay missing), and the one found is remembered."""
        registry = AgentRegistry()
        for n in range(1, 5):
            await registry.register_user_agent(f"u{n}", "agent", object())
        hasher = UserIdHasher(KEY, cache_size=3)
        cached = hasher("u0")
        wanted = hasher.digest("u4")
        result = await PrivateIdSource(InProcessSource(registry), hasher).monitor_user(wanted)
        assert result.status is Status.HEALTHY
        assert hasher.known(cached) == "u0"
        assert hasher.known(wanted) == "u4"


class TestRemediation:
    async def test_alert_with_the_hash_cleans_the_right_user(
        self, make_client, fill, registry
    ) -> None:
        """The hash scraped for the leaking user comes back in an alert: that session goes."""
        leaky = await fill("leaky", 60)
        calm = await fill("calm", 55)  # violating too, but not the alert's user
        client = await make_client()
        text = await (await client.get("/metrics")).text()
        (label,) = re.findall(r'agent_registry_user_agents\{user_id="(h:\w+)"\} 60', text)
        answer = await post_alert(client, label)
        assert [a["outcome"] for a in answer["alerts"]] == ["cleaned"]
        assert registry.get_session("leaky") is None
        assert {a.closes for a in leaky} == {1}
        assert registry.get_session("calm").agent_count == 55
        assert {a.closes for a in calm} == {0}
        assert "leaky" not in json.dumps(answer)

    async def test_hash_never_scraped_is_found_by_hashing_again(
        self, make_client, fill, registry
    ) -> None:
        """After a restart the map is empty: the receiver hashes the sessions and finds it."""
        await fill("leaky", 60)
        client = await make_client()  # nothing scraped yet
        answer = await post_alert(client, UserIdHasher(KEY)("leaky"))
        assert [a["outcome"] for a in answer["alerts"]] == ["cleaned"]
        assert registry.get_session("leaky") is None

    async def test_clear_id_in_an_alert_is_not_acted_on(self, make_client, fill, registry) -> None:
        """With private ids on, an alert naming a clear id matches no session."""
        await fill("leaky", 60)
        answer = await post_alert(await make_client(), "leaky")
        assert [a["outcome"] for a in answer["alerts"]] == ["no_session"]
        assert registry.get_session("leaky").agent_count == 60

    async def test_unknown_hash_is_no_session(self, make_client, fill, registry) -> None:
        """A well-formed hash of nobody in the registry touches nothing."""
        await fill("leaky", 60)
        answer = await post_alert(await make_client(), UserIdHasher(KEY)("someone-else"))
        assert [a["outcome"] for a in answer["alerts"]] == ["no_session"]
        assert registry.get_session("leaky").agent_count == 60

    async def test_monitoring_answers_with_the_hash(self, registry, fill) -> None:
        """What the source reports about a user names the hash, never the id."""
        await fill("leaky", 60)
        source = PrivateIdSource(InProcessSource(registry), UserIdHasher(KEY))
        label = UserIdHasher(KEY)("leaky")
        result = await source.monitor_user(label)
        assert result.status is Status.WARNING
        assert (result.user_id, result.metrics["user_id"]) == (label, label)
        assert "leaky" not in json.dumps(result.as_dict())


class CountingHasher(UserIdHasher):
    """Counts every HMAC computed: the cost of searching the sessions."""

    digests = 0

    def digest(self, user_id: str) -> str:
        self.digests += 1
        return super().digest(user_id)


def nobodys(n: int) -> list[str]:
    """Labels of the shape the renderer writes that match no session (an old key's)."""
    return [UserIdHasher(b"o" * 32).digest(f"gone-{i}") for i in range(n)]


class TestUnknownHashes:
    """Issue 20, finding 5: with 50,020 users, 200 alerts whose hash matched nothing (still
    firing after a key rotation, re-sent every repeat interval) took 48.3 s of CPU: every
    alert hashed every session again, once to verify and again to clean."""

    async def test_a_payload_of_unknown_hashes_costs_one_search(self, registry) -> None:
        """200 unknown hashes over 1,000 sessions: one pass (1,000 digests), not 200."""
        for n in range(1000):
            await registry.register_user_agent(f"user-{n}", "a", object())
        hasher = CountingHasher(KEY, cache_size=10)  # nothing found in the cache
        remediator = Remediator(private_ids(InProcessSource(registry), hasher))
        decisions = await remediator.handle(payload(*nobodys(200)))
        assert {d.outcome for d in decisions} == {Outcome.NO_SESSION}
        assert len(decisions) == 200
        assert hasher.digests <= 1000

    async def test_the_same_unknown_hashes_again_cost_no_search(self, registry) -> None:
        """Re-sent at the next repeat interval, sessions unchanged: nothing is hashed."""
        for n in range(100):
            await registry.register_user_agent(f"user-{n}", "a", object())
        hasher = CountingHasher(KEY)
        remediator = Remediator(private_ids(InProcessSource(registry), hasher))
        labels = nobodys(50)
        await remediator.handle(payload(*labels))
        searched = hasher.digests
        decisions = await remediator.handle(payload(*labels, starts="2026-11-27T21:00:00Z"))
        assert {d.outcome for d in decisions} == {Outcome.NO_SESSION}
        assert hasher.digests == searched

    async def test_a_remembered_miss_is_forgotten_when_the_sessions_change(
        self, registry, fill
    ) -> None:
        """A hash that matched nobody matches the user who registers later."""
        hasher = CountingHasher(KEY)
        remediator = Remediator(private_ids(InProcessSource(registry), hasher))
        label = UserIdHasher(KEY).digest("late@example.com")
        (first,) = await remediator.handle(payload(label))
        assert first.outcome == Outcome.NO_SESSION
        await fill("late@example.com", 60)
        (second,) = await remediator.handle(payload(label, starts="2026-11-27T21:00:00Z"))
        assert second.outcome == Outcome.CLEANED
        assert registry.get_session("late@example.com") is None

    async def test_remembered_misses_stay_bounded(self, registry) -> None:
        """Hostile payloads of fresh labels never grow the memory of misses past its bound."""
        source = PrivateIdSource(InProcessSource(registry), UserIdHasher(KEY), miss_cache_size=8)
        await registry.register_user_agent("someone", "a", object())
        for batch in range(5):
            await source.look_up(nobodys(10 * (batch + 1))[10 * batch :])
            assert source.remembered_misses <= 8

    async def test_sidecar_workers_remember_their_misses_across_payloads(self, socket_dir) -> None:
        """Sidecar mode: a worker's unknown hashes are searched once, not per payload."""
        async with serving_workers(socket_dir, "w1") as workers:
            for n in range(50):
                await workers["w1"].register_user_agent(f"user-{n}", "a", object())
            sidecar = SidecarSource(socket_dir, timeout=5.0)
            hasher = CountingHasher(KEY)
            remediator = Remediator(private_ids(sidecar, hasher))
            try:
                labels = nobodys(20)
                for starts in ("2026-11-27T20:00:00Z", "2026-11-27T21:00:00Z"):
                    decisions = await remediator.handle(
                        payload(*labels, labels={"worker": "w1"}, starts=starts)
                    )
                    assert {d.outcome for d in decisions} == {Outcome.NO_SESSION}
                assert hasher.digests == 50
            finally:
                await sidecar.close()


class TestKeyAndCli:
    @pytest.mark.parametrize(
        ("content", "problem"),
        [(b"short\n", "holds 5 bytes; at least 16 needed"), (None, "cannot be read")],
    )
    def test_unusable_key_stops_start_up(self, tmp_path: Path, content, problem) -> None:
        """A missing or too short key file names the setting."""
        path = tmp_path / "hmac.key"
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(ValidationError) as refused:
            Settings(user_id_hmac_key_file=path)
        message = describe_validation_error(refused.value)
        assert message.startswith(
            "invalid setting user_id_hmac_key_file "
            f"(AGENT_REGISTRY_EXPORTER_USER_ID_HMAC_KEY_FILE): '{path}' "
        )
        assert problem in message

    def test_cli_prints_the_label_metrics_show(self, key_file, capsys, monkeypatch) -> None:
        """`user-id-label` gives the operator the hash /metrics carries, from args or stdin."""
        label = UserIdHasher(KEY)("alice@example.com")  # what /metrics shows (tested above)
        options = ["user-id-label", "--user-id-hmac-key-file", str(key_file)]
        assert main([*options, "alice@example.com"]) == 0
        assert capsys.readouterr().out == f"{label} alice@example.com\n"
        monkeypatch.setattr("sys.stdin", io.StringIO("bob\nalice@example.com\n"))
        assert main(options) == 0
        assert capsys.readouterr().out.splitlines()[1] == f"{label} alice@example.com"

    def test_cli_without_a_key_says_what_is_missing(self, capsys, monkeypatch) -> None:
        """No key file: exit 2 and the option to give."""
        monkeypatch.delenv("AGENT_REGISTRY_EXPORTER_USER_ID_HMAC_KEY_FILE", raising=False)
        assert main(["user-id-label", "alice"]) == 2
        assert "--user-id-hmac-key-file" in capsys.readouterr().err


class TestSidecar:
    async def test_sidecar_hashes_every_worker_and_cleans_the_named_one(
        self, socket_dir, key_file
    ) -> None:
        """Two workers with the same user: /metrics shows one hash per worker, and the alert
        naming w2 with that hash cleans w2's session only."""
        async with serving_workers(socket_dir, "w1", "w2") as workers:
            for registry in workers.values():
                await add_agents(registry, "greedy@example.com", 60)
            sidecar = SidecarSource(socket_dir, timeout=5.0)
            source = private_ids(sidecar, UserIdHasher.from_file(key_file))
            try:
                text = render(await source.snapshot(), ExporterMetrics("t"), format=TEXT)
                body = text.body.decode()
                label = UserIdHasher(KEY)("greedy@example.com")
                assert "example.com" not in body
                for worker in ("w1", "w2"):
                    series = f'agent_registry_user_agents{{worker="{worker}",user_id="{label}"}} 60'
                    assert series in body
                (decision,) = await Remediator(source).handle(
                    payload(label, labels={"worker": "w2"})
                )
                assert decision.outcome == Outcome.CLEANED
                assert workers["w2"].get_session("greedy@example.com") is None
                assert workers["w1"].get_session("greedy@example.com").agent_count == 60
            finally:
                await sidecar.close()
