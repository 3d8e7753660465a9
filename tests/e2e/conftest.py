"""The end-to-end harness: the real exporter, Prometheus and Alertmanager on 127.0.0.1.

One stack per test session (a cold start to the first webhook takes several seconds); each
test gets a fresh registry behind the same exporter. On failure the report carries both
processes' logs and the alerts they hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from agent_registry_exporter import AgentRegistry, CleanupResult, InProcessSource, Settings
from agent_registry_exporter.http import ExporterServer, create_app
from agent_registry_exporter.remediation import Decision
from agent_registry_exporter.testing import start_on_free_port_async
from agent_registry_exporter.testing.stack import (
    LocalStack,
    ManagedProcess,
    missing_binaries,
)

STACK_KEY = pytest.StashKey["LocalStack"]()


@contextlib.asynccontextmanager
async def stack_running(request: pytest.FixtureRequest, stack: LocalStack) -> AsyncIterator[None]:
    """`stack` started, and named as the one whose logs a failing test prints (the previous
    one again afterwards), then stopped."""
    previous = request.config.stash.get(STACK_KEY, None)
    try:
        await asyncio.to_thread(stack.start)
        request.config.stash[STACK_KEY] = stack
        yield
    finally:
        if previous is not None:
            request.config.stash[STACK_KEY] = previous
        await asyncio.to_thread(stack.stop)


class SwitchableSource(InProcessSource):
    """The in-process source, with the registry swapped per test and faults on demand."""

    def __init__(self, registry: AgentRegistry) -> None:
        super().__init__(registry)
        self.failing_cleanups = 0

    async def cleanup_user(self, user_id: str, *, if_violating: bool = True) -> CleanupResult:
        if self.failing_cleanups > 0:
            self.failing_cleanups -= 1
            raise ConnectionError("injected fault: registry unavailable")
        return await super().cleanup_user(user_id, if_violating=if_violating)


@dataclass
class Harness:
    source: SwitchableSource
    server: ExporterServer
    stack: LocalStack
    victim: ManagedProcess
    decisions: list[Decision] = field(default_factory=list)

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def decisions_for(self, users: set[str]) -> list[Decision]:
        return [d for d in self.decisions if d.user_id in users]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def harness(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Harness]:
    missing = missing_binaries()
    assert not missing, f"{missing} are installed by `make test` (Debian packages)"
    workdir = tmp_path_factory.mktemp("stack")
    token = secrets.token_urlsafe(24)
    source = SwitchableSource(AgentRegistry())
    decisions: list[Decision] = []

    async def serve_on(port: int) -> ExporterServer:
        settings = Settings(
            listen_host="127.0.0.1",
            listen_port=port,
            webhook_token=token,
            instance=f"127.0.0.1:{port}",
            cleanup_burst=1000,
        )
        app = create_app(source, settings, on_decision=decisions.append)
        server = ExporterServer(app, "127.0.0.1", port)
        await server.start()
        return server

    server = await start_on_free_port_async(serve_on)

    def victim_on(port: int) -> ManagedProcess:
        """A second, separate exporter process: the target the exporter-down test kills."""
        return ManagedProcess(
            "victim-exporter",
            [sys.executable, "-m", "agent_registry_exporter.cli", "serve",
             "--listen-host", "127.0.0.1", "--listen-port", str(port)],
            workdir / "victim.log",
            f"127.0.0.1:{port}",
        )  # fmt: skip

    victim: ManagedProcess | None = None
    stack: LocalStack | None = None
    try:
        victim = await asyncio.to_thread(ManagedProcess.start_on_free_port, victim_on)
        stack = LocalStack(
            workdir=workdir, targets=[f"127.0.0.1:{server.port}", victim.address], token=token
        )
        await asyncio.to_thread(stack.start)
        request.config.stash[STACK_KEY] = stack
        yield Harness(source, server, stack, victim, decisions)
    finally:
        if stack is not None:
            await asyncio.to_thread(stack.stop)
        if victim is not None:
            await asyncio.to_thread(victim.stop)
        await server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def registry(harness: Harness) -> AgentRegistry:
    """A fresh, empty registry behind the running exporter."""
    fresh = AgentRegistry()
    harness.source.registry = fresh
    harness.source.failing_cleanups = 0
    return fresh


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    stack = item.config.stash.get(STACK_KEY, None)
    if report.when == "call" and report.failed and stack is not None:
        report.sections.append(("Prometheus and Alertmanager", stack.diagnostics()))
