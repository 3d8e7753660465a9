"""A render lets other threads run between its pieces: the embedding backend's event loop
is not held off for a whole GIL switch interval at each of its ticks."""

from __future__ import annotations

import threading

import pytest

from agent_registry_exporter import AgentRegistry, RegistrySnapshot, SessionRow, Thresholds
from agent_registry_exporter.exporting import OPENMETRICS, TEXT, ExporterMetrics, Renderer, pauses
from agent_registry_exporter.exporting.chunks import spans
from agent_registry_exporter.sources import InProcessSource

from .conftest import T0

USERS = 64 * 20  # twenty chunks of the default size, on average


USER_IDS = [f"user-{i:05d}" for i in range(USERS)]  # sorted, as the renderer orders them


def pauses_in_a_render(**options: object) -> int:
    """Pauses the render thread took for one render of USERS users (every pause taken)."""
    rows = [SessionRow(user_id, 1 + i % 3, T0 - i) for i, user_id in enumerate(USER_IDS)]
    snapshot = RegistrySnapshot(taken_at=T0, thresholds=Thresholds(), sessions=rows)
    taken: list[int] = []

    def run() -> None:  # a fresh thread, as asyncio.to_thread renders: its own count
        Renderer().render(snapshot, ExporterMetrics("1"), max_user_series=USERS, **options)
        taken.append(pauses.pauses_taken())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return taken[0]


@pytest.mark.parametrize(
    "options",
    [
        {"format": OPENMETRICS, "gzipped": True},
        {"format": TEXT, "gzipped": True},
        {"format": TEXT, "gzipped": False},
    ],
    ids=["openmetrics-gzip", "text-gzip", "text-plain"],
)
def test_a_render_pauses_between_every_chunk_of_every_family(monkeypatch, options) -> None:
    monkeypatch.setattr(pauses, "PAUSE_SECONDS", 0.0)  # every chance to pause is taken
    # Chunk ends are content-defined by the ids' str hashes, which change with the hash seed:
    # about twenty chunks, counted here (CI once drew 53 pauses against a fixed guess of 60).
    chunks = len(list(spans(USER_IDS)))
    assert pauses_in_a_render(**options) >= 3 * chunks  # agents, age, created: each chunk


def test_pauses_are_taken_no_more_often_than_the_interval(monkeypatch) -> None:
    monkeypatch.setattr(pauses, "PAUSE_SECONDS", 3600.0)  # never twice in a test's time
    assert pauses_in_a_render(format=OPENMETRICS, gzipped=True) <= 1


async def test_a_delta_render_pauses_for_every_changed_user_it_checks_and_takes_in(
    monkeypatch,
) -> None:
    """Before a delta moves anything, every changed user is looked up in the cache (a check
    that alone held the GIL ~2 ms for 1,000 users at 100,000): it pauses there too, not
    only while it takes the changes in."""
    registry = AgentRegistry()
    for user_id in USER_IDS:
        await registry.register_user_agent(user_id, "a0", object())
    source, renderer = InProcessSource(registry), Renderer()
    options = {"format": OPENMETRICS, "gzipped": True, "max_user_series": USERS}
    renderer.render(await source.snapshot(), ExporterMetrics("1"), **options)
    changed = USER_IDS[: USERS // 2]  # in place: many more than the body's pieces
    for user_id in changed:
        await registry.register_user_agent(user_id, "a1", object())
    snapshot = await source.snapshot()
    assert snapshot.changes is not None
    assert snapshot.changes.changed == set(changed)
    monkeypatch.setattr(pauses, "PAUSE_SECONDS", 0.0)
    taken: list[int] = []

    def run() -> None:
        renderer.render(snapshot, ExporterMetrics("1"), **options)
        taken.append(pauses.pauses_taken())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert renderer._deflated.by_worker[None].delta is not None  # it took the changes
    assert taken[0] >= 2 * len(changed)
