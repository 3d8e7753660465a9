"""The registry's memory comes back when its users leave (issue 20, finding 1).

Registers `--users` one-agent users, unregisters every agent, and prints this process's
resident memory before, at the peak (the kernel's high-water mark, VmHWM) and after, with
the registry's size at each point. Target: after within 10% of before. Not a timing test.

    .venv/bin/python benchmarks/registry_memory.py [--users 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

from agent_registry_exporter import AgentRegistry

_MIB = 1 << 20


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def rss_mib() -> float:
    return _status_kib("VmRSS") * 1024 / _MIB


def peak_rss_mib() -> float:
    return _status_kib("VmHWM") * 1024 / _MIB


class Agent:
    """A small agent object, like a handle to a model session."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n


async def run(users: int) -> None:
    registry = AgentRegistry()
    gc.collect()
    before = rss_mib()
    started = time.perf_counter()
    for n in range(users):
        await registry.register_user_agent(f"user-{n:07d}", "agent-0", Agent(n))
    held = len(registry)
    registered = time.perf_counter() - started
    started = time.perf_counter()
    for n in range(users):
        await registry.unregister_user_agent(f"user-{n:07d}", "agent-0")
    removed = time.perf_counter() - started
    gc.collect()
    after = rss_mib()
    peak = peak_rss_mib()
    print(f"users registered and removed: {users:,}")
    print(f"  registry size at the peak: {held:,}; after: {len(registry):,}")
    print(f"  RSS before {before:.1f} MiB, peak {peak:.1f} MiB, after {after:.1f} MiB")
    print(
        f"  after/before {after / before:.3f} (target <= 1.10); "
        f"register {registered:.1f} s, remove {removed:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    args = parser.parse_args()
    asyncio.run(run(args.users))


if __name__ == "__main__":
    main()
