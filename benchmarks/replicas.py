"""Violation-to-cleanup delay with forwarding against the same run's delay without.

Two local fleets run side by side on the real Prometheus and Alertmanager (as `make test`
installs them), with the e2e settings (1 s scrapes, `for: 0s`, group_wait 1s):

- without forwarding: one replica (127.0.0.5), Alertmanager posting to it directly;
- with forwarding: three replicas (127.0.0.2-4, one port) behind a round-robin proxy, so
  most alerts reach a replica that is not their owner and are forwarded.

Each round registers the same number of leaking sessions (60 agents, over the limit of 50)
in both fleets at the same moment, spread over the replicas, and records for every session
the time from its violation to its cleanup (the owner's `cleaned` decision). Prints median
and worst per fleet and their ratio.

    .venv/bin/python benchmarks/replicas.py [--users 12] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent_registry_exporter.demo.workload import DemoAgent
from agent_registry_exporter.testing import WaitTimeout, wait_until_async
from agent_registry_exporter.testing.fleet import LocalFleet
from agent_registry_exporter.testing.stack import LocalStack

LEAK_AGENTS = 60


class Bench:
    def __init__(self, name: str, hosts: tuple[str, ...], workdir: Path) -> None:
        self.name = name
        self.token = secrets.token_urlsafe(16)
        self.fleet = LocalFleet(hosts, self.token, settings={"cleanup_burst": 1000})
        self.workdir = workdir
        self.stack: LocalStack | None = None
        self.delays: list[float] = []

    async def start(self) -> None:
        await self.fleet.start()
        assert self.fleet.proxy is not None
        direct = len(self.fleet.replicas) == 1
        webhook = self.fleet.targets[0] if direct else self.fleet.proxy.address
        self.stack = LocalStack(self.workdir, self.fleet.targets, self.token, webhook)
        await asyncio.to_thread(self.stack.start)
        await self._until(self._all_up, "every target scraped")

    async def stop(self) -> None:
        if self.stack is not None:
            await asyncio.to_thread(self.stack.stop)
        await self.fleet.stop()

    async def leak(self, user: str, n: int) -> float:
        """Register one leaking session on replica `n` (round robin); its violation time."""
        replicas = self.fleet.replicas
        registry = replicas[n % len(replicas)].registry
        for k in range(LEAK_AGENTS):
            await registry.register_user_agent(user, f"agent-{k}", DemoAgent(user))
        return time.monotonic()

    async def collect(self, violated: dict[str, float]) -> None:
        def done() -> bool:
            return all(self.fleet.cleaned(u) for u in violated)

        await self._until(done, "every leak cleaned", within=120)
        for user, at in violated.items():
            ((_, cleaned_at),) = self.fleet.cleaned(user)
            self.delays.append(cleaned_at - at)

    def forwards(self) -> list[float]:
        """Round trips of the forwards (forwarder to owner and back), seconds."""
        return [
            d.duration_seconds
            for r in self.fleet.replicas
            for _, d in r.decisions
            if d.outcome == "forwarded"
        ]

    async def _all_up(self) -> bool:
        assert self.stack is not None
        up = await asyncio.to_thread(self.stack.query, "up")
        return len(up) == len(self.fleet.targets) and all(s["value"][1] == "1" for s in up)

    async def _until(
        self, check: Callable[[], bool | Awaitable[bool]], what: str, within: float = 60.0
    ) -> None:
        try:
            await wait_until_async(check, timeout=within, message=what)
        except WaitTimeout as exc:
            raise SystemExit(f"{self.name}: {exc}") from None


async def main(users: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        without = Bench("without forwarding", ("127.0.0.5",), Path(tmp) / "one")
        three = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
        with_fw = Bench("with forwarding", three, Path(tmp) / "three")
        benches = (without, with_fw)
        try:
            await asyncio.gather(*(b.start() for b in benches))
            for round_no in range(rounds):
                violated: list[dict[str, float]] = [{}, {}]
                for n in range(users):
                    user = f"r{round_no}-leak-{n:02d}"
                    for b, times in zip(benches, violated, strict=True):
                        times[user] = await b.leak(user, n)
                    # Spread over one scrape interval: violations fall at every scrape phase.
                    await asyncio.sleep(1.0 / users)
                await asyncio.gather(
                    *(b.collect(v) for b, v in zip(benches, violated, strict=True))
                )
        finally:
            for b in benches:
                await b.stop()
    print(
        f"{'fleet':<20} {'replicas':>8} {'leaks':>6} {'median s':>9} {'worst s':>8} "
        f"{'forwards':>9} {'forward median ms':>18}"
    )
    for b in benches:
        forwards = b.forwards()
        hop = f"{statistics.median(forwards) * 1000:.1f}" if forwards else "-"
        print(
            f"{b.name:<20} {len(b.fleet.replicas):>8} {len(b.delays):>6} "
            f"{statistics.median(b.delays):>9.2f} {max(b.delays):>8.2f} {len(forwards):>9} "
            f"{hop:>18}"
        )
    ratio_median = statistics.median(with_fw.delays) / statistics.median(without.delays)
    ratio_worst = max(with_fw.delays) / max(without.delays)
    print(f"{'with / without':<20} {'':>8} {'':>6} {ratio_median:>8.2f}x {ratio_worst:>7.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=12, help="leaking sessions per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of leaks")
    args = parser.parse_args()
    asyncio.run(main(args.users, args.rounds))
