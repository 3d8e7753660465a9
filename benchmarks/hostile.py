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

    .venv/bin/python benchmarks/hostile.py [--users 10000] [--slow 2000] [--bombs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from scrape import build_registry, fetch, start_stock

from agent_registry_exporter import Settings, start_exporter

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


async def main() -> None:
    global SLOW, BOMBS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--slow", type=int, default=SLOW)
    parser.add_argument("--bombs", type=int, default=BOMBS)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--servers", default="stock,ours", help="which to run (stock,ours)")
    parser.add_argument("--serve", choices=["stock", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        await serve(args.serve, args.users)
        return
    SLOW, BOMBS = args.slow, args.bombs
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
