"""Sidecar mode against the in-process exporter, over the same registry, in one run.

For 10,000 and 100,000 users (3 agents each) the backend (this process, one event loop)
is scraped three ways, with Prometheus' own headers (OpenMetrics, gzip), 1% of the users
changed before each scrape (80% gain or lose an agent, 10% are cleaned, 10% are new; the
changes are not counted in the scrape's CPU):

- stock: prometheus_client's aiohttp handler over a collector (the reference path);
- in-process: `start_exporter`, the render runs in the backend;
- sidecar: the backend only serves `/v1/snapshot` on its socket (`serve_registry`); the
  `agent-registry-exporter sidecar` process gathers and renders, asking each worker for
  what changed since its last answer (`?since=`).

Printed per size: the backend's CPU per scrape (process CPU minus the scraping thread's),
the backend loop's worst stall, and the whole scrape's wall time; then the ratios the
issue sets targets for (backend CPU <= 5% of in-process, sidecar scrape <= 2x). A second
table measures the snapshot encoding alone: json columns against the packed columns chosen,
and a delta of 1% of the users (cut from the change log and encoded, what a scrape costs).

    .venv/bin/python benchmarks/sidecar.py [--sizes 10000,100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from scrape import HEADERS, StallMeter, build_registry, start_ours, start_stock

from agent_registry_exporter import AgentRegistry, serve_registry
from agent_registry_exporter.sources import WorkerIdentity, encode_snapshot
from agent_registry_exporter.sources.socket_api import delta_answer
from agent_registry_exporter.testing import ManagedProcess


@dataclass
class Run:
    cpu_ms: float  # backend CPU per scrape
    stall_ms: float  # worst gap on the backend's loop
    wall_ms: float  # median whole scrape, as the scraper sees it


def _fetch(url: str) -> tuple[float, float]:
    """Wall seconds of one scrape and the CPU this (scraping) thread spent on it."""
    cpu, started = time.thread_time(), time.perf_counter()
    request = urllib.request.Request(url, headers=HEADERS)  # noqa: S310 - loopback only
    with urllib.request.urlopen(request, timeout=120) as resp:  # noqa: S310
        resp.read()
    return time.perf_counter() - started, time.thread_time() - cpu


_NEW_USERS = itertools.count()  # new users' numbers, never one twice in a run


class Churn:
    """1% of the users change: 80% of those gain or lose an agent, 10% are cleaned up, and
    as many new users arrive (so the registry keeps its size)."""

    def __init__(self, registry: AgentRegistry, seed: int = 21) -> None:
        self.registry = registry
        self.rng = random.Random(seed)

    async def __call__(self) -> None:
        registry = self.registry
        users = [s.user_id for s in registry.sessions()]
        picked = self.rng.sample(users, max(1, len(users) // 100))
        tenth = max(1, len(picked) // 10)
        for user in picked[:tenth]:
            await registry.lifecycle_manager.trigger_cleanup(user, if_violating=False)
        for user in picked[tenth:]:
            if await registry.unregister_user_agent(user, "extra") is None:
                await registry.register_user_agent(user, "extra", object())
        for new in itertools.islice(_NEW_USERS, tenth):
            for a in range(3):
                await registry.register_user_agent(f"new-{new:07d}", f"agent-{a}", object())


async def measure(url: str, repeat: int, churn: Callable[[], Awaitable[None]]) -> Run:
    """CPU and wall time from `repeat` scrapes, then the worst stall from `repeat` more;
    `churn` changes the registry before each scrape, outside the measured CPU.

    Apart, because the stall meter itself costs the loop CPU for as long as a scrape lasts.
    """
    await asyncio.to_thread(_fetch, url)  # warm-up
    gc.collect()
    cpus, walls = [], []
    for _ in range(repeat):
        await churn()
        before = time.process_time()
        wall, scraper_cpu = await asyncio.to_thread(_fetch, url)
        cpus.append(time.process_time() - before - scraper_cpu)
        walls.append(wall)
    stalls = []
    for _ in range(repeat):
        await churn()
        meter = StallMeter()
        meter.start()
        await asyncio.sleep(0.01)
        await asyncio.to_thread(_fetch, url)
        await meter.stop()
        stalls.append(meter.max_gap)
    return Run(statistics.median(cpus) * 1000, max(stalls) * 1000, statistics.median(walls) * 1000)


async def stock_run(registry: AgentRegistry, repeat: int) -> Run:
    runner, url = await start_stock(registry)
    try:
        return await measure(url, repeat, Churn(registry))
    finally:
        await runner.cleanup()


async def in_process_run(registry: AgentRegistry, users: int, repeat: int) -> Run:
    server = await start_ours(registry, users)
    try:
        return await measure(f"{server.url}/metrics", repeat, Churn(registry))
    finally:
        await server.stop()


async def sidecar_run(registry: AgentRegistry, users: int, repeat: int) -> Run:
    with tempfile.TemporaryDirectory(prefix="ars-bench-", dir="/tmp") as sockets:
        handle = await serve_registry(registry, sockets, worker="bench")

        def sidecar_on(port: int) -> ManagedProcess:
            return ManagedProcess(
                "sidecar",
                [sys.executable, "-m", "agent_registry_exporter.cli", "sidecar",
                 "--socket-dir", sockets, "--listen-host", "127.0.0.1",
                 "--listen-port", str(port), "--max-user-series", str(users)],
                Path(sockets) / "sidecar.log",
                f"127.0.0.1:{port}",
                env={**os.environ, "AGENT_REGISTRY_EXPORTER_WEBHOOK_TOKEN": "benchmark-only"},
            )  # fmt: skip

        sidecar = await asyncio.to_thread(ManagedProcess.start_on_free_port, sidecar_on, 60)
        try:
            return await measure(f"{sidecar.url}/metrics", repeat, Churn(registry))
        finally:
            await asyncio.to_thread(sidecar.stop)
            await handle.stop()


async def encoding_ms(registry: AgentRegistry, repeat: int) -> tuple[float, float, float]:
    """CPU of the packed encoding (chosen), of json columns (the alternative) and of a 1%
    delta (cut and encoded, as the socket does it)."""
    identity = WorkerIdentity("bench", os.getpid(), time.time())

    def json_columns() -> bytes:
        sessions = registry.sessions()
        return json.dumps(
            {
                "user_ids": [s.user_id for s in sessions],
                "agent_counts": [s.agent_count for s in sessions],
                "created": [s.created_timestamp for s in sessions],
            }
        ).encode()

    async def delta() -> bytes:
        snapshot = await registry.snapshot_in_steps(since=since, copy_sessions=False)
        body = delta_answer(snapshot, identity)
        assert body is not None
        return body

    packed, as_json, deltas = [], [], []
    churn = Churn(registry, seed=5)
    for _ in range(repeat):
        before = time.process_time()
        await encode_snapshot(registry.snapshot(), identity)
        packed.append(time.process_time() - before)
        before = time.process_time()
        json_columns()
        as_json.append(time.process_time() - before)
        since = registry.generation
        await churn()
        before = time.process_time()
        await delta()
        deltas.append(time.process_time() - before)
    return tuple(statistics.median(t) * 1000 for t in (packed, as_json, deltas))  # type: ignore[return-value]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"{'users':>8} {'mode':<11} {'backend CPU ms':>15} {'backend stall ms':>17} "
        f"{'scrape ms':>10}"
    )
    ratios, encodings = [], []
    for users in sizes:
        registry = await build_registry(users)
        runs = {
            "stock": await stock_run(registry, max(1, args.repeat // 2)),
            "in-process": await in_process_run(registry, users, args.repeat),
            "sidecar": await sidecar_run(registry, users, args.repeat),
        }
        for mode, run in runs.items():
            print(
                f"{users:>8,} {mode:<11} {run.cpu_ms:>15.1f} {run.stall_ms:>17.1f} "
                f"{run.wall_ms:>10.1f}",
                flush=True,
            )
        ratios.append((users, runs))
        encodings.append((users, *(await encoding_ms(registry, args.repeat))))
    print()
    print(
        f"{'users':>8} {'backend CPU sidecar/in-process':>31} {'sidecar/stock':>14} "
        f"{'scrape sidecar/in-process':>26}"
    )
    for users, runs in ratios:
        side, inproc, stock = runs["sidecar"], runs["in-process"], runs["stock"]
        print(
            f"{users:>8,} {side.cpu_ms / inproc.cpu_ms:>30.0%} "
            f"{side.cpu_ms / stock.cpu_ms:>14.0%} {side.wall_ms / inproc.wall_ms:>25.2f}x"
        )
    print()
    print(
        f"{'users':>8} {'packed columns ms':>18} {'json columns ms':>16} {'packed/json':>12} "
        f"{'1% delta ms':>12}"
    )
    for users, packed, as_json, delta in encodings:
        print(
            f"{users:>8,} {packed:>18.1f} {as_json:>16.1f} {packed / as_json:>12.0%} {delta:>12.2f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
