"""The harness's ports: a port taken between choosing and binding it is not a failed run."""

from __future__ import annotations

import contextlib
import errno
import socket
import sys
from collections.abc import Iterator

import pytest

from agent_registry_exporter import AgentRegistry, Settings, start_exporter
from agent_registry_exporter.testing import (
    ManagedProcess,
    PortInUse,
    free_port,
    free_ports,
    start_on_free_port,
    start_on_free_port_async,
)


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another process could have grabbed: bound and listening on 127.0.0.1."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def taken_first(port: int) -> Iterator[int]:
    """What `choose` returns when someone takes the first port it found free."""
    yield port
    while True:
        yield free_port()


def bind(port: int) -> socket.socket:
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


class TestStartOnFreePort:
    def test_a_start_that_finds_its_port_taken_is_tried_on_another(self, taken) -> None:
        """Race: the port was bound by someone else in between; the next one is used."""
        ports = taken_first(taken)
        with start_on_free_port(bind, choose=lambda: next(ports)) as sock:
            assert sock.getsockname()[1] != taken

    def test_any_other_failure_is_raised_at_once(self) -> None:
        """Only EADDRINUSE is retried: a wrong host or a refused bind is the test's error."""
        calls = []

        def refused(port: int) -> None:
            calls.append(port)
            raise OSError(errno.EACCES, "Permission denied")

        with pytest.raises(PermissionError):
            start_on_free_port(refused)
        assert len(calls) == 1

    def test_it_gives_up_after_its_attempts(self, taken) -> None:
        """A port that stays taken ends the start with the bind's own error."""
        with pytest.raises(OSError, match="in use") as raised:
            start_on_free_port(bind, choose=lambda: taken, attempts=3)
        assert raised.value.errno == errno.EADDRINUSE

    def test_port_in_use_is_an_eaddrinuse_oserror(self) -> None:
        """What a child's log says becomes the error a bind would have raised."""
        error = PortInUse("exporter on 127.0.0.1:1")
        assert isinstance(error, OSError)
        assert error.errno == errno.EADDRINUSE

    async def test_an_exporter_whose_port_was_taken_starts_on_another(self, taken) -> None:
        """`start_exporter`'s ListenError for a taken port is retried, in-process."""
        ports = taken_first(taken)

        async def start(port: int):  # type: ignore[no-untyped-def]
            settings = Settings(listen_host="127.0.0.1", listen_port=port, webhook_token="t")
            return await start_exporter(AgentRegistry(), settings)

        server = await start_on_free_port_async(start, choose=lambda: next(ports))
        try:
            assert server.port != taken
        finally:
            await server.stop()


@pytest.mark.processes
class TestChildProcesses:
    def test_a_child_that_finds_its_port_taken_is_started_on_another(self, taken, tmp_path) -> None:
        """The exporter process exits with 'address already in use'; the harness restarts it
        on another port instead of failing the run."""
        ports = taken_first(taken)
        tried: list[int] = []

        def exporter_on(port: int) -> ManagedProcess:
            tried.append(port)
            return ManagedProcess(
                "exporter",
                [sys.executable, "-m", "agent_registry_exporter.cli", "serve",
                 "--listen-host", "127.0.0.1", "--listen-port", str(port)],
                tmp_path / f"exporter-{port}.log",
                f"127.0.0.1:{port}",
            )  # fmt: skip

        proc = ManagedProcess.start_on_free_port(exporter_on, choose=lambda: next(ports))
        try:
            assert tried[0] == taken
            assert proc.address == f"127.0.0.1:{tried[-1]}"
            assert "address already in use" in (tmp_path / f"exporter-{taken}.log").read_text()
        finally:
            proc.stop()


class TestSeveralPorts:
    def test_ports_asked_together_are_distinct_and_free(self) -> None:
        """Two processes started side by side never get one port (each socket is held until
        all are chosen; free_port() twice may give the same port back)."""
        ports = free_ports(8)
        assert len(set(ports)) == 8
        with contextlib.ExitStack() as held:
            for port in ports:
                held.enter_context(socket.socket()).bind(("127.0.0.1", port))


class TestPortFreeOnSeveralHosts:
    def test_one_port_free_on_an_ipv4_and_an_ipv6_host(self) -> None:
        """A dual-stack fleet (127.0.0.2 and ::1) gets one port both can bind."""
        from agent_registry_exporter.testing.ports import free_port_on

        port = free_port_on(["127.0.0.2", "::1"])
        with socket.socket(socket.AF_INET6) as v6, socket.socket() as v4:
            v6.bind(("::1", port))
            v4.bind(("127.0.0.2", port))
