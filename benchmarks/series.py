"""How many series a scrape exports when 1% of users are notable: user_series_min_pressure.

Builds a real `AgentRegistry` of `--users` users, 1% of them notable (pressure at least
0.5: half near a threshold, at 50-100% of it, half over it; by agents or by age alike), the
rest well under both (1-10 agents, sessions up to 10 hours old; the limits are 50 agents and
24 hours). Renders one OpenMetrics scrape with `user_series_min_pressure=0.5` (what the
Kubernetes patch sets), and the same registry with the setting off, under the default
`max_user_series` and uncapped (like for like with the stock path, which exports every
user); parses each body with prometheus_client's OpenMetrics parser and counts its series
(samples) by kind: per user, the two histograms, the rest (totals, thresholds, the
exporter's own).

Target (issue 21): with 0.5, at most 3x the notable users' series plus the two histograms
and the totals, i.e. (series - histograms - rest) / the notable users' series <= 3.

    .venv/bin/python benchmarks/series.py [--users 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import uuid

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from agent_registry_exporter import AgentRegistry, RegistrySnapshot, Thresholds
from agent_registry_exporter.exporting import OPENMETRICS, ExporterMetrics, Renderer
from agent_registry_exporter.exporting.catalogue import (
    SESSION_AGE,
    SESSION_AGENTS,
    USER_AGENTS,
    USER_SESSION_AGE,
    USER_SESSION_CREATED,
)

USER_FAMILIES = tuple(f.name for f in (USER_AGENTS, USER_SESSION_AGE, USER_SESSION_CREATED))
HISTOGRAMS = (SESSION_AGENTS.name, SESSION_AGE.name)
MIN_PRESSURE = 0.5
NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def population(users: int, rng: random.Random) -> list[tuple[str, int, float]]:
    """(id, agents, age in seconds) per user, oldest session first (creation order)."""
    limits = Thresholds()
    rows = []
    for n in range(users):
        agents, age = rng.randint(1, 10), rng.random() * 10 * 3600
        if n % 100 == 0:  # notable: near (50-100% of a limit) or over (100-160%)
            pressure = rng.uniform(0.5, 1.0) if n % 200 == 0 else rng.uniform(1.0, 1.6)
            if rng.random() < 0.5:
                agents = max(agents, int(pressure * limits.agents_per_user + 0.999))
            else:
                age = pressure * limits.session_age_seconds
        rows.append((str(uuid.UUID(int=rng.getrandbits(128))), agents, age))
    rows.sort(key=lambda row: -row[2])
    return rows


async def build(rows: list[tuple[str, int, float]]) -> AgentRegistry:
    clock = Clock()
    registry = AgentRegistry(clock=clock)
    agent = object()
    for user_id, agents, age in rows:
        clock.now = NOW - age
        for n in range(agents):
            await registry.register_user_agent(user_id, f"agent-{n}", agent)
    clock.now = NOW
    return registry


def notable(snapshot: RegistrySnapshot) -> set[str]:
    """The users at `MIN_PRESSURE` or more of either limit, computed here on their own."""
    limits = snapshot.thresholds
    return {
        s.user_id
        for s in snapshot.sessions
        if max(
            s.agent_count / limits.agents_per_user,
            (snapshot.taken_at - s.created_timestamp) / limits.session_age_seconds,
        )
        >= MIN_PRESSURE
    }


def counted(body: bytes) -> tuple[dict[str, int], set[str]]:
    """Series by kind in an OpenMetrics body, and the user ids of the per-user series."""
    counts = {"user": 0, "histograms": 0, "rest": 0}
    ids: set[str] = set()
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if family.name in USER_FAMILIES:
                counts["user"] += 1
                ids.add(sample.labels["user_id"])
            elif family.name in HISTOGRAMS:
                counts["histograms"] += 1
            else:
                counts["rest"] += 1
    return counts, ids


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    args = parser.parse_args()
    registry = await build(population(args.users, random.Random(args.users)))
    snapshot = registry.snapshot()
    wanted = notable(snapshot)
    wanted_series = len(wanted) * len(USER_FAMILIES)
    print(
        f"{args.users:,} users, {len(wanted):,} notable (pressure >= {MIN_PRESSURE}): "
        f"{wanted_series:,} notable users' series ({len(USER_FAMILIES)} per user)"
    )
    print(
        f"{'user_series_min_pressure':>24} {'max_user_series':>15} {'series':>8} {'per user':>8} "
        f"{'histograms':>10} {'rest':>5} {'not notable':>11} {'per user/notable':>16}"
    )
    for pressure, cap in ((MIN_PRESSURE, 10_000), (0.0, 10_000), (0.0, 2 * args.users)):
        body = Renderer().render(
            snapshot,
            ExporterMetrics("bench"),
            format=OPENMETRICS,
            max_user_series=cap,
            user_series_min_pressure=pressure,
        )
        counts, ids = counted(body.body)
        ratio = counts["user"] / wanted_series
        print(
            f"{pressure:>24} {cap:>15,} {sum(counts.values()):>8,} {counts['user']:>8,} "
            f"{counts['histograms']:>10,} {counts['rest']:>5,} {len(ids - wanted):>11,} "
            f"{ratio:>15.2f}x",
            flush=True,
        )
    print(f"target: per user/notable at most 3x with {MIN_PRESSURE}")


if __name__ == "__main__":
    asyncio.run(main())
