"""Time a /metrics scrape against the stock prometheus_client path over the same data.

For 1,000 / 10,000 / 100,000 users (3 agents each) it serves the same registry twice, on
one event loop as an embedding backend would:

- stock: a custom prometheus_client collector yielding GaugeMetricFamily objects at
  scrape time, served by `prometheus_client.aiohttp.make_aiohttp_handler`;
- ours: `start_exporter` (`max_user_series` raised so every user is exported, as in the
  stock path).

Before each scrape 1% of users change (`--churn`), on the loop as the backend would change
them: 80% of those gain or lose an agent, 10% are cleaned up, 10% are new users. Each
scrape is made with Prometheus' own headers (OpenMetrics first, gzip) by a client in a
separate process, as Prometheus always is: a client thread in the backend's own process
(`--client thread`, how this benchmark scraped before) competes with the loop for the GIL
and adds its share to the stall measured. A ticker on the loop records the longest stall
(worst of all repeats, after one warm-up scrape). Prints one table; ratios are measured in
the same run, never compared across machines.

    .venv/bin/python benchmarks/scrape.py [--sizes 1000,10000,100000] [--repeat 5] \
        [--churn 0.01] [--client process|thread]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import GaugeMetricFamily, Metric

from agent_registry_exporter import AgentRegistry, ExporterServer, Settings, start_exporter

HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}


class StockCollector:
    """The straightforward prometheus_client way: fresh families from the registry."""

    def __init__(self, registry: AgentRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        agents = GaugeMetricFamily(
            "agent_registry_user_agents", "Agents in the user's session.", labels=["user_id"]
        )
        age = GaugeMetricFamily(
            "agent_registry_user_session_age_seconds", "Age.", labels=["user_id"]
        )
        created = GaugeMetricFamily(
            "agent_registry_user_session_created_timestamp_seconds", "Start.", labels=["user_id"]
        )
        total = 0
        for s in self.registry.sessions():
            count = s.agent_count
            total += count
            agents.add_metric([s.user_id], count)
            age.add_metric([s.user_id], now - s.created_timestamp)
            created.add_metric([s.user_id], s.created_timestamp)
        yield agents
        yield age
        yield created
        yield GaugeMetricFamily("agent_registry_agents", "Agents.", value=total)


class StallMeter:
    """Ticks every millisecond on the loop; remembers the longest gap between ticks."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - last - 0.001)
            last = now

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def fetch(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    request = urllib.request.Request(url, headers=HEADERS)  # noqa: S310 - loopback only
    with urllib.request.urlopen(request, timeout=120) as resp:  # noqa: S310
        size = len(resp.read())
    return time.perf_counter() - started, size


def serve_client() -> None:
    """The client process: fetches each URL read from stdin, answers "seconds bytes"."""
    for line in sys.stdin:
        elapsed, size = fetch(line.strip())
        print(f"{elapsed} {size}", flush=True)


class Client:
    """Scrapes from a separate process (`--client process`) or a thread of this one."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        if self.kind == "process":  # started before any registry: a small process to fork
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--serve-client",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )

    async def fetch(self, url: str) -> tuple[float, int]:
        """Seconds from the request to the body's last byte, and the body's bytes."""
        process = self._process
        if process is None:
            return await asyncio.to_thread(fetch, url)
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(f"{url}\n".encode())
        await process.stdin.drain()
        elapsed, size = (await process.stdout.readline()).split()
        return float(elapsed), int(size)

    async def stop(self) -> None:
        if self._process is not None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            await self._process.wait()


class Churn:
    """Changes a fraction of the registry's users, as a backend does between two scrapes."""

    def __init__(self, registry: AgentRegistry, fraction: float) -> None:
        self.registry, self.fraction = registry, fraction
        self.rng = random.Random(len(registry))
        self.added = 0

    async def step(self) -> None:
        registry, rng = self.registry, self.rng
        picked = rng.sample(
            [s.user_id for s in registry.sessions()], int(len(registry) * self.fraction)
        )
        tenth = len(picked) // 10
        for user in picked[:tenth]:
            await registry.detach_session(user)
        for user in picked[tenth:]:
            session = registry.get_session(user)
            if session is not None and "extra" in session.agents:
                await registry.unregister_user_agent(user, "extra")
            else:
                await registry.register_user_agent(user, "extra", object())
        for _ in range(tenth):
            self.added += 1
            await registry.register_user_agent(f"new-{self.added:06d}", "agent-0", object())


async def idle_stall(seconds: float) -> float:
    """The worst gap of the ticker on a loop doing nothing else for `seconds`: what the
    machine's own load (other processes taking the cores) costs, the floor of any stall."""
    meter = StallMeter()
    meter.start()
    await asyncio.sleep(seconds)
    await meter.stop()
    return meter.max_gap


async def measure(
    client: Client, url: str, repeat: int, churn: Churn
) -> tuple[float, float, int, float]:
    """Median scrape seconds, worst loop stall seconds, compressed bytes, and the worst
    idle stall over as long (the same ticker while nothing is scraped).

    One warm-up scrape first; a full garbage collection before, so neither path pays
    for the other's leftovers.
    """
    await client.fetch(url)
    gc.collect()
    times, stalls, idle, size = [], [], [], 0
    for _ in range(repeat):
        await churn.step()
        meter = StallMeter()
        meter.start()
        await asyncio.sleep(0.01)
        elapsed, size = await client.fetch(url)
        await meter.stop()
        times.append(elapsed)
        stalls.append(meter.max_gap)
        idle.append(await idle_stall(elapsed + 0.01))
    return statistics.median(times), max(stalls), size, max(idle)


async def build_registry(users: int) -> AgentRegistry:
    registry = AgentRegistry()
    now = datetime.now(UTC)
    for u in range(users):
        user = f"user-{u:06d}"
        for a in range(3):
            await registry.register_user_agent(user, f"agent-{a}", object())
        session = registry.get_session(user)
        assert session is not None
        session.created_at = now - timedelta(seconds=u % 90_000)
    return registry


async def start_stock(registry: AgentRegistry) -> tuple[web.AppRunner, str]:
    """The stock path serving `registry` on a free port: its runner and /metrics URL."""
    stock_registry = CollectorRegistry()
    stock_registry.register(StockCollector(registry))  # type: ignore[arg-type]
    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(stock_registry))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"


async def start_ours(registry: AgentRegistry, users: int) -> ExporterServer:
    """This exporter serving `registry` on a free port, every user exported."""
    return await start_exporter(
        registry,
        Settings(
            listen_host="127.0.0.1",
            listen_port=0,
            max_user_series=users,
            webhook_token="benchmark-only",  # noqa: S106 - the webhook is never called here
        ),
    )


async def bench(client: Client, users: int, repeat: int, fraction: float) -> dict[str, float]:
    registry = await build_registry(users)
    churn = Churn(registry, fraction)
    runner, stock_url = await start_stock(registry)
    # Room for the users the churn adds: every user exported, as in the stock path.
    ours = await start_ours(registry, 2 * users)
    try:
        stock_repeat = max(1, repeat // 2) if users >= 100_000 else repeat
        stock_t, stock_stall, stock_size, _ = await measure(client, stock_url, stock_repeat, churn)
        ours_t, ours_stall, ours_size, idle = await measure(
            client, f"{ours.url}/metrics", repeat, churn
        )
    finally:
        await ours.stop()
        await runner.cleanup()
    return {
        "users": users,
        "stock_ms": stock_t * 1000,
        "ours_ms": ours_t * 1000,
        "speedup": stock_t / ours_t,
        "stock_stall_ms": stock_stall * 1000,
        "ours_stall_ms": ours_stall * 1000,
        "idle_stall_ms": idle * 1000,
        "stock_kb": stock_size / 1024,
        "ours_kb": ours_size / 1024,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--churn", type=float, default=0.01, help="users changed per scrape")
    parser.add_argument("--client", choices=("process", "thread"), default="process")
    args = parser.parse_args()
    client = Client(args.client)
    await client.start()
    print(
        f"{'users':>8} {'stock ms':>9} {'ours ms':>8} {'speedup':>8} "
        f"{'stock stall ms':>15} {'ours stall ms':>14} {'idle stall ms':>14} {'stock KiB':>10} "
        f"{'ours KiB':>9}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        r = await bench(client, size, args.repeat, args.churn)
        print(
            f"{r['users']:>8,} {r['stock_ms']:>9.1f} {r['ours_ms']:>8.1f} {r['speedup']:>7.1f}x "
            f"{r['stock_stall_ms']:>15.1f} {r['ours_stall_ms']:>14.1f} {r['idle_stall_ms']:>14.1f} "
            f"{r['stock_kb']:>10.0f} {r['ours_kb']:>9.0f}",
            flush=True,
        )
    await client.stop()


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve-client"]:
        serve_client()
    else:
        asyncio.run(main())
