"""Resolving `peers`: a DNS name or a list, cached briefly, re-resolved once for a stranger."""

from __future__ import annotations

import asyncio
import socket

import pytest

from agent_registry_exporter.remediation import Peers, parse_peers, split_host_port

from .conftest import FakeClock

OWN = "10.0.0.1:8464"


class CountingResolver:
    """A resolver whose answers the test sets, counting every call."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


class FailingResolver:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def __call__(self, host: str, port: int) -> list[str]:
        raise self.exc


class TestParsing:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("agents-headless", ("agents-headless", None)),
            ("10.0.0.2:8464", ("10.0.0.2", 8464)),
            ("[fd00::2]:8464", ("fd00::2", 8464)),
            ("fd00::2", ("fd00::2", None)),
            (" pod-a.example:9000 ", ("pod-a.example", 9000)),
        ],
    )
    def test_host_and_optional_port_are_split(self, text, expected) -> None:
        """Names, IPv4 and bracketed IPv6 with or without a port."""
        assert split_host_port(text) == expected

    @pytest.mark.parametrize(
        "text",
        [
            *["", "host:", ":8464", "host:http", "host:0", "host:70000", "a:b:c", "[fd00::2"],
            *["host:\u0663\u0663", "host:\u00b9", "[fd00::2]:\u0668\u0664\u0666\u0664"],
        ],
    )
    def test_malformed_entry_is_refused(self, text) -> None:
        """Each malformed form raises ValueError."""
        with pytest.raises(ValueError, match=r"host|port|IPv6|address"):
            split_host_port(text)

    def test_list_keeps_every_entry(self) -> None:
        """A comma-separated list gives one entry per peer."""
        assert parse_peers("10.0.0.1:8464, 10.0.0.2:8464,agents") == [
            ("10.0.0.1", 8464),
            ("10.0.0.2", 8464),
            ("agents", None),
        ]

    @pytest.mark.parametrize("spec", ["", " ", "a,,b", "a,"])
    def test_empty_list_or_entry_is_refused(self, spec) -> None:
        """No silent empty peer."""
        with pytest.raises(ValueError, match="empty"):
            parse_peers(spec)


class TestResolution:
    async def test_dns_name_resolves_through_the_system_resolver(self) -> None:
        """`localhost` gives its loopback address with the port of our own instance."""
        peers = Peers("localhost", "127.0.0.1:4321")
        known = await peers.lookup([])
        expected = {"127.0.0.1:4321"} | {
            f"[{info[4][0]}]:4321"
            for info in socket.getaddrinfo("localhost", 4321, type=socket.SOCK_STREAM)
            if info[0] == socket.AF_INET6
        }
        assert (known.addresses, known.error) == (frozenset(expected), None)

    async def test_every_a_and_aaaa_record_is_a_peer_on_the_exporter_port(self) -> None:
        """A headless Service's records, IPv6 in brackets as Prometheus writes it."""
        resolver = CountingResolver(["10.0.0.1", "10.0.0.2", "fd00::3"])
        peers = Peers("agents-headless", OWN, resolver=resolver)
        known = await peers.lookup([])
        assert known.addresses == {"10.0.0.1:8464", "10.0.0.2:8464", "[fd00::3]:8464"}
        assert resolver.calls == [("agents-headless", 8464)]

    async def test_list_of_addresses_is_taken_as_given(self) -> None:
        """IP literals resolve to themselves through the real resolver, ports kept."""
        peers = Peers("127.0.0.2:9001,127.0.0.3:9002", "127.0.0.2:9001")
        known = await peers.lookup([])
        assert known.addresses == {"127.0.0.2:9001", "127.0.0.3:9002"}

    async def test_listed_host_name_counts_as_itself_and_its_addresses(self) -> None:
        """A static target's `instance` is the name it was listed under."""
        peers = Peers("localhost:9001", "127.0.0.1:9000")
        known = await peers.lookup([])
        assert {"localhost:9001", "127.0.0.1:9001"} <= known.addresses

    async def test_unknown_instance_triggers_exactly_one_re_resolve(self, clock) -> None:
        """A stranger re-resolves at once (a new pod appears); more strangers wait their turn."""
        resolver = CountingResolver(["10.0.0.1"], ["10.0.0.1", "10.0.0.2"])
        peers = Peers("agents", OWN, resolver=resolver, clock=clock, refresh_interval=1.0)
        await peers.lookup([])
        clock.advance(1.5)
        assert (await peers.lookup(["10.0.0.1:8464"])).addresses == {"10.0.0.1:8464"}
        assert len(resolver.calls) == 1

        known = await peers.lookup(["10.0.0.2:8464"])
        assert "10.0.0.2:8464" in known.addresses
        assert len(resolver.calls) == 2

        for _ in range(5):
            await peers.lookup(["10.9.9.9:8464"])
        assert len(resolver.calls) == 2
        clock.advance(1.0)
        await peers.lookup(["10.9.9.9:8464"])
        assert len(resolver.calls) == 3

    async def test_concurrent_lookups_share_one_resolution(self) -> None:
        """Twenty alerts for strangers at once resolve once."""
        resolver = CountingResolver(["10.0.0.1"])
        peers = Peers("agents", OWN, resolver=resolver)
        await asyncio.gather(*(peers.lookup([f"10.9.9.{n}:8464"]) for n in range(20)))
        assert len(resolver.calls) == 1

    async def test_cache_expires_after_its_bound(self, clock: FakeClock) -> None:
        """A pod gone from DNS stops being a peer once the cache expires."""
        resolver = CountingResolver(["10.0.0.1", "10.0.0.2"], ["10.0.0.1"])
        peers = Peers("agents", OWN, resolver=resolver, clock=clock, ttl=5.0)
        assert "10.0.0.2:8464" in (await peers.lookup([])).addresses
        clock.advance(4.9)
        assert "10.0.0.2:8464" in (await peers.lookup([])).addresses
        clock.advance(0.2)
        assert (await peers.lookup([])).addresses == {"10.0.0.1:8464"}

    async def test_resolver_failure_keeps_known_peers_and_says_why(self, clock) -> None:
        """A resolver outage does not turn peers into strangers."""
        peers = Peers("agents", OWN, resolver=CountingResolver(["10.0.0.2"]), clock=clock)
        await peers.lookup([])
        peers._resolver = FailingResolver(socket.gaierror(socket.EAI_AGAIN, "try again"))
        clock.advance(10)
        known = await peers.lookup([])
        assert known.addresses == {"10.0.0.2:8464"}
        assert known.error is not None
        assert "try again" in known.error

    async def test_no_such_name_means_no_peers_not_an_error(self) -> None:
        """A headless Service without ready pods answers NXDOMAIN: nobody to forward to."""
        nxdomain = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        peers = Peers("agents", OWN, resolver=FailingResolver(nxdomain))
        known = await peers.lookup([])
        assert (known.addresses, known.error) == (frozenset(), None)

    async def test_hanging_resolver_is_bounded(self) -> None:
        """A resolver that never answers becomes an error after resolve_timeout."""

        async def hang(host: str, port: int) -> list[str]:
            await asyncio.Event().wait()
            return []

        peers = Peers("agents", OWN, resolver=hang, resolve_timeout=0.05)
        known = await peers.lookup([])
        assert known.addresses == frozenset()
        assert known.error is not None
        assert "TimeoutError" in known.error
