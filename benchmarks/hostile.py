"""/metrics of a 10,000-user registry under hostile clients: ours against the stock path.

Each server runs in its own process (so its CPU time can be read from /proc), serving the
same 10,000-user registry:

- stock: prometheus_client's aiohttp handler over a custom collector, aiohttp's defaults;
- ours: `start_exporter` with a webhook token (the bombs carry none).

Per server, with scrapes made one after another from a thread with Prometheus' own headers:

1. baseline: the scrapes alone;
2. bombs alone: 20 gzip bombs (1 MiB of gzip inflating to 1 GiB, POSTed without a token,
   to the webhook for ours and to /metrics for stock) one after another; the server's CPU
   seconds over them, per bomb;
3. attack: the scrapes again while 2,000 slow connections (half a request's headers, then
   a byte every few seconds; reconnecting a second after being dropped) stay open and
   another 20 bombs are sent.

Prints the worst scrape latency of phases 1 and 3, failed scrapes, and CPU per bomb.
Figures are ratios within one run; the machine's load moves them.

Then the sidecar against a hostile worker (issue 20, finding 2): the `sidecar` command in its
own process gathers a good worker (`--users` users) and a socket answering `--flood-mib` MiB
to every snapshot request, streamed; printed: the sidecar's resident memory once idle (after
scrapes of the good worker alone) and at its peak (the kernel's high-water mark) over
`--scrapes` scrapes with the flood beside it, for the default `max_worker_answer_bytes` and
for 1 GiB (the bound before it was a setting). Then `--bound-workers` workers answering
valid snapshots at 95% of the default bound: the sidecar's RSS idle, between scrapes (it
keeps each worker's last full columns) and at its peak, over scrapes of them and then, with
`--restart` (the default), over scrapes after each was restarted (new registries under the
same names: full answers while the old columns are held), beside what
`sidecar_memory_bytes` gives for them.

    .venv/bin/python benchmarks/hostile.py [--users 10000] [--slow 2000] [--bombs 20]
        [--flood-mib 200] [--parts clients,sidecar] [--bound-workers 2] [--no-restart]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import sys
import tempfile
import time
import urllib.request
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from scrape import build_registry, fetch, start_stock

from agent_registry_exporter import AgentRegistry, Settings, serve_registry, start_exporter
from agent_registry_exporter.common.sidecar_memory import sidecar_memory_bytes
from agent_registry_exporter.settings import ENV_PREFIX
from agent_registry_exporter.sources import socket_path
from agent_registry_exporter.sources.snapshot_codec import SNAPSHOT_CONTENT_TYPE
from agent_registry_exporter.testing import free_port

TOKEN = "bench-t0ken"  # noqa: S105 - a benchmark's throwaway token
_CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def gzip_bomb(mebibytes: int = 1024) -> bytes:
    """About 1 MiB of gzip inflating to `mebibytes` MiB of zeros, built in small pieces."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(mebibytes)) + packer.flush()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICK


async def serve(kind: str, users: int) -> None:
    """Child process: serve `users` users, print the /metrics URL, run until stdin closes."""
    registry = await build_registry(users)
    if kind == "stock":
        runner, url = await start_stock(registry)
    else:
        server = await start_exporter(
            registry,
            Settings(
                listen_host="127.0.0.1",
                listen_port=0,
                webhook_token=TOKEN,
                max_user_series=users,
                log_level="ERROR",
            ),
        )
        url = f"{server.url}/metrics"
    print(url, flush=True)
    await asyncio.to_thread(sys.stdin.read)
    if kind == "stock":
        await runner.cleanup()
    else:
        await server.stop()


@dataclass
class Result:
    worst_scrape: float
    worst_attacked: float
    failed_scrapes: int
    cpu_per_bomb: float


class Attack:
    """Slow connections kept open, and bombs sent one after another, until `stop`."""

    def __init__(self, host: str, port: int, bomb_path: str, bomb: bytes) -> None:
        self.host, self.port, self.bomb_path, self.bomb = host, port, bomb_path, bomb
        self.stop = asyncio.Event()
        self.bombs_sent = 0

    async def slow_connection(self) -> None:
        while not self.stop.is_set():
            writer = None
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                while not self.stop.is_set() and not reader.at_eof():
                    writer.write(b"a")
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(reader.read(1024), timeout=5)
            except OSError:
                pass
            finally:
                if writer is not None:
                    writer.close()
            await asyncio.sleep(1)

    async def bombs(self, count: int) -> None:
        head = (
            f"POST {self.bomb_path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Encoding: gzip\r\nContent-Length: {len(self.bomb)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        for _ in range(count):
            writer = None
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                writer.write(head + self.bomb)
                await writer.drain()
                await asyncio.wait_for(reader.read(), timeout=30)
            except (OSError, TimeoutError):
                pass  # refused mid-body: the server did not want it
            finally:
                if writer is not None:
                    writer.close()
            self.bombs_sent += 1


async def scrapes(url: str, count: int) -> tuple[float, int]:
    worst, failed = 0.0, 0
    for _ in range(count):
        started = time.perf_counter()
        try:
            await asyncio.to_thread(fetch, url)
        except OSError:
            failed += 1
        worst = max(worst, time.perf_counter() - started)
    return worst, failed


async def attacked_scrapes(url: str, scrape_count: int, attack: Attack) -> tuple[float, int]:
    """The scrapes while the slow connections stay open and the bombs keep coming."""
    slow = [asyncio.create_task(attack.slow_connection()) for _ in range(SLOW)]
    await asyncio.sleep(3)  # let the slow connections pile up first
    bombing = asyncio.create_task(attack.bombs(BOMBS))
    worst, failed = await scrapes(url, scrape_count)
    await bombing
    attack.stop.set()
    await asyncio.gather(*slow)
    return worst, failed


async def cpu_per_bomb(pid: int, attack: Attack) -> float:
    """Server CPU seconds per bomb, the bombs sent alone (nothing else costs CPU then)."""
    before = cpu_seconds(pid)
    await attack.bombs(BOMBS)
    return (cpu_seconds(pid) - before) / BOMBS


async def bench(kind: str, users: int, scrape_count: int, bomb: bytes) -> Result:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        kind,
        "--users",
        str(users),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        url = (await child.stdout.readline()).decode().strip()
        host, port = url.removeprefix("http://").removesuffix("/metrics").split(":")
        await asyncio.to_thread(fetch, url)  # warm-up
        baseline, _ = await scrapes(url, scrape_count)
        path = "/metrics" if kind == "stock" else "/webhook/alertmanager"
        per_bomb = await cpu_per_bomb(child.pid, Attack(host, int(port), path, bomb))
        attacked, failed = await attacked_scrapes(
            url, scrape_count, Attack(host, int(port), path, bomb)
        )
        return Result(baseline, attacked, failed, per_bomb)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        await asyncio.wait_for(child.wait(), 60)


SLOW = 2000
BOMBS = 20


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """The process's resident memory (VmRSS) or its high-water mark (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)


def plain_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - loopback only
        return str(resp.read().decode())


async def flood_worker(path: Path, mebibytes: int) -> web.AppRunner:
    """A socket answering `mebibytes` MiB to every snapshot request, streamed, no length."""
    piece = b"A" * (1 << 20)

    async def flood(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": SNAPSHOT_CONTENT_TYPE})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(mebibytes):
                await response.write(piece)
            await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/v1/snapshot", flood)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    return runner


async def uuid_registry(users: int) -> AgentRegistry:
    """`users` one-agent users with random UUID ids (56 bytes each in a snapshot)."""
    registry = AgentRegistry()
    for _ in range(users):
        await registry.register_user_agent(str(uuid.uuid4()), "agent-0", object())
    return registry


Joined = Callable[[str], Awaitable[list[Callable[[], Awaitable[None]]]]]


async def sidecar_memory(
    users: int, scrape_count: int, bound: int | None, join: Joined, restart: Joined | None = None
) -> tuple[float, float, float, str]:
    """The sidecar's idle, held and peak RSS (MiB), and its source_up lines.

    Idle: a good worker alone, scraped `scrape_count` times; then `join(directory)` adds
    the workers under test and the sidecar is scraped as often again (held: its RSS then,
    the workers' columns kept between scrapes). With `restart`, `restart(directory)` then
    replaces them (new registries, same names: full answers while the old columns are
    held) and the sidecar is scraped as often again.
    """
    with tempfile.TemporaryDirectory(prefix="ars-") as directory:
        good = await serve_registry(await build_registry(users), directory, worker="good")
        port = free_port()
        env = {**os.environ, f"{ENV_PREFIX}WEBHOOK_TOKEN": TOKEN, f"{ENV_PREFIX}LOG_LEVEL": "ERROR"}
        if bound is not None:
            env[f"{ENV_PREFIX}MAX_WORKER_ANSWER_BYTES"] = str(bound)
        command = Path(sys.executable).parent / "agent-registry-exporter"
        sidecar = await asyncio.create_subprocess_exec(
            str(command), "sidecar", "--socket-dir", directory,
            "--listen-host", "127.0.0.1", "--listen-port", str(port),
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}/metrics"
        stops: list[Callable[[], Awaitable[None]]] = []
        try:
            for _ in range(300):
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(fetch, url)
                    break
                await asyncio.sleep(0.1)
            for _ in range(scrape_count):  # idle: the good worker alone, caches warm
                await asyncio.to_thread(fetch, url)
            idle = rss_mib(sidecar.pid)
            stops = await join(directory)
            for _ in range(scrape_count):
                await asyncio.to_thread(fetch, url)
            held = rss_mib(sidecar.pid)
            if restart is not None:
                stops += await restart(directory)
                for _ in range(scrape_count):
                    await asyncio.to_thread(fetch, url)
            peak = rss_mib(sidecar.pid, "VmHWM")
            text = await asyncio.to_thread(plain_text, url)
            up = [line for line in text.splitlines() if line.startswith("agent_registry_source_up")]
            return idle, held, peak, ", ".join(line.split("_up")[1] for line in up)
        finally:
            sidecar.terminate()
            await sidecar.wait()
            for stop in stops:
                await stop()
            await good.stop()


async def main() -> None:
    global SLOW, BOMBS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--slow", type=int, default=SLOW)
    parser.add_argument("--bombs", type=int, default=BOMBS)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--servers", default="stock,ours", help="which to run (stock,ours)")
    parser.add_argument("--flood-mib", type=int, default=200)
    parser.add_argument("--bound-workers", type=int, default=2)
    parser.add_argument(
        "--restart",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="restart the workers at the bound once (full answers beside the held columns)",
    )
    parser.add_argument("--parts", default="clients,sidecar", help="clients, sidecar or both")
    parser.add_argument("--serve", choices=["stock", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        await serve(args.serve, args.users)
        return
    SLOW, BOMBS = args.slow, args.bombs
    parts = args.parts.split(",")
    if "clients" in parts:
        await hostile_clients(args)
    if "sidecar" in parts:
        await hostile_worker(args)


async def hostile_worker(args: argparse.Namespace) -> None:
    default: int = Settings.model_fields["max_worker_answer_bytes"].default

    async def flooding(directory: str) -> list[Callable[[], Awaitable[None]]]:
        runner = await flood_worker(socket_path(directory, "flood"), args.flood_mib)
        return [runner.cleanup]

    print(
        f"\nsidecar: a good worker ({args.users:,} users) and a socket answering "
        f"{args.flood_mib} MiB per snapshot, {args.scrapes} scrapes"
    )
    header = f"{'max_worker_answer_bytes':>24}  {'idle RSS MiB':>12}  {'peak RSS MiB':>12}"
    print(f"{header}  peak/idle  source_up")
    for bound in (default, 1 << 30):
        idle, _, peak, up = await sidecar_memory(args.users, args.scrapes, bound, flooding)
        name = f"{bound >> 20} MiB" + (" (default)" if bound == default else "")
        print(f"{name:>24}  {idle:>12.1f}  {peak:>12.1f}  {peak / idle:>8.2f}x  {up}")

    # What a valid snapshot at the bound costs: the basis of the memory limit's formula.
    at_bound = int(default / 56 * 0.95)
    workers = args.bound_workers
    first = [await uuid_registry(at_bound) for _ in range(workers)]
    # The same workers restarted (new registries, same names) answer full snapshots while
    # the sidecar still holds the first ones' columns.
    second = [await uuid_registry(at_bound) for _ in range(workers)] if args.restart else []
    handles: list[Any] = []

    async def full(directory: str) -> list[Callable[[], Awaitable[None]]]:
        handles[:] = [
            await serve_registry(r, directory, worker=f"full{n}") for n, r in enumerate(first)
        ]
        return [stop_all]

    async def stop_all() -> None:
        for handle in handles:
            await handle.stop()

    async def restart(directory: str) -> list[Callable[[], Awaitable[None]]]:
        await stop_all()
        handles[:] = [
            await serve_registry(r, directory, worker=f"full{n}") for n, r in enumerate(second)
        ]
        return []

    idle, held, peak, up = await sidecar_memory(
        args.users, args.scrapes, None, full, restart if args.restart else None
    )
    extra = (peak - idle) * (1 << 20) / (workers * default)
    formula = sidecar_memory_bytes(workers, default, Settings().max_user_series) / (1 << 20)
    print(
        f"\nsidecar: the good worker and {workers} workers of {at_bound:,} UUID users"
        f" each (95% of the default bound){', restarted once' if args.restart else ''}:"
        f" idle {idle:.1f} MiB, held between scrapes {held:.1f} MiB, peak {peak:.1f} MiB;"
        f" {extra:.2f}x the bound per worker; the formula {formula:.0f} MiB"
        f" (peak/formula {peak / formula:.2f})  {up}"
    )


async def hostile_clients(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, SLOW + 512)), hard))
    bomb = gzip_bomb()
    print(
        f"{args.users:,} users, {args.scrapes} scrapes per phase; attack: {SLOW:,} slow "
        f"connections + {BOMBS} gzip bombs of {len(bomb) / 2**20:.1f} MiB (1 GiB inflated)"
    )
    print(
        f"{'server':>6}  {'worst scrape s':>14}  {'under attack s':>14}  {'failed':>6}  "
        f"{'CPU s per bomb':>14}"
    )
    results = {}
    for kind in args.servers.split(","):
        result = results[kind] = await bench(kind, args.users, args.scrapes, bomb)
        print(
            f"{kind:>6}  {result.worst_scrape:>14.3f}  {result.worst_attacked:>14.3f}  "
            f"{result.failed_scrapes:>6}  {result.cpu_per_bomb:>14.3f}"
        )
    if len(results) < 2:
        return
    stock, ours = results["stock"], results["ours"]
    print(
        f"under attack, ours: worst scrape {stock.worst_attacked / ours.worst_attacked:.1f}x "
        f"faster, {stock.cpu_per_bomb / max(ours.cpu_per_bomb, 1e-3):.0f}x less CPU per bomb"
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
