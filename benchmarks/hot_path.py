"""Register+unregister pairs per second: the registry against a bare lock and dict of dicts.

The backend pays this on every agent it starts and stops, so bookkeeping added for the
exporter must stay cheap. Baseline: an `asyncio.Lock` guarding a dict of per-user dicts,
the least a registry can do. Both run on one event loop in this process, interleaved round
by round (median of `--repeat`), over `--users` users already holding 3 agents each.

    .venv/bin/python benchmarks/hot_path.py [--users 100000] [--pairs 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from typing import Any

from agent_registry_exporter import AgentRegistry


class BareRegistry:
    """The baseline: one lock, a dict of dicts, nothing else."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._sessions: dict[str, dict[str, Any]] = {}

    async def register_user_agent(self, user_id: str, agent_id: str, agent: Any) -> None:
        async with self._lock:
            self._sessions.setdefault(user_id, {})[agent_id] = agent

    async def unregister_user_agent(self, user_id: str, agent_id: str) -> Any | None:
        async with self._lock:
            session = self._sessions.get(user_id)
            return None if session is None else session.pop(agent_id, None)


async def fill(registry: Any, users: list[str]) -> None:
    for user in users:
        for n in range(3):
            await registry.register_user_agent(user, f"agent-{n}", object())


async def pairs_per_second(registry: Any, users: list[str], pairs: int) -> float:
    agent = object()
    gc.collect()
    started = time.perf_counter()
    for n in range(pairs):
        user = users[n % len(users)]
        await registry.register_user_agent(user, "extra", agent)
        await registry.unregister_user_agent(user, "extra")
    return pairs / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    users = [f"user-{n:07d}" for n in range(args.users)]
    ours, bare = AgentRegistry(), BareRegistry()
    await fill(ours, users)
    await fill(bare, users)
    rates: dict[str, list[float]] = {"ours": [], "bare": []}
    for _ in range(args.repeat):
        rates["bare"].append(await pairs_per_second(bare, users, args.pairs))
        rates["ours"].append(await pairs_per_second(ours, users, args.pairs))
    ratio = statistics.median(o / b for o, b in zip(rates["ours"], rates["bare"], strict=True))
    print(f"{'users':>9} {'bare pairs/s':>13} {'registry pairs/s':>17} {'registry/bare':>13}")
    print(
        f"{args.users:>9,} {statistics.median(rates['bare']):>13,.0f} "
        f"{statistics.median(rates['ours']):>17,.0f} {ratio:>12.2f}x"
    )


if __name__ == "__main__":
    asyncio.run(main())
