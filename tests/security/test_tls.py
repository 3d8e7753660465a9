"""TLS on the exporter port: HTTPS only, client certificates, and certificates and users
reloaded from disk without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from datetime import UTC, datetime

import aiohttp
import pytest
import trustme

from agent_registry_exporter.http.security.certificates import certificate_validity
from agent_registry_exporter.sources import UserIdHasher
from agent_registry_exporter.testing import wait_until_async
from agent_registry_exporter.testing.fleet import LocalFleet

from ..conftest import add_agents
from ..test_remediation import payload
from .conftest import WEBHOOK_TOKEN, Pki, basic, bcrypt_hash, get

TLS = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
MTLS = TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n"
REFUSED = (aiohttp.ClientConnectionError, ssl.SSLError, ConnectionError)


async def served_sans(url: str, pki: Pki) -> set[str]:
    """The DNS names of the certificate the server presents to a new connection."""
    host, port = url.removeprefix("https://").split(":")
    _, writer = await asyncio.open_connection(host, int(port), ssl=pki.client_context())
    cert = writer.get_extra_info("peercert")
    writer.close()
    return {value for kind, value in cert["subjectAltName"] if kind == "DNS"}


class TestTlsOnly:
    async def test_https_is_served_with_the_configured_certificate(self, pki, serve) -> None:
        """A client trusting the CA gets /metrics over HTTPS; the URL says https."""
        server = await serve(web_config_file=pki.write(TLS))
        assert server.url.startswith("https://")
        status, _, body = await get(f"{server.url}/metrics", pki.client_context())
        assert status == 200
        assert "agent_registry_users 0" in body

    async def test_plain_http_gets_no_answer(self, pki, serve) -> None:
        """An HTTP request to the HTTPS port is not served."""
        server = await serve(web_config_file=pki.write(TLS))
        with pytest.raises(REFUSED):
            await get(server.url.replace("https://", "http://") + "/metrics")

    async def test_client_below_min_version_is_refused(self, pki, serve) -> None:
        """min_version TLS13: a TLS 1.2-only client cannot connect."""
        server = await serve(web_config_file=pki.write(TLS + "  min_version: TLS13\n"))
        old = pki.client_context()
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(REFUSED):
            await get(f"{server.url}/-/healthy", old)
        assert (await get(f"{server.url}/-/healthy", pki.client_context()))[0] == 200

    async def test_silent_client_is_dropped_at_the_handshake_bound(self, pki, serve) -> None:
        """A TCP client that never starts its handshake is closed after idle_timeout_seconds
        (1 s here), long before asyncio's own 60 s."""
        server = await serve(web_config_file=pki.write(TLS), idle_timeout_seconds=1)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            assert await asyncio.wait_for(reader.read(), timeout=30) == b""
        finally:
            writer.close()


class TestClientCertificates:
    async def test_client_without_a_certificate_is_refused(self, pki, serve) -> None:
        """RequireAndVerifyClientCert: no certificate, no answer (probes included)."""
        server = await serve(web_config_file=pki.write(MTLS))
        for path in ("/metrics", "/-/healthy"):
            with pytest.raises(REFUSED):
                await get(f"{server.url}{path}", pki.client_context())

    async def test_client_with_a_certificate_from_the_ca_is_served(self, pki, serve) -> None:
        """A certificate issued by client_ca_file's CA is enough."""
        server = await serve(web_config_file=pki.write(MTLS))
        status, _, _ = await get(f"{server.url}/metrics", pki.client_context("prometheus"))
        assert status == 200

    async def test_certificate_from_another_ca_is_refused(self, pki, serve) -> None:
        """A client certificate the configured CA did not sign is refused."""
        server = await serve(web_config_file=pki.write(MTLS))
        stranger = pki.client_context()
        trustme.CA().issue_cert("prometheus").configure_cert(stranger)
        with pytest.raises(REFUSED):
            await get(f"{server.url}/metrics", stranger)

    async def test_only_allowed_sans_are_served(self, pki, serve) -> None:
        """client_allowed_sans: a verified certificate for another name is answered 403."""
        config = MTLS + "  client_allowed_sans: [prometheus.monitoring.svc]\n"
        server = await serve(web_config_file=pki.write(config))
        good = pki.client_context("prometheus.monitoring.svc")
        assert (await get(f"{server.url}/metrics", good))[0] == 200
        status, _, body = await get(f"{server.url}/metrics", pki.client_context("intruder.svc"))
        assert status == 403
        assert "client_allowed_sans" in body
        _, _, metrics = await get(f"{server.url}/metrics", good)
        assert (
            'agent_registry_exporter_auth_failures_total{reason="client_certificate_san"} 1.0'
            in (metrics)
        )


class TestReload:
    async def test_rotated_certificate_is_used_by_new_connections(self, pki, serve) -> None:
        """Overwrite cert and key: the next connection gets the new certificate, no restart."""
        server = await serve(web_config_file=pki.write(TLS))
        assert "rotated.example" not in await served_sans(server.url, pki)
        pki.server_cert("server", "127.0.0.1", "rotated.example")

        async def rotated() -> bool:
            return "rotated.example" in await served_sans(server.url, pki)

        await wait_until_async(rotated)
        assert (await get(f"{server.url}/metrics", pki.client_context()))[0] == 200

    async def test_users_are_reloaded(self, pki, serve) -> None:
        """Add bob and drop alice in the file: bob gets in and alice no longer does."""
        path = pki.write(TLS + f"basic_auth_users:\n  alice: {bcrypt_hash('a-pass')}\n")
        server = await serve(web_config_file=path)
        ctx, url = pki.client_context(), f"{server.url}/metrics"
        assert (await get(url, ctx, headers=basic("alice", "a-pass")))[0] == 200
        pki.write(TLS + f"basic_auth_users:\n  bob: {bcrypt_hash('b-pass')}\n")

        async def bob_in() -> bool:
            return (await get(url, ctx, headers=basic("bob", "b-pass")))[0] == 200

        await wait_until_async(bob_in)
        assert (await get(url, ctx, headers=basic("alice", "a-pass")))[0] == 401

    async def test_broken_file_keeps_the_last_good_config(self, pki, serve, caplog) -> None:
        """A bad edit is logged with its reason and changes nothing; fixing it applies."""
        caplog.set_level(logging.INFO, "agent_registry_exporter.security")
        users = f"basic_auth_users:\n  alice: {bcrypt_hash('a-pass')}\n"
        path = pki.write(TLS + users)
        server = await serve(web_config_file=path)
        ctx, url, alice = pki.client_context(), f"{server.url}/metrics", basic("alice", "a-pass")
        pki.write(TLS + users + "basic_auth_user:\n  eve: x\n")

        async def refusal_logged() -> bool:
            await get(url, ctx, headers=alice)
            return "keeping the last good one" in caplog.text

        await wait_until_async(refusal_logged)
        assert f"web config {path}: basic_auth_user: unknown key" in caplog.text
        assert (await get(url, ctx, headers=alice))[0] == 200
        pki.write(TLS)

        async def fixed() -> bool:
            return (await get(url, ctx))[0] == 200

        await wait_until_async(fixed)

    async def test_a_broken_certificate_keeps_the_last_good_one(self, pki, serve, caplog) -> None:
        """A half-written key file is refused; connections keep the old certificate."""
        server = await serve(web_config_file=pki.write(TLS))
        (pki.dir / "server.key").write_text("-----BEGIN PRIVATE KEY-----\ntruncated")

        async def refusal_logged() -> bool:
            return (await get(f"{server.url}/-/healthy", pki.client_context()))[0] == 200 and (
                "tls_server_config.key_file" in caplog.text
            )

        await wait_until_async(refusal_logged)

    async def test_tls_cannot_be_switched_off_by_a_reload(self, pki, serve, caplog) -> None:
        """Removing tls_server_config is refused: the port stays HTTPS."""
        path = pki.write(TLS)
        server = await serve(web_config_file=path)
        path.write_text("basic_auth_users: {}\n")

        async def refusal_logged() -> bool:
            await get(f"{server.url}/-/healthy", pki.client_context())
            return "TLS cannot be turned on or off without a restart" in caplog.text

        await wait_until_async(refusal_logged)
        assert (await get(f"{server.url}/metrics", pki.client_context()))[0] == 200


class TestReplicas:
    @pytest.mark.parametrize("config", [TLS, MTLS], ids=["tls", "mutual-tls"])
    async def test_alert_for_a_peer_is_forwarded_over_tls(self, pki, config) -> None:
        """Replicas sharing one web config (and HMAC key) forward over HTTPS, presenting their
        own certificate when the port requires one; the owner cleans its session."""
        hosts = ("127.0.0.2", "127.0.0.3")
        pki.server_cert("server", *hosts)
        key = pki.dir / "hmac.key"
        key.write_text("a key shared by every replica")
        settings = {"web_config_file": pki.write(config), "user_id_hmac_key_file": key}
        fleet = LocalFleet(
            hosts, WEBHOOK_TOKEN, settings={**settings, "forward_timeout_seconds": 5}
        )
        await fleet.start()
        try:
            a, b = fleet.replicas
            leaky = await add_agents(b.registry, "leaky", 60)
            label = UserIdHasher(key.read_bytes())("leaky")
            body = payload(label, instance=b.address).model_dump_json(by_alias=True)
            client = pki.client_context("prometheus") if config == MTLS else pki.client_context()
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"https://{a.address}/webhook/alertmanager",
                    data=body,
                    headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"},
                    ssl=client,
                ) as resp,
            ):
                assert resp.status == 200, await resp.text()
                (answer,) = (await resp.json())["alerts"]
            assert (answer["outcome"], answer["peer_outcome"]) == ("forwarded", "cleaned")
            assert {agent.closes for agent in leaky} == {1}
            assert b.outcomes(label) == ["cleaned"]
        finally:
            await fleet.stop()


EXPIRY = "agent_registry_exporter_tls_cert_expiry_timestamp_seconds"


def dated_cert(pki: Pki, not_before: datetime, not_after: datetime) -> trustme.LeafCert:
    """The server certificate and key of the web config, valid between these dates."""
    cert = pki.ca.issue_cert("127.0.0.1", "localhost", not_before=not_before, not_after=not_after)
    cert.private_key_pem.write_to_path(str(pki.dir / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(pki.dir / "server.crt"))
    return cert


async def exported_expiry(url: str, pki: Pki) -> float | None:
    _, _, body = await get(f"{url}/metrics", pki.client_context())
    values = [float(line.split()[-1]) for line in body.splitlines() if line.startswith(EXPIRY)]
    return values[0] if values else None


def day(year: int, month: int = 1, dd: int = 1) -> datetime:
    return datetime(year, month, dd, tzinfo=UTC)


class TestCertificateExpiry:
    """Issue 20, finding 8: an expired server certificate was loaded without a word, at
    start-up or rotated in; every scrape then failed verification."""

    async def test_the_served_certificates_expiry_is_a_gauge(self, pki, serve) -> None:
        """`agent_registry_exporter_tls_cert_expiry_timestamp_seconds` is its notAfter."""
        dated_cert(pki, day(2025), datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC))
        server = await serve(web_config_file=pki.write(TLS))
        expiry = await exported_expiry(server.url, pki)
        assert expiry == datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC).timestamp()

    async def test_a_rotated_certificate_moves_the_gauge(self, pki, serve) -> None:
        """After a rotation the gauge gives the new certificate's expiry."""
        dated_cert(pki, day(2025), day(2031))
        server = await serve(web_config_file=pki.write(TLS))
        assert await exported_expiry(server.url, pki) == day(2031).timestamp()
        dated_cert(pki, day(2025), day(2033))

        async def rotated() -> bool:
            return await exported_expiry(server.url, pki) == day(2033).timestamp()

        await wait_until_async(rotated)

    async def test_plain_http_exports_no_expiry(self, serve) -> None:
        """No TLS, no certificate, no gauge."""
        server = await serve()
        _, _, body = await get(f"{server.url}/metrics")
        assert EXPIRY not in body

    async def test_an_expired_certificate_is_named_with_its_dates_at_start_up(
        self, pki, serve, caplog
    ) -> None:
        """Served all the same (clients decide), with one warning naming file and dates."""
        dated_cert(pki, day(2020), day(2021))
        await serve(web_config_file=pki.write(TLS))
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [
            f"the server certificate of {pki.dir / 'server.crt'} is expired: valid from "
            "2020-01-01T00:00:00+00:00 until 2021-01-01T00:00:00+00:00: every client verifying"
            " it will refuse it"
        ]

    async def test_a_certificate_not_valid_yet_rotated_in_is_named(
        self, pki, serve, caplog
    ) -> None:
        """A rotation to a certificate whose notBefore is to come warns once, naming it."""
        dated_cert(pki, day(2025), day(2031))
        server = await serve(web_config_file=pki.write(TLS))
        dated_cert(pki, day(2098), day(2099))

        async def warned() -> bool:
            with contextlib.suppress(*REFUSED):
                await get(f"{server.url}/metrics", pki.client_context())
            return any("is not valid yet" in r.getMessage() for r in caplog.records)

        await wait_until_async(warned)
        (line,) = [r.getMessage() for r in caplog.records if "not valid yet" in r.getMessage()]
        assert "valid from 2098-01-01T00:00:00+00:00 until 2099-01-01T00:00:00+00:00" in line

    @pytest.mark.parametrize("key_type", list(trustme.KeyType), ids=lambda k: k.name)
    @pytest.mark.parametrize("until", [day(2049, 12, 31), day(2050), day(2120)])
    def test_dates_are_read_from_any_certificate(self, ca, key_type, until) -> None:
        """UTCTime before 2050, GeneralizedTime from then on (RFC 5280), any key type."""
        cert = ca.issue_cert("x.example", not_before=day(2024), not_after=until, key_type=key_type)
        validity = certificate_validity(cert.cert_chain_pems[0].bytes().decode())
        assert (validity.not_before, validity.not_after) == (day(2024), until)
