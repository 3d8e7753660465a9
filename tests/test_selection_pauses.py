"""Choosing the capped users goes a slice at a time, with pauses between: with the default
cap and 1,000,000 users every scrape chooses, and one sort of every creation time held the
GIL 35-70 ms (the embedding backend's loop with it)."""

from __future__ import annotations

import random
import threading
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_registry_exporter import Thresholds
from agent_registry_exporter.exporting import pauses, selection
from agent_registry_exporter.exporting.selection import select_indexes

from .conftest import T0
from .test_render_cache import by_sorting_everyone

USERS = 40_000


def population(in_creation_order: bool) -> tuple[list[int], list[float]]:
    rng = random.Random(5)
    ages = [rng.random() * 80_000 for _ in range(USERS)]
    if in_creation_order:
        ages.sort(reverse=True)
    counts = [rng.randint(0, 60) for _ in ages]
    return counts, [T0 - age for age in ages]


@pytest.mark.parametrize("in_creation_order", [True, False], ids=["in-order", "shuffled"])
@pytest.mark.parametrize("min_pressure", [0.0, 0.5])
def test_choosing_pauses_at_every_slice(monkeypatch, in_creation_order, min_pressure) -> None:
    monkeypatch.setattr(pauses, "PAUSE_SECONDS", 0.0)  # every chance to pause is taken
    counts, created = population(in_creation_order)
    taken: list[int] = []
    chosen: list[list[int]] = []

    def choose() -> None:  # a fresh thread, as the render's: its own count of pauses
        chosen.append(select_indexes(counts, created, T0, Thresholds(), 1000, min_pressure))
        taken.append(pauses.pauses_taken())

    thread = threading.Thread(target=choose)
    thread.start()
    thread.join()
    assert taken[0] >= USERS // selection._SLICE
    assert chosen[0] == by_sorting_everyone(counts, created, 1000, None, min_pressure)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 120), st.sampled_from([0.0, 3600.0]) | st.floats(0, 300_000)),
        max_size=60,
    ),
    st.integers(1, 70),
    st.booleans(),
    st.sampled_from([0.0, 0.5]),
)
def test_in_the_smallest_slices_the_choice_is_the_same(
    users, keep, in_creation_order, min_pressure
) -> None:
    """Slices of 2: the top by pressure, ties by position, as sorting every user gives."""
    if in_creation_order:
        users = sorted(users, key=lambda u: -u[1])
    counts = [c for c, _ in users]
    created = [T0 - age for _, age in users]
    limits = Thresholds(agents_per_user=10)
    with mock.patch.object(selection, "_SLICE", 2):
        chosen = select_indexes(counts, created, T0, limits, keep, min_pressure)
    assert chosen == by_sorting_everyone(counts, created, keep, limits, min_pressure)
