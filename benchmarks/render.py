"""Time one /metrics render at 100,000 and 1,000,000 users, 1% of them changed since the last.

Users have random UUIDs as ids, 0-10 agents (0.1% of them 51-80) and sessions up to a
day old. Between two scrapes 1% of users change: 80% of those gain or lose an agent, 10%
are cleaned (removed), 10% are new users. Every figure is the OpenMetrics + gzip render
Prometheus asks for, median of `--repeat` rounds (each round runs every variant once, so
background load hits them alike; at 1,000,000 users and more at most 3 rounds, each a minute
of renders), measured in this one process:

- ours: the current renderer after rendering the previous scrape, given the registry's
  changes since it as the in-process source gives them (the server's case), with ISA-L
  (ours zlib: the zlib fallback engine); no age: ours with `export_session_age=False`;
  walk: the same renderer given no changes, so it reads every user to find them (a source
  without a change log); full: nothing cached (a process's first scrape);
- release: the previous release's renderer (benchmarks/released/, zlib, gzip members), also
  after the previous scrape;
- zlib floor / isal floor: joining the already-rendered lines of the same body and
  compressing them at level 1 (5,000 lines per call, one gzip stream): what no renderer of
  this body that compresses it all again beats;
- stock: prometheus_client's OpenMetrics encoder over GaugeMetricFamily objects plus gzip;
  gauge: the labelled-Gauge peer (a `Gauge(..., ["user_id"])` per family holding every
  user, the usual hand-written exporter), encoded the same way; both only with `--stock`,
  one run each (seconds at 100,000 users, ~40 s for stock at 1,000,000), the gauge peer
  only up to 200,000 users (its Gauges hold ~200 MiB at 100,000 users: ~2 GiB at a million);
- cap: choosing the 10,000 users kept by the default `max_user_series`;
- cache: what the renderer keeps between scrapes (tracemalloc: the pieces, the index of
  users to chunks, any changes kept) after ten scrapes of 1% churn, over the body's size.

Wall-clock times, and the ratio to the zlib floor also in CPU time (`time.process_time`):
on a loaded machine a render loses the CPU at its pauses (the GIL given up a moment, once a
millisecond, see exporting/pauses.py) where the floor, which never pauses, keeps it. Last,
how long each size took and the process's peak RSS.

A second table (first size only) chooses the deflate level: each engine and level
compressing the body's chunks as the renderer does (one piece per chunk), time and size.

    .venv/bin/python benchmarks/render.py [--sizes 100000,1000000] [--repeat 5] [--stock]
"""

from __future__ import annotations

import argparse
import gc
import gzip
import math
import random
import resource
import statistics
import time
import tracemalloc
import uuid
import zlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.openmetrics.exposition import generate_latest
from released.renderer import Renderer as ReleasedRenderer  # a sibling: run from benchmarks/

from agent_registry_exporter import RegistrySnapshot, SessionRow, Thresholds
from agent_registry_exporter.exporting import (
    ISAL,
    OPENMETRICS,
    ZLIB,
    DeflateEngine,
    ExporterMetrics,
    Renderer,
    render,
)
from agent_registry_exporter.exporting.chunks import spans
from agent_registry_exporter.exporting.parts import deflate_piece
from agent_registry_exporter.exporting.selection import select_indexes
from agent_registry_exporter.registry import Changes

assert ISAL is not None, "isal does not import: `pip install isal`"


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


def with_changes(
    before: dict[str, SessionRow], after: dict[str, SessionRow]
) -> tuple[RegistrySnapshot, RegistrySnapshot]:
    """The two snapshots as an in-process registry gives them: generations, and the second
    one's changes since the first (the changed users' rows, the removed ids, the totals)."""
    changed = {uid: row for uid, row in after.items() if before.get(uid) != row}
    changes = Changes("bench", 1, 2, frozenset(changed), frozenset(before.keys() - after.keys()))
    first = replace(
        snapshot(before),
        epoch="bench",
        generation=1,
        totals=(len(before), sum(r.agent_count for r in before.values())),
    )
    second = replace(
        snapshot(after),
        epoch="bench",
        generation=2,
        changes=changes,
        changed_rows=changed,
        totals=(len(after), sum(r.agent_count for r in after.values())),
    )
    return first, second


def seconds(run: Callable[[], Any], before: Callable[[], Any] = lambda: None) -> float:
    return timed(run, before)[0]


def timed(run: Callable[[], Any], before: Callable[[], Any]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of `run`, after `before` and a collection."""
    before()
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - started, time.process_time() - cpu


def rounds(runs: dict[str, tuple[Callable[[], Any], Callable[[], Any]]], repeat: int) -> dict:
    """Each run once per round, round after round: load from other processes hits all alike.

    Medians of the times, and `X/Y` medians of the per-round ratios (`X/Y cpu`: of the CPU
    times).
    """
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, (run, before) in runs.items():
            times[name].append(timed(run, before))
    result = {name: statistics.median(wall for wall, _ in t) for name, t in times.items()}
    for mine, other in (("ours", "zlib_floor"), ("ours", "isal_floor"), ("release", "ours")):
        if mine in times and other in times:
            pairs = list(zip(times[mine], times[other], strict=True))
            result[f"{mine}/{other}"] = statistics.median(a[0] / b[0] for a, b in pairs)
            result[f"{mine}/{other} cpu"] = statistics.median(a[1] / b[1] for a, b in pairs)
    return result


def floor(lines: list[bytes], engine: DeflateEngine) -> bytes:
    compressor = engine.compressobj(1, zlib.DEFLATED, 31)
    out = [
        compressor.compress(b"".join(lines[lo : lo + 5000])) for lo in range(0, len(lines), 5000)
    ]
    out.append(compressor.flush(4))  # Z_FINISH
    return b"".join(out)


def families(snap: RegistrySnapshot) -> list[GaugeMetricFamily]:
    agents = GaugeMetricFamily("agent_registry_user_agents", "Agents.", labels=["user_id"])
    age = GaugeMetricFamily("agent_registry_user_session_age_seconds", "Age.", labels=["user_id"])
    created = GaugeMetricFamily(
        "agent_registry_user_session_created_timestamp_seconds", "Start.", labels=["user_id"]
    )
    for s in snap.sessions:
        agents.add_metric([s.user_id], s.agent_count)
        age.add_metric([s.user_id], snap.taken_at - s.created_timestamp)
        created.add_metric([s.user_id], s.created_timestamp)
    return [agents, age, created]


def stock(snap: RegistrySnapshot) -> bytes:
    class Collector:
        def collect(self):  # type: ignore[no-untyped-def]
            yield from families(snap)

    registry = CollectorRegistry()
    registry.register(Collector())  # type: ignore[arg-type]
    return gzip.compress(generate_latest(registry), 1)  # type: ignore[no-untyped-call]


def gauge_peer(snap: RegistrySnapshot) -> CollectorRegistry:
    """Labelled Gauges holding every user, as a hand-written exporter keeps them (mirrored
    at each registration; the age set at scrape time)."""
    registry = CollectorRegistry()
    agents = Gauge("agent_registry_user_agents", "Agents.", ["user_id"], registry=registry)
    age = Gauge("agent_registry_user_session_age_seconds", "Age.", ["user_id"], registry=registry)
    created = Gauge(
        "agent_registry_user_session_created_timestamp_seconds",
        "Start.",
        ["user_id"],
        registry=registry,
    )
    for s in snap.sessions:
        agents.labels(s.user_id).set(s.agent_count)
        age.labels(s.user_id).set(snap.taken_at - s.created_timestamp)
        created.labels(s.user_id).set(s.created_timestamp)
    return registry


def bench(n: int, repeat: int, with_stock: bool) -> dict[str, float]:
    rng = random.Random(n)
    before_rows = users(n, rng)
    after_rows = change_one_percent(before_rows, rng)
    metrics = ExporterMetrics("bench")
    options: dict[str, Any] = {"format": OPENMETRICS, "gzipped": True, "max_user_series": 2 * n}
    # The released renderer predates the Format object.
    released: dict[str, Any] = {"openmetrics": True, "gzipped": True, "max_user_series": 2 * n}
    # With the registry's changes (what the in-process source gives), and without (a walk).
    snap_before, snap_after = with_changes(before_rows, after_rows)
    walk_before, walk_after = snapshot(before_rows), snapshot(after_rows)
    warmed: dict[str, Any] = {}

    def warm(name: str, make: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            warmed[name] = make()
            before = walk_before if name in ("release", "walk") else snap_before
            warmed[name].render(before, metrics, **(released if name == "release" else options))

        return run

    body = render(snap_after, metrics, **options)
    lines = gzip.decompress(body.body).splitlines(keepends=True)
    nothing = lambda: None  # noqa: E731
    r: dict[str, float] = {"users": n}
    repeat = min(repeat, 3) if n >= 1_000_000 else repeat
    r.update(
        rounds(
            {
                "release": (
                    lambda: warmed["release"].render(walk_after, metrics, **released),
                    warm("release", ReleasedRenderer),
                ),
                "full": (lambda: render(walk_after, metrics, **options), nothing),
                "walk": (
                    lambda: warmed["walk"].render(walk_after, metrics, **options),
                    warm("walk", lambda: Renderer(engine=ISAL)),
                ),
                "ours": (
                    lambda: warmed["ours"].render(snap_after, metrics, **options),
                    warm("ours", lambda: Renderer(engine=ISAL)),
                ),
                "ours_zlib": (
                    lambda: warmed["zlib"].render(snap_after, metrics, **options),
                    warm("zlib", lambda: Renderer(engine=ZLIB)),
                ),
                "no_age": (
                    lambda: warmed["ours"].render(
                        snap_after, metrics, **options, export_session_age=False
                    ),
                    warm("ours", lambda: Renderer(engine=ISAL)),
                ),
                "zlib_floor": (lambda: floor(lines, ZLIB), nothing),
                "isal_floor": (lambda: floor(lines, ISAL), nothing),
            },
            repeat,
        )
    )
    r["body_kib"] = body.size / 1024
    r["zlib_floor_kib"] = len(floor(lines, ZLIB)) / 1024
    lines.clear()
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
            },
            repeat,
        )
    )
    # One run each: seconds at 100,000 users, ~40 s for stock at 1,000,000. The gauge peer's
    # Gauges take ~2 KiB a user (~2 GiB at a million): not beyond 200,000 users.
    r["stock"] = seconds(lambda: stock(snap_after)) if with_stock else float("nan")
    if with_stock and n <= 200_000:
        peer = gauge_peer(snap_after)
        r["gauge"] = seconds(lambda: gzip.compress(generate_latest(peer), 1))  # type: ignore[no-untyped-call]
        del peer
    else:
        r["gauge"] = float("nan")

    warmed.clear()
    r["cache_x"] = cache_over_body(after_rows, rng, metrics, options)
    return r


def cache_over_body(
    rows: dict[str, SessionRow], rng: random.Random, metrics: ExporterMetrics, options: Any
) -> float:
    """What the renderer keeps between scrapes (tracemalloc) over the last body's size,
    after a full render and `_CACHE_SCRAPES` scrapes of 1% churn each: the cached pieces,
    the user-to-chunk index and whatever changes it keeps. The registry's states are built
    first and not counted (in process the renderer shares their ids and timestamps); each
    scrape's snapshot, changes and changed rows are built while counting, as the in-process
    source builds them (fresh rows), and dropped after their render."""
    states = [rows]
    for _ in range(_CACHE_SCRAPES):
        states.append(change_one_percent(states[-1], rng))
    gc.collect()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    renderer = Renderer(engine=ISAL)
    for generation, after in enumerate(states, 1):
        before = states[generation - 2] if generation > 1 else None
        size = renderer.render(scraped(before, after, generation), metrics, **options).size
    gc.collect()  # the bodies and snapshots are gone: what is left is the renderer's
    held = tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()
    return held / size


_CACHE_SCRAPES = 10


def scraped(
    before: dict[str, SessionRow] | None, after: dict[str, SessionRow], generation: int
) -> RegistrySnapshot:
    """The in-process source's snapshot at `generation`, with its changes since the last."""
    taken = replace(
        snapshot(after),
        epoch="bench",
        generation=generation,
        totals=(len(after), sum(r.agent_count for r in after.values())),
    )
    if before is None:
        return taken
    changed = {uid: SessionRow(*row) for uid, row in after.items() if before.get(uid) != row}
    removed = frozenset(before.keys() - after.keys())
    changes = Changes("bench", generation - 1, generation, frozenset(changed), removed)
    return replace(taken, changes=changes, changed_rows=changed)


def levels(n: int) -> None:
    """Each engine and level deflating the chunks of an n-user body, as the renderer does."""
    rng = random.Random(n)
    snap = snapshot(users(n, rng))
    text = gzip.decompress(
        render(
            snap,
            ExporterMetrics("bench"),
            **{"format": OPENMETRICS, "gzipped": True, "max_user_series": 2 * n},
        ).body
    )
    lines = text.splitlines(keepends=True)
    ids = [line.split(b'"')[1].decode() if b'user_id="' in line else "" for line in lines]
    pieces = [b"".join(lines[lo:hi]) for lo, hi in spans(ids)]
    print(
        f"\ndeflate levels over the {len(pieces):,} chunks of a {n:,}-user body "
        f"({len(text) / 2**20:.1f} MiB of text):"
    )
    print(f"{'engine':>7} {'level':>5} {'ms':>7} {'KiB':>7} {'ms/zlib 1':>9} {'size/zlib 1':>11}")
    base: tuple[float, int] | None = None
    for engine, level in ((ZLIB, 1), (ZLIB, 6), (ISAL, 0), (ISAL, 1), (ISAL, 2), (ISAL, 3)):
        at = replace(engine, level=level)
        times = []
        for _ in range(3):
            started = time.perf_counter()
            size = sum(len(deflate_piece(p, at).data) for p in pieces)
            times.append(time.perf_counter() - started)
        elapsed = statistics.median(times)
        base = base or (elapsed, size)
        print(f"{engine.name:>7} {level:>5} {elapsed * 1e3:>7.0f} {size / 1024:>7.0f} "
              f"{elapsed / base[0]:>8.2f}x {size / base[1]:>10.2f}x", flush=True)  # fmt: skip


def cell(value: float, width: int, spec: str, unit: str = "") -> str:
    """`value` and `unit` right-aligned in `width`; a dash for what was not measured (nan)."""
    text = "-" if math.isnan(value) else f"{value:{spec}}{unit}"
    return f"{text:>{width}}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--stock", action="store_true", help="also time prometheus_client's encoder"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    columns = (
        ("users", 9), ("release ms", 10), ("full ms", 8), ("walk ms", 8), ("ours ms", 8),
        ("ours zlib ms", 12),
        ("no age ms", 9), ("zlib floor ms", 13), ("isal floor ms", 13), ("stock ms", 8),
        ("gauge ms", 8), ("cap ms", 6), ("body KiB", 8), ("zlib floor KiB", 14),
        ("cache/body", 10),
    )  # fmt: skip
    print(" ".join(f"{name:>{width}}" for name, width in columns))
    results = []
    for size in sizes:
        started = time.perf_counter()
        r = bench(size, args.repeat, args.stock)
        r["took"] = time.perf_counter() - started
        results.append(r)
        keys = (
            "release", "full", "walk", "ours", "ours_zlib", "no_age", "zlib_floor", "isal_floor",
        )  # fmt: skip
        cells = [f"{r[k] * 1e3:>{w}.0f}" for k, (_, w) in zip(keys, columns[1:9], strict=True)]
        cells += [
            cell(r["stock"] * 1e3, 8, ".0f"),
            cell(r["gauge"] * 1e3, 8, ".0f"),
            f"{r['cap'] * 1e3:>6.1f}",
        ]
        cells += [
            f"{r['body_kib']:>8.0f}",
            f"{r['zlib_floor_kib']:>14.0f}",
            f"{r['cache_x']:>9.2f}x",
        ]
        print(f"{r['users']:>9,.0f} " + " ".join(cells), flush=True)
    print(f"\n{'users':>9} {'ours/zlib floor':>15} {'(CPU time)':>10} {'ours/isal floor':>15} "
          f"{'stock/ours':>10} {'gauge/ours':>10} {'release/ours':>12}")  # fmt: skip
    for r in results:
        print(f"{r['users']:>9,.0f} {r['ours/zlib_floor']:>14.2f}x "
              f"{r['ours/zlib_floor cpu']:>9.2f}x {r['ours/isal_floor']:>14.2f}x "
              f"{cell(r['stock'] / r['ours'], 10, '.1f', 'x')} "
              f"{cell(r['gauge'] / r['ours'], 10, '.1f', 'x')} "
              f"{r['release/ours']:>11.2f}x")  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    took = ", ".join(f"{r['users']:,.0f} users {r['took']:.0f} s" for r in results)
    print(f"\ntook: {took}; peak RSS {peak:.1f} GiB", flush=True)
    levels(sizes[0])


if __name__ == "__main__":
    main()
