"""Shared fixtures: a controllable clock, registries, agents that misbehave on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_registry_exporter import (
    AgentRegistry,
    ExporterServer,
    Settings,
    SidecarSource,
    Thresholds,
    serve_registry,
    start_exporter,
)
from agent_registry_exporter.exporting import ISAL, ZLIB
from agent_registry_exporter.testing.log_handlers import no_stray_log_handlers

DATA = Path(__file__).parent / "data"
# Both deflate engines: ISA-L (a dependency: a test using it fails if it does not import)
# and the standard library's zlib, the fallback. For `pytest.mark.parametrize("engine", ...)`.
ENGINES = [pytest.param(ISAL, id="isal"), pytest.param(ZLIB, id="zlib")]
# 2026-11-27T12:00:00Z: every test's "now" unless it moves the clock.
T0 = 1_795_780_800.0


def _refuse_processes(*args: Any, **kwargs: Any) -> None:
    raise AssertionError(
        "this test starts a process: mark it `processes` (make test-fast leaves those out)"
    )


@pytest.fixture(autouse=True)
def _processes_only_where_marked(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only tests marked `processes` (or `e2e`) start processes: the fast lane has none."""
    if not any(request.node.get_closest_marker(m) for m in ("processes", "e2e")):
        # Popen is what subprocess.run and asyncio's subprocesses go through.
        monkeypatch.setattr(subprocess, "Popen", _refuse_processes)


@pytest.fixture(autouse=True)
def _no_stray_log_handlers() -> Iterator[None]:
    """Every test leaves logging's handlers as it found them (a test that does not fails)."""
    with no_stray_log_handlers():
        yield


class FakeClock:
    """A clock tests move by hand, so nothing ever sleeps to age a session."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingAgent:
    """An agent that counts how often it was closed."""

    def __init__(self, name: str = "agent") -> None:
        self.name = name
        self.closes = 0

    async def aclose(self) -> None:
        self.closes += 1


class FailingAgent(RecordingAgent):
    async def aclose(self) -> None:
        self.closes += 1
        raise RuntimeError("socket already gone")


class HangingAgent(RecordingAgent):
    """Never finishes closing on its own; records being cut off by the close timeout."""

    cut_off = False

    async def aclose(self) -> None:
        self.closes += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cut_off = True
            raise


class SyncCloseAgent:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> AgentRegistry:
    return AgentRegistry(thresholds=Thresholds(), clock=clock, agent_close_timeout=0.2)


async def add_agents(
    registry: AgentRegistry, user: str, count: int, age_hours: float = 0.0
) -> list[RecordingAgent]:
    """Register `count` recording agents for `user`; the session is `age_hours` old."""
    made = [RecordingAgent(f"{user}/{n}") for n in range(count)]
    for n, agent in enumerate(made):
        await registry.register_user_agent(user, f"agent-{n}", agent)
    session = await registry.get_user_session(user)
    session.created_at = datetime.fromtimestamp(registry.clock(), UTC) - timedelta(hours=age_hours)
    return made


def assert_kept_or_closed_once(registry: AgentRegistry, made: list[RecordingAgent]) -> None:
    """The invariant under any race: every agent is still registered, or closed exactly once."""
    live = {id(a) for s in registry.sessions() for a in s.agents.values()}
    for agent in made:
        assert agent.closes == (0 if id(agent) in live else 1), agent.name


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory: a Unix socket path must fit in 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="ars-") as d:
        yield Path(d)


@contextlib.asynccontextmanager
async def serving_workers(socket_dir: Path, *names: str) -> AsyncIterator[dict[str, AgentRegistry]]:
    """Workers on this loop, each serving its own registry on a socket in `socket_dir`."""
    registries = {name: AgentRegistry() for name in names}
    handles = [await serve_registry(r, socket_dir, worker=n) for n, r in registries.items()]
    try:
        yield registries
    finally:
        for handle in handles:
            await handle.stop()


@pytest.fixture
async def source(socket_dir: Path) -> AsyncIterator[SidecarSource]:
    """The sidecar's source over `socket_dir`."""
    sidecar = SidecarSource(socket_dir, timeout=5.0)
    yield sidecar
    await sidecar.close()


@pytest.fixture
def fill(registry: AgentRegistry) -> Callable[..., Awaitable[list[RecordingAgent]]]:
    """`add_agents` bound to the test's registry."""
    return functools.partial(add_agents, registry)


async def loopback_exporter(registry: AgentRegistry, **settings: Any) -> ExporterServer:
    """`start_exporter` on 127.0.0.1 and a free port, with a webhook token unless given."""
    settings.setdefault("webhook_token", "s3cret-t0ken")
    return await start_exporter(
        registry, Settings(listen_host="127.0.0.1", listen_port=0, **settings)
    )


def as_unprivileged(call: Callable[[], str]) -> str:
    """`call()` in a forked child as a user file modes apply to (as root: nobody, since root
    ignores them); what it returned, or the exception it raised as text."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.close(read_end)
        try:
            if os.getuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            answer = call()
        except BaseException as exc:
            answer = f"raised {exc!r}"
        finally:
            with os.fdopen(write_end, "w") as pipe:
                pipe.write(answer)
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        answer = pipe.read()
    os.waitpid(child, 0)
    return answer


def console_script() -> str:
    """The installed `agent-registry-exporter` command of this environment."""
    return str(Path(sys.executable).parent / "agent-registry-exporter")


class CountingListener:
    """A TCP listener that only counts who connects (proof that nobody was contacted)."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()


@contextlib.asynccontextmanager
async def counting_listener(host: str, port: int = 0) -> AsyncIterator[CountingListener]:
    """Listen on `host:port` (0: any free port) while the block runs."""
    listener = CountingListener()
    server = await asyncio.start_server(listener._accepted, host, port)
    listener.port = int(server.sockets[0].getsockname()[1])
    try:
        yield listener
    finally:
        server.close()
        await server.wait_closed()
