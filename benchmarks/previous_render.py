"""The full render as shipped before incremental rendering (commit 4f2c61b), kept as a baseline.

Same text as today's renderer; the differences measured are the caching, gzip members,
streaming and the series-cap selection (here: heapq.nlargest with a Python key).
"""

from __future__ import annotations

import heapq
import zlib

from prometheus_client.openmetrics.exposition import generate_latest

from agent_registry_exporter.exporting import ExporterMetrics
from agent_registry_exporter.registry import RegistrySnapshot

_CHUNK = 5_000


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def previous_select(snapshot: RegistrySnapshot, counts: list[int], keep: int) -> list[int]:
    """The series-cap selection as shipped before: heapq.nlargest with a Python key."""
    sessions, limits, now = snapshot.sessions, snapshot.thresholds, snapshot.taken_at

    def pressure(i: int) -> float:
        return max(
            counts[i] / limits.agents_per_user,
            (now - sessions[i].created_timestamp) / limits.session_age_seconds,
        )

    return sorted(heapq.nlargest(keep, range(len(sessions)), key=pressure))


def previous_render(
    snapshot: RegistrySnapshot, metrics: ExporterMetrics, max_user_series: int = 10**9
) -> bytes:
    sessions = snapshot.sessions
    counts = [s.agent_count for s in sessions]
    chosen: range | list[int] = range(len(sessions))
    if len(sessions) > max_user_series:
        chosen = previous_select(snapshot, counts, max_user_series)
    now = snapshot.taken_at
    labels = [_escape(sessions[i].user_id) for i in chosen]
    created = [sessions[i].created_timestamp for i in chosen]
    chosen_counts = [counts[i] for i in chosen]
    chunks: list[bytes] = []
    for family, values, spec in (
        ("agent_registry_user_agents", chosen_counts, "d"),
        ("agent_registry_user_session_age_seconds", [now - ts for ts in created], ".3f"),
        ("agent_registry_user_session_created_timestamp_seconds", created, ".3f"),
    ):
        chunks.append(f"# HELP {family} x\n# TYPE {family} gauge\n".encode())
        for lo in range(0, len(labels), _CHUNK):
            pairs = zip(labels[lo : lo + _CHUNK], values[lo : lo + _CHUNK], strict=True)
            chunks.append(
                "".join(
                    [f'{family}{{user_id="{label}"}} {v:{spec}}\n' for label, v in pairs]
                ).encode()
            )
    chunks.append(f"agent_registry_agents {sum(counts)}\n".encode())
    chunks.append(generate_latest(metrics.registry))  # type: ignore[no-untyped-call]
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    out = [compressor.compress(chunk) for chunk in chunks]
    out.append(compressor.flush())
    return b"".join(out)
