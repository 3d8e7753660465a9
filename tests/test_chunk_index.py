"""The user-to-chunk index of the delta cache: a mapping, in a fraction of a dict's memory."""

from __future__ import annotations

import builtins
import gc
import threading
import tracemalloc
import uuid
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_registry_exporter.exporting import chunk_index, pauses
from agent_registry_exporter.exporting.chunk_index import ChunkIndex


class Users:
    """A chunk as the index sees it: its users."""

    def __init__(self, user_ids: list[str]) -> None:
        self.user_ids = user_ids


ids = st.sampled_from([f"u{n}" for n in range(12)] + ["", "u\n1", "\ud800", "é"])
op = st.one_of(
    st.tuples(st.just("set"), ids, st.integers(0, 3)),
    st.tuples(st.just("pop"), ids),
    st.tuples(st.just("get"), ids),
)


def play(start: dict[str, int], ops: list[tuple[object, ...]]) -> None:
    chunks = [Users([]) for _ in range(4)]
    for user_id, n in start.items():
        chunks[n].user_ids.append(user_id)
    index = ChunkIndex(chunks)
    model = {user_id: chunks[n] for user_id, n in start.items()}
    for name, user_id, *rest in ops:
        assert isinstance(user_id, str)
        if name == "set":
            index[user_id] = model[user_id] = chunks[rest[0]]  # type: ignore[index]
        elif name == "pop":
            if user_id in model:
                assert index.pop(user_id) is model.pop(user_id)
            else:
                with pytest.raises(KeyError):
                    index.pop(user_id)
        elif user_id in model:
            assert index[user_id] is model[user_id]
        else:
            with pytest.raises(KeyError):
                index[user_id]
        for chunk in chunks:  # a chunk no user points to any more may be forgotten
            if all(held is not chunk for held in model.values()):
                index.forget(chunk)
        assert len(index) == len(model)
        assert all(index[u] is model[u] for u in model)
        assert all((u in index) == (u in model) for u in ["u0", "u5", "u\n1", "nobody"])


class TestTheIndexIsAMapping:
    @settings(max_examples=200, deadline=None)
    @given(st.dictionaries(ids, st.integers(0, 3)), st.lists(op, max_size=40))
    def test_it_answers_as_a_dict_would(self, start, ops) -> None:
        """Additions, moves, removals, re-additions, forgotten chunks: a dict's answers."""
        play(start, ops)

    @settings(max_examples=200, deadline=None)
    @given(st.dictionaries(ids, st.integers(0, 3)), st.lists(op, max_size=40))
    def test_it_answers_as_a_dict_would_folding_at_every_change(self, start, ops) -> None:
        """The same when pending additions and removals are folded in at once."""
        with mock.patch.object(chunk_index, "_PENDING_MIN", 0):
            play(start, ops)

    @settings(max_examples=200, deadline=None)
    @given(st.dictionaries(ids, st.integers(0, 3)), st.lists(op, max_size=40))
    def test_it_answers_as_a_dict_would_folding_in_the_smallest_slices(self, start, ops) -> None:
        """The same when every fold copies and sorts a user or two at a time."""
        with (
            mock.patch.object(chunk_index, "_PENDING_MIN", 0),
            mock.patch.object(chunk_index, "_SLICE", 2),
            mock.patch.object(chunk_index, "_RUN", 1),
        ):
            play(start, ops)

    @settings(max_examples=200, deadline=None)
    @given(st.dictionaries(ids, st.integers(0, 3)), st.lists(op, max_size=40))
    def test_it_answers_as_a_dict_would_built_in_the_smallest_buckets(self, start, ops) -> None:
        """The same when a first build sorts its ids in buckets of a few, merged by twos."""
        with (
            mock.patch.object(chunk_index, "_SLICE", 2),
            mock.patch.object(chunk_index, "_STEP", 2),
        ):
            play(start, ops)

    def test_a_user_held_twice_is_noticed(self) -> None:
        """Built from chunks naming a user twice (a hostile snapshot), it says so."""
        assert not ChunkIndex([Users(["a", "b"]), Users(["b"])]).unique
        assert ChunkIndex([Users(["a", "b"]), Users(["c"])]).unique
        with mock.patch.object(chunk_index, "_SLICE", 2):  # the twice-held user across slices
            assert not ChunkIndex([Users(["d", "a", "c"]), Users(["e", "b", "c"])]).unique
            assert ChunkIndex([Users(["d", "a", "c"]), Users(["e", "b", "f"])]).unique


class TestTheIndexIsSmall:
    def test_it_costs_at_most_16_bytes_a_user(self) -> None:
        """100,000 UUID users: a dict would take about 38 bytes a user, half the size of
        the compressed body the cache exists for."""
        users = [str(uuid.UUID(int=n * 7919 + 1)) for n in range(100_000)]
        chunks = [Users(users[lo : lo + 64]) for lo in range(0, len(users), 64)]
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            index = ChunkIndex(chunks)
            for user_id in users[::100]:  # a scrape's worth of changes
                index[user_id] = chunks[0]
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert len(index) == len(users)
        assert held <= 16 * len(users)


class TestAFoldPauses:
    def test_a_fold_of_many_users_pauses_between_slices(self, monkeypatch) -> None:
        """Folding the pending users into 40,000 (done in the render thread) lets other
        threads run between slices, not once at the end of a 30-70 ms run of C calls."""
        users = [f"user-{n:06d}" for n in range(40_000)]
        chunks = [Users(users[lo : lo + 64]) for lo in range(0, len(users), 64)]
        index = ChunkIndex(chunks)
        for user_id in users[::7]:
            index.pop(user_id)
        newcomers = Users([f"new-{n:06d}" for n in range(3_000)])
        for user_id in newcomers.user_ids:
            index[user_id] = newcomers
        monkeypatch.setattr(pauses, "PAUSE_SECONDS", 0.0)  # every chance to pause is taken
        taken: list[int] = []

        def fold() -> None:  # a fresh thread, as the render's: its own count of pauses
            index._fold()
            taken.append(pauses.pauses_taken())

        thread = threading.Thread(target=fold)
        thread.start()
        thread.join()
        assert taken[0] >= len(users) // chunk_index._SLICE + len(newcomers.user_ids)
        assert len(index) == len(users) - len(users[::7]) + 3_000
        assert all(index[u] is newcomers for u in newcomers.user_ids[::97])


def many_users(n: int) -> list[Users]:
    users = [str(uuid.UUID(int=i * 7919 + 1)) for i in range(n)]
    return [Users(users[lo : lo + 50]) for lo in range(0, n, 50)]


class TestABuildPauses:
    """A first build sorts its ids in buckets of about `_SLICE` with a pause between: one
    sort of a million ids held the GIL ~580 ms, and the embedding backend's loop with it."""

    def test_no_sort_is_given_more_than_two_slices(self, monkeypatch) -> None:
        sizes: list[int] = []

        def spy(items, **kwargs):  # type: ignore[no-untyped-def]
            items = list(items)
            sizes.append(len(items))
            return builtins.sorted(items, **kwargs)

        monkeypatch.setattr(chunk_index, "_SLICE", 64)
        monkeypatch.setattr(chunk_index, "_RUN", 64)
        monkeypatch.setattr(chunk_index, "sorted", spy, raising=False)
        chunks = many_users(5_000)
        index = ChunkIndex(chunks)
        for n in range(0, 5_000, 3):  # pending additions and removals, folded in
            user_id = chunks[n // 50].user_ids[n % 50]
            index.pop(user_id)
            index[user_id + "-again"] = chunks[0]
        assert sizes
        assert max(sizes) <= 2 * 64
        assert len(index) == 5_000
        kept = [(u, c) for n, (u, c) in enumerate(held(chunks)) if n % 3]
        assert all(index[user_id] is chunk for user_id, chunk in kept)

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.text("abc", max_size=3), max_size=300),
        st.integers(0, 20),
        st.sampled_from([(2, 2), (2, 64), (4, 2), (8, 3), (16, 4)]),
    )
    def test_the_buckets_sort_as_one_sort_would(self, ids, start, sizes) -> None:
        """Sample-sorted, bucketed, merged: the order of a stable sort, equal ids included."""
        piece, step = sizes
        with (
            mock.patch.object(chunk_index, "_SLICE", piece),
            mock.patch.object(chunk_index, "_STEP", step),
        ):
            order = chunk_index._sorted_order(ids, start)
        assert order == builtins.sorted(range(start, len(ids)), key=ids.__getitem__)

    def test_a_build_pauses_at_every_slice(self, monkeypatch) -> None:
        monkeypatch.setattr(pauses, "PAUSE_SECONDS", 0.0)  # every chance to pause is taken
        monkeypatch.setattr(chunk_index, "_SLICE", 64)
        chunks = many_users(5_000)
        taken: list[int] = []

        def build() -> None:  # a fresh thread: its own count of pauses
            ChunkIndex(chunks)
            taken.append(pauses.pauses_taken())

        thread = threading.Thread(target=build)
        thread.start()
        thread.join()
        assert taken[0] >= 3 * 5_000 // 64  # gather, bucket, sort: each slice


def held(chunks: list[Users]) -> list[tuple[str, Users]]:
    return [(user_id, chunk) for chunk in chunks for user_id in chunk.user_ids]
