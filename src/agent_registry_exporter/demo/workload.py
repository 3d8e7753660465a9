"""A simulated multi-user workload: healthy users, users over the agent limit, old sessions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import SecretStr

from ..http import ExporterServer, create_app
from ..registry import AgentRegistry, Thresholds
from ..remediation import Decision, Outcome
from ..settings import Settings
from ..sources import InProcessSource, RegistrySource, SidecarSource, serve_registry
from ..testing.ports import start_on_free_port_async
from ..testing.stack import INSTALL_HINT, LocalStack, missing_binaries

__all__ = ["DemoAgent", "SimulatedBackend", "WorkloadShape", "populate", "run_demo"]


class DemoAgent:
    """A stand-in agent: closing it is all the registry ever does to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class WorkloadShape:
    """How many users of each kind to create."""

    healthy: int = 12
    too_many_agents: int = 3
    too_old: int = 3


async def populate(
    registry: AgentRegistry, shape: WorkloadShape | None = None, *, seed: int = 7
) -> dict[str, list[str]]:
    """Fill the registry and return the user ids of each kind."""
    shape = shape or WorkloadShape()
    rng = random.Random(seed)
    limits = registry.thresholds
    kinds: dict[str, list[str]] = {"healthy": [], "too_many_agents": [], "too_old": []}
    for i in range(shape.healthy):
        user = f"user-{i:03d}"
        await _add_agents(registry, user, rng.randint(1, max(1, limits.agents_per_user // 2)))
        kinds["healthy"].append(user)
    for i in range(shape.too_many_agents):
        user = f"leaky-{i:03d}"
        await _add_agents(registry, user, limits.agents_per_user + 1 + rng.randint(0, 20))
        kinds["too_many_agents"].append(user)
    for i in range(shape.too_old):
        user = f"stale-{i:03d}"
        await _add_agents(registry, user, rng.randint(1, 10))
        _age_past_limit(registry, user)
        kinds["too_old"].append(user)
    return kinds


def _age_past_limit(registry: AgentRegistry, user: str) -> None:
    """Backdate the user's session to two hours past the age limit (opened "yesterday")."""
    session = registry.get_session(user)
    assert session is not None
    now = datetime.fromtimestamp(registry.clock(), UTC)
    session.created_at = now - timedelta(seconds=registry.thresholds.session_age_seconds + 7200)


async def _add_agents(registry: AgentRegistry, user: str, count: int) -> None:
    for n in range(count):
        await registry.register_user_agent(user, f"agent-{n}", DemoAgent(f"{user}/agent-{n}"))


@dataclass
class _User:
    name: str
    kind: str  # "steady", "leaky" or "stale"
    next_agent: int = 0
    violated_at: float | None = None
    cleaned_at: float | None = None
    agents_closed: int = 0
    fixed: bool = False


class SimulatedBackend:
    """Users opening and closing agents over time; leaky ones never close theirs."""

    def __init__(self, registry: AgentRegistry, *, steady: int, leaky: int, stale: int) -> None:
        self.registry = registry
        self.rng = random.Random(11)
        self.users = {
            u.name: u
            for u in (
                *(_User(f"steady-{n:02d}", "steady") for n in range(steady)),
                *(_User(f"leaky-{n:02d}", "leaky") for n in range(leaky)),
                *(_User(f"stale-{n:02d}", "stale") for n in range(stale)),
            )
        }

    async def open_sessions(self, now: float) -> None:
        limits = self.registry.thresholds
        for user in self.users.values():
            start = {"steady": 8, "leaky": max(1, limits.agents_per_user - 8), "stale": 4}
            for _ in range(start[user.kind]):
                await self._open(user)
            if user.kind == "stale":
                _age_past_limit(self.registry, user.name)
                user.violated_at = now

    async def step(self, now: float) -> None:
        """One tick of user activity."""
        limit = self.registry.thresholds.agents_per_user
        for user in self.users.values():
            leaking = user.kind == "leaky" and not user.fixed
            if leaking:
                for _ in range(2):
                    await self._open(user)
            session = self.registry.get_session(user.name)
            if session is None:
                continue
            if leaking and session.agent_count > limit:
                user.violated_at = user.violated_at or now
            elif user.kind == "steady":
                if self.rng.random() < 0.5 and session.agent_count < 30:
                    await self._open(user)
                elif session.agent_count > 2:
                    agent_id = self.rng.choice(list(session.agents))
                    await self.registry.lifecycle_manager.cleanup_agent_resources(
                        user.name, agent_id
                    )

    def mark_cleaned(self, user_id: str, now: float, agents: int) -> _User | None:
        user = self.users.get(user_id)
        if user is None:
            return None
        user.cleaned_at = user.cleaned_at or now
        user.agents_closed += agents
        user.fixed = True  # the client was restarted: it stops leaking
        return user

    @property
    def all_cleaned(self) -> bool:
        return all(u.cleaned_at is not None for u in self.users.values() if u.kind != "steady")

    async def _open(self, user: _User) -> None:
        user.next_agent += 1
        name = f"agent-{user.next_agent}"
        await self.registry.register_user_agent(user.name, name, DemoAgent(f"{user.name}/{name}"))


@dataclass
class _Worker:
    """One simulated backend worker: its registry and its users (name None: embedded)."""

    name: str | None
    registry: AgentRegistry
    backend: SimulatedBackend

    def who(self, user: str) -> str:
        return user if self.name is None else f"{user}@{self.name}"


# Sidecar mode: leaky-00 and the steady users live on both workers, each session its own.
_SIDECAR_SHAPES = {"w1": (4, 2, 1), "w2": (4, 1, 1)}


async def run_demo(
    settings: Settings,
    thresholds: Thresholds,
    *,
    duration: float,
    steady: int = 8,
    leaky: int = 3,
    stale: int = 2,
    sidecar: bool = False,
) -> int:
    """The full loop on a simulated backend; 0 once every leaking session was cleaned.

    With `sidecar`, two simulated workers serve their registries on sockets and the
    sidecar's source gathers them, exactly as `agent-registry-exporter sidecar` does.
    """
    logging.getLogger("agent_registry_exporter").setLevel(logging.WARNING)
    shapes = _SIDECAR_SHAPES if sidecar else {None: (steady, leaky, stale)}
    workers = {}
    for name, (n_steady, n_leaky, n_stale) in shapes.items():
        registry = AgentRegistry(thresholds=thresholds)
        backend = SimulatedBackend(registry, steady=n_steady, leaky=n_leaky, stale=n_stale)
        workers[name] = _Worker(name, registry, backend)
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", flush=True)

    def on_decision(decision: Decision) -> None:
        worker = workers.get(decision.worker)
        if decision.outcome != Outcome.CLEANED or decision.user_id is None or worker is None:
            if decision.outcome not in (Outcome.DUPLICATE, Outcome.NO_SESSION):
                say(f"{decision.user_id or '-':<10} {decision.alertname}: {decision.outcome}")
            return
        now = time.monotonic() - started
        user = worker.backend.mark_cleaned(decision.user_id, now, decision.agents_cleaned)
        delay = ""
        if user is not None and user.violated_at is not None:
            delay = f" ({now - user.violated_at:.1f}s after the violation)"
        say(
            f"{worker.who(decision.user_id):<10} {decision.alertname} -> cleaned "
            f"{decision.agents_cleaned} agents{delay}"
        )

    token = secrets.token_urlsafe(24)

    async def serve_on(port: int, source: RegistrySource) -> ExporterServer:
        # The exporter's `instance` names its own port, so the port is chosen first.
        server_settings = settings.model_copy(
            update={
                "listen_host": "127.0.0.1",
                "listen_port": port,
                "webhook_token": SecretStr(token),
                "webhook_token_file": None,
                "instance": f"127.0.0.1:{port}",
            }
        )
        app = create_app(source, server_settings, on_decision=on_decision)
        server = ExporterServer(app, "127.0.0.1", port)
        await server.start()
        return server

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    for worker in workers.values():
        await worker.backend.open_sessions(0.0)
    stack: LocalStack | None = None
    missing = missing_binaries()
    # Short and under /tmp: a socket path must fit in 107 bytes.
    with tempfile.TemporaryDirectory(prefix="ard-", dir="/tmp") as workdir:
        sockets = [
            await serve_registry(w.registry, Path(workdir) / "sockets", worker=w.name)
            for w in workers.values()
            if w.name is not None
        ]
        source: RegistrySource = (
            SidecarSource(Path(workdir) / "sockets")
            if sidecar
            else InProcessSource(workers[None].registry)
        )
        server = await start_on_free_port_async(lambda port: serve_on(port, source))
        port = server.port
        kinds = f"{steady} steady, {leaky} leaky, {stale} stale users"
        if sidecar:
            kinds = ", ".join(
                f"worker {name}: {s} steady, {lk} leaky, {st} stale"
                for name, (s, lk, st) in _SIDECAR_SHAPES.items()
            )
        mode = "sidecar" if sidecar else "exporter"
        say(f"{mode} on {server.url}/metrics  ({kinds})")
        try:
            if missing:
                say(f"{' and '.join(missing)} not found: running the exporter alone.")
                say(f"For the whole loop install them (as root): {INSTALL_HINT}")
            else:
                stack = LocalStack(
                    workdir=Path(workdir),
                    targets=[f"127.0.0.1:{port}"],
                    token=token,
                    thresholds=thresholds,
                )
                await asyncio.to_thread(stack.start)
                say(f"Prometheus {stack.prometheus_url}  Alertmanager {stack.alertmanager_url}")
            await _simulate(
                list(workers.values()), stop, started, duration, say, loop_closed=bool(missing)
            )
        finally:
            if stack is not None:
                await asyncio.to_thread(stack.stop)
            await server.stop()
            for handle in sockets:
                await handle.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    _summary(list(workers.values()))
    if stop.is_set():
        return 130
    all_cleaned = all(w.backend.all_cleaned for w in workers.values())
    return 0 if missing or all_cleaned else 1


async def _simulate(
    workers: list[_Worker],
    stop: asyncio.Event,
    started: float,
    duration: float,
    say: Callable[[str], None],
    *,
    loop_closed: bool,
) -> None:
    reported: set[str] = set()
    while not stop.is_set():
        now = time.monotonic() - started
        for worker in workers:
            await worker.backend.step(now)
            for user in worker.backend.users.values():
                who = worker.who(user.name)
                if user.violated_at is not None and who not in reported:
                    reported.add(who)
                    manager = worker.registry.lifecycle_manager
                    result = await manager.monitor_memory_usage(user.name)
                    say(f"{who:<10} violates: {', '.join(result['issues'])}")
        if not loop_closed and all(w.backend.all_cleaned for w in workers):
            say("every leaking session was cleaned")
            return
        if now > duration:
            say(f"stopping after --duration {duration:g}s")
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    say("interrupted: stopping everything")


def _summary(workers: list[_Worker]) -> None:
    print()
    print(f"{'user':<14}{'kind':<8}{'violated':>10}{'cleaned':>10}{'delay':>8}{'closed':>8}")
    steady = untouched = sessions = 0
    for worker in workers:
        sessions += len(worker.registry)
        for user in worker.backend.users.values():
            if user.kind == "steady":
                steady += 1
                untouched += user.cleaned_at is None
                if user.cleaned_at is None:
                    continue
            violated = f"{user.violated_at:.1f}s" if user.violated_at is not None else "-"
            cleaned = f"{user.cleaned_at:.1f}s" if user.cleaned_at is not None else "no"
            delay = (
                f"{user.cleaned_at - user.violated_at:.1f}s"
                if user.cleaned_at is not None and user.violated_at is not None
                else "-"
            )
            print(
                f"{worker.who(user.name):<14}{user.kind:<8}{violated:>10}{cleaned:>10}"
                f"{delay:>8}{user.agents_closed:>8}"
            )
    print(f"steady users untouched: {untouched} of {steady}; sessions now: {sessions}")
