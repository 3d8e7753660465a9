"""Time one /metrics render at 100,000 and 1,000,000 users, 1% of them changed since the last.

Users have random UUIDs as ids, 0-10 agents (0.1% of them 51-80) and sessions up to a
day old. Between two
scrapes 1% of users change: 80% of those gain or lose an agent, 10% are cleaned (removed),
10% are new users. Every figure is the OpenMetrics + gzip render Prometheus asks for,
median of `--repeat` rounds (each round runs every variant once, so background load hits
them alike), measured in this one process:

- previous: the full render this project shipped before (5,000-user chunks, one gzip stream);
- full: the current renderer with nothing cached;
- new: the current renderer after rendering the previous scrape (the server's case);
  no age: the same with `export_session_age=False`;
- floor: joining the already-rendered lines of the same body and compressing them at the
  same level (5,000 lines per join, one gzip stream): what no renderer of this body beats;
- stock: prometheus_client's OpenMetrics encoder over GaugeMetricFamily objects plus gzip,
  only with `--stock` and up to 200,000 users (seconds per run at 100,000 users);
- cap: choosing the 10,000 users kept by the default `max_user_series` (cap before: the
  previous selection, heapq.nlargest with a Python key);
- peak: tracemalloc's peak during the new render over the body's size (peak before: the
  same for the previous render);
- cache: what the renderer keeps between scrapes (tracemalloc), and over the body's size.

    .venv/bin/python benchmarks/render.py [--sizes 100000,1000000] [--repeat 5] [--stock]
"""

from __future__ import annotations

import argparse
import gc
import gzip
import random
import statistics
import time
import tracemalloc
import uuid
import zlib
from collections.abc import Callable
from typing import Any

from previous_render import previous_render, previous_select  # a sibling: run from benchmarks/
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.openmetrics.exposition import generate_latest

from agent_registry_exporter import RegistrySnapshot, SessionRow, Thresholds
from agent_registry_exporter.exporting import select_indexes
from agent_registry_exporter.exporting.renderer import ExporterMetrics, Renderer, render


def users(n: int, rng: random.Random) -> dict[str, SessionRow]:
    now = time.time()
    ages = sorted((rng.random() * 86_000 for _ in range(n)), reverse=True)
    return {
        # 0.1% of users over the 50-agent limit: the cap must find them all.
        uid: SessionRow(
            uid, rng.randint(51, 80) if rng.random() < 0.001 else rng.randint(0, 10), now - age
        )
        for uid, age in zip(
            (str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(n)), ages, strict=True
        )
    }


def change_one_percent(rows: dict[str, SessionRow], rng: random.Random) -> dict[str, SessionRow]:
    changed = dict(rows)
    picked = rng.sample(list(rows), len(rows) // 100)
    tenth = len(picked) // 10
    for uid in picked[:tenth]:
        del changed[uid]
    for uid in picked[tenth:]:
        row = changed[uid]
        changed[uid] = row._replace(agent_count=max(0, row.agent_count + rng.choice((-1, 1))))
    for _ in range(tenth):
        uid = str(uuid.UUID(int=rng.getrandbits(128)))
        changed[uid] = SessionRow(uid, 1, time.time())
    return changed


def snapshot(rows: dict[str, SessionRow]) -> RegistrySnapshot:
    return RegistrySnapshot(
        taken_at=time.time(), thresholds=Thresholds(), sessions=list(rows.values())
    )


def seconds(run: Callable[[], Any], before: Callable[[], Any] = lambda: None) -> float:
    before()
    gc.collect()
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def rounds(runs: dict[str, tuple[Callable[[], Any], Callable[[], Any]]], repeat: int) -> dict:
    """Each run once per round, round after round: load from other processes hits all alike.

    Medians of the times; `new/floor` is the median of the per-round ratios.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, (run, before) in runs.items():
            times[name].append(seconds(run, before))
    result = {name: statistics.median(t) for name, t in times.items()}
    if "new" in times:
        result["ratio"] = statistics.median(
            n / f for n, f in zip(times["new"], times["floor"], strict=True)
        )
    return result


def floor(lines: list[bytes]) -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    out = [
        compressor.compress(b"".join(lines[lo : lo + 5000])) for lo in range(0, len(lines), 5000)
    ]
    out.append(compressor.flush())
    return b"".join(out)


def stock(snap: RegistrySnapshot) -> bytes:
    class Collector:
        def collect(self):  # type: ignore[no-untyped-def]
            agents = GaugeMetricFamily("agent_registry_user_agents", "Agents.", labels=["user_id"])
            age = GaugeMetricFamily(
                "agent_registry_user_session_age_seconds", "Age.", labels=["user_id"]
            )
            created = GaugeMetricFamily(
                "agent_registry_user_session_created_timestamp_seconds",
                "Start.",
                labels=["user_id"],
            )
            for s in snap.sessions:
                agents.add_metric([s.user_id], s.agent_count)
                age.add_metric([s.user_id], snap.taken_at - s.created_timestamp)
                created.add_metric([s.user_id], s.created_timestamp)
            yield from (agents, age, created)

    registry = CollectorRegistry()
    registry.register(Collector())  # type: ignore[arg-type]
    return gzip.compress(generate_latest(registry), 1)  # type: ignore[no-untyped-call]


def bench(n: int, repeat: int, with_stock: bool) -> dict[str, float]:
    rng = random.Random(n)
    before_rows = users(n, rng)
    after_rows = change_one_percent(before_rows, rng)
    metrics = ExporterMetrics("bench")
    options: dict[str, Any] = {"openmetrics": True, "gzipped": True, "max_user_series": 2 * n}
    snap_before, snap_after = snapshot(before_rows), snapshot(after_rows)

    renderer = Renderer()

    def warm() -> None:
        nonlocal renderer
        renderer = Renderer()
        renderer.render(snap_before, metrics, **options)

    body = render(snap_after, metrics, **options)
    lines = gzip.decompress(body.body).splitlines(keepends=True)
    nothing = lambda: None  # noqa: E731
    r: dict[str, float] = {"users": n}
    r.update(
        rounds(
            {
                "previous": (lambda: previous_render(snap_after, metrics), nothing),
                "full": (lambda: render(snap_after, metrics, **options), nothing),
                "new": (lambda: renderer.render(snap_after, metrics, **options), warm),
                "no_age": (
                    lambda: renderer.render(
                        snap_after, metrics, **options, export_session_age=False
                    ),
                    warm,
                ),
                "floor": (lambda: floor(lines), nothing),
            },
            repeat,
        )
    )
    lines.clear()
    r["body_kib"] = body.size / 1024
    counts = [s.agent_count for s in snap_after.sessions]
    created = [s.created_timestamp for s in snap_after.sessions]
    r.update(
        rounds(
            {
                "cap": (
                    lambda: select_indexes(
                        counts, created, snap_after.taken_at, Thresholds(), 10_000
                    ),
                    nothing,
                ),
                "cap_previous": (lambda: previous_select(snap_after, counts, 10_000), nothing),
            },
            repeat,
        )
    )
    # About a minute at 1,000,000 users: measured only where it fits in a benchmark run.
    fits = with_stock and n <= 200_000
    r["stock"] = seconds(lambda: stock(snap_after)) if fits else float("nan")

    gc.collect()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    warm()
    r["cache_mib"] = (tracemalloc.get_traced_memory()[0] - start) / 2**20
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    rendered = renderer.render(snap_after, metrics, **options)
    r["peak_x"] = (tracemalloc.get_traced_memory()[1] - base) / rendered.size
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    previous = previous_render(snap_after, metrics)
    r["peak_previous_x"] = (tracemalloc.get_traced_memory()[1] - base) / len(previous)
    tracemalloc.stop()
    r["cache_x"] = r["cache_mib"] * 2**20 / rendered.size
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--stock", action="store_true", help="also time prometheus_client's encoder"
    )
    args = parser.parse_args()
    print(
        f"{'users':>9} {'previous ms':>11} {'full ms':>8} {'new ms':>7} {'no age ms':>9} "
        f"{'floor ms':>8} "
        f"{'new/floor':>9} {'stock ms':>8} {'cap ms':>7} {'cap before':>10} {'peak/body':>9} "
        f"{'peak before':>11} "
        f"{'cache MiB':>9} {'cache/body':>10} {'body KiB':>8}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        r = bench(size, args.repeat, args.stock)
        print(
            f"{r['users']:>9,.0f} {r['previous'] * 1e3:>11.0f} {r['full'] * 1e3:>8.0f} "
            f"{r['new'] * 1e3:>7.0f} {r['no_age'] * 1e3:>9.0f} {r['floor'] * 1e3:>8.0f} "
            f"{r['ratio']:>8.2f}x "
            f"{r['stock'] * 1e3:>8.0f} {r['cap'] * 1e3:>7.1f} {r['cap_previous'] * 1e3:>10.1f} "
            f"{r['peak_x']:>8.2f}x {r['peak_previous_x']:>10.2f}x "
            f"{r['cache_mib']:>9.1f} {r['cache_x']:>9.2f}x {r['body_kib']:>8.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
