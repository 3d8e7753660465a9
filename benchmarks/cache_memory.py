"""What rendering from the registry's changes keeps between scrapes, against the body's size.

Builds a real `AgentRegistry` of `--users` users (UUID ids, benchmarks/series.py's
population) served by the in-process source, as the embedded exporter is, and renders
`--scrapes` OpenMetrics + gzip scrapes with one `Renderer`, 1% of the users changed before
each (benchmarks/sidecar.py's churn: agents gained or lost, cleanups, new users). Then:

- renderer: everything only the renderer holds (its chunk cache: encoded pieces, each
  chunk's ids, counts and timestamps; and its delta history of the last snapshots'
  changes), measured with tracemalloc as the memory freed when the renderer is dropped;
  `cached_bytes`, the encoded pieces alone, beside it;
- change log: the registry's log of changed users (its list, and the ids only it still
  holds: users gone from the registry), by sys.getsizeof;
- body: the last scrape's compressed body.

Target (issue 21): renderer plus change log at most 1.5x the compressed body. Rows: every
user exported (like for like with the stock path), the default `max_user_series` (10,000),
and `user_series_min_pressure=0.5`.

    .venv/bin/python benchmarks/cache_memory.py [--users 100000] [--scrapes 10]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import tracemalloc
from typing import Any

from series import build, population
from sidecar import Churn

from agent_registry_exporter import AgentRegistry
from agent_registry_exporter.exporting import OPENMETRICS, ExporterMetrics, Renderer
from agent_registry_exporter.sources import InProcessSource

_MIB = 1 << 20


def change_log_bytes(registry: AgentRegistry) -> int:
    """The log's list and the ids it alone keeps alive (users no longer in the registry)."""
    ids: list[str] = registry._log._ids  # the log itself, measured: no public view of it
    gone = {user_id for user_id in ids if registry.get_session(user_id) is None}
    return sys.getsizeof(ids) + sum(map(sys.getsizeof, gone))


async def measure(registry: AgentRegistry, scrapes: int, options: dict[str, Any]) -> dict:
    source = InProcessSource(registry)
    churn = Churn(registry)
    metrics = ExporterMetrics("bench")
    gc.collect()
    tracemalloc.start()
    renderer = Renderer()
    size = 0
    for _ in range(scrapes):
        await churn()
        rendered = renderer.render(await source.snapshot(), metrics, **options)
        size = rendered.size
        del rendered
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    cached = renderer.cached_bytes
    del renderer
    gc.collect()
    renderer_bytes = held - tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    log = change_log_bytes(registry)
    return {
        "renderer": renderer_bytes,
        "cached": cached,
        "log": log,
        "log_len": registry.log_size,
        "body": size,
        "ratio": (renderer_bytes + log) / size,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=10)
    args = parser.parse_args()
    registry = await build(population(args.users, random.Random(args.users)))
    print(
        f"{args.users:,} users, {args.scrapes} scrapes of OpenMetrics + gzip, 1% of users "
        "changed before each"
    )
    print(
        f"{'exported':>22} {'body KiB':>8} {'renderer KiB':>12} {'cached_bytes KiB':>16} "
        f"{'change log KiB':>14} {'log entries':>11} {'(renderer+log)/body':>19}"
    )
    rows = (
        ("every user", {"max_user_series": 2 * args.users}),
        ("max_user_series 10000", {"max_user_series": 10_000}),
        ("min pressure 0.5", {"user_series_min_pressure": 0.5}),
    )
    for name, extra in rows:
        options = {"format": OPENMETRICS, "gzipped": True, **extra}
        r = await measure(registry, args.scrapes, options)
        print(
            f"{name:>22} {r['body'] / 1024:>8.0f} {r['renderer'] / 1024:>12.0f} "
            f"{r['cached'] / 1024:>16.0f} {r['log'] / 1024:>14.0f} {r['log_len']:>11,} "
            f"{r['ratio']:>18.2f}x",
            flush=True,
        )
    print("target: (renderer+log)/body at most 1.5x")


if __name__ == "__main__":
    asyncio.run(main())
