"""The snapshot wire format: any id survives, garbage is refused with a reason."""

from __future__ import annotations

import asyncio
import json
import struct
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_registry_exporter import RegistrySnapshot, SessionRow, Thresholds
from agent_registry_exporter.registry import SessionColumns
from agent_registry_exporter.sources import WorkerIdentity, decode_snapshot, encode_snapshot
from agent_registry_exporter.sources.snapshot_codec import (
    Delta,
    Position,
    SnapshotFormatError,
    decode_answer,
    encode_delta,
    is_delta,
)

from .released_snapshot_decoder import released_decode

IDENTITY = WorkerIdentity(worker="w1", pid=4242, started_at=1_795_000_000.5)


def encode(rows: list[SessionRow], thresholds: Thresholds | None = None) -> bytes:
    snapshot = RegistrySnapshot(
        taken_at=1_795_780_800.25, thresholds=thresholds or Thresholds(), sessions=rows
    )
    return asyncio.run(encode_snapshot(snapshot, IDENTITY))


class TestRoundTrip:
    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.text(min_size=1, max_size=40),
                st.integers(min_value=0, max_value=2**40),
                st.floats(min_value=0, max_value=4e9, allow_nan=False),
            ),
            max_size=40,
        )
    )
    def test_any_text_id_count_and_timestamp_survive(self, rows) -> None:
        """Ids with NUL, newlines, surrogates or emoji; large counts; exact float timestamps."""
        sessions = [SessionRow(*row) for row in rows]
        identity, snapshot = decode_snapshot(encode(sessions))
        assert identity == IDENTITY
        assert list(snapshot.sessions) == sessions
        assert snapshot.worker == "w1"
        assert snapshot.taken_at == 1_795_780_800.25

    def test_thresholds_travel_with_the_sessions(self) -> None:
        """The worker's own limits, not the sidecar's defaults."""
        limits = Thresholds(agents_per_user=7, session_age_seconds=60, total_agents=99)
        _, snapshot = decode_snapshot(encode([], limits))
        assert snapshot.thresholds == limits

    @pytest.mark.parametrize("figures", [(0, 3, 123_456_789), (None, None, None), (2, None, 7)])
    def test_registry_wide_figures_travel_or_stay_absent(self, figures) -> None:
        """Cleaned-alive, untracked and resident memory come through; absent stays None."""
        alive, untracked, resident = figures
        snapshot = RegistrySnapshot(
            taken_at=1.0,
            thresholds=Thresholds(),
            sessions=[],
            cleaned_agents_alive=alive,
            cleaned_agents_untracked=untracked,
            resident_memory_bytes=resident,
        )
        _, got = decode_snapshot(asyncio.run(encode_snapshot(snapshot, IDENTITY)))
        assert (
            got.cleaned_agents_alive,
            got.cleaned_agents_untracked,
            got.resident_memory_bytes,
        ) == figures

    def test_more_users_than_one_encoding_step(self) -> None:
        """45,000 users span several steps of the backend's encoder and come back in order."""
        rows = [SessionRow(f"user-{n}", n % 60, 1.7e9 + n) for n in range(45_000)]
        _, snapshot = decode_snapshot(encode(rows))
        assert list(snapshot.sessions) == rows


class TestGarbage:
    @pytest.mark.parametrize(
        ("data", "problem"),
        [
            (b"", "too short"),
            (b"<html>hello</html>", "not b'ARS1'"),
            (struct.pack("<4sI", b"ARS1", 5) + b"{nope", "bad header"),
            (struct.pack("<4sI", b"ARS1", 2) + b"{}", "bad header"),
        ],
    )
    def test_not_a_snapshot(self, data, problem) -> None:
        """Something else on the socket: a one-line reason."""
        with pytest.raises(SnapshotFormatError, match=problem):
            decode_snapshot(data)

    @pytest.mark.parametrize(
        "prefix", [b"AAAA", b"ARS1\xff\xff\xff\x7f"], ids=["not a snapshot", "header past end"]
    )
    def test_a_big_garbage_answer_is_no_delta_and_is_never_copied(self, prefix) -> None:
        """A socket answering garbage: telling whether it is a delta reads no more than the
        prefix (the header was copied and parsed first, whatever its magic or length: three
        times a 200 MiB flood's size in the sidecar), and decoding refuses it the same way."""
        answer = bytearray(prefix) + bytearray(b"A" * (8 << 20))
        tracemalloc.start()
        try:
            delta = is_delta(answer)
            with pytest.raises(SnapshotFormatError):
                decode_answer(answer)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert delta is False
        assert peak < 1 << 20

    @pytest.mark.parametrize("limit", [float("inf"), float("nan"), -1.0])
    def test_an_age_limit_of_no_seconds_is_refused(self, limit) -> None:
        """A hostile worker's header with an infinite (JSON's Infinity, which json reads) or
        NaN session age limit: refused like any bad header, not rendered as a second +Inf
        bucket spelt le="inf"."""
        data = encode([SessionRow("u1", 3, 1.0)])
        with pytest.raises(SnapshotFormatError, match="session_age_seconds"):
            decode_snapshot(with_header(data, thresholds={"session_age_seconds": limit}))

    def test_truncated_snapshot_is_refused(self) -> None:
        """A body cut short never decodes into fewer users."""
        data = encode([SessionRow("u1", 3, 1.0), SessionRow("u2", 4, 2.0)])
        for cut in (1, 8, 17, len(data) // 2):
            with pytest.raises(SnapshotFormatError):
                decode_snapshot(data[:-cut])

    def test_lengths_that_disagree_with_the_ids_are_refused(self) -> None:
        """An id length pointing past the ids is caught, not silently misaligned."""
        data = bytearray(encode([SessionRow("u1", 3, 1.0), SessionRow("u2", 4, 2.0)]))
        header_len = struct.unpack_from("<I", data, 4)[0]
        struct.pack_into("<I", data, 8 + header_len, 3)
        with pytest.raises(SnapshotFormatError, match="lengths do not match"):
            decode_snapshot(bytes(data))


POSITION = Position(epoch="3f2a9c", generation=41)
DATA = Path(__file__).parent / "data" / "snapshots"


def delta_of(rows: list[SessionRow], *, tail: int = 0, removed: list[str] | None = None) -> Delta:
    ids, counts, created = zip(*rows, strict=True) if rows else ((), (), ())
    columns = SessionColumns(list(ids), list(counts), list(created))
    return Delta(since=40, rows=columns, tail=tail, removed=removed or [], users=7, agents=70)


def encode_a_delta(delta: Delta) -> bytes:
    snapshot = RegistrySnapshot(
        taken_at=1_795_780_815.0, thresholds=Thresholds(total_agents=9), sessions=()
    )
    return encode_delta(snapshot, IDENTITY, POSITION, delta)


class TestDeltas:
    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.text(min_size=1, max_size=12),
                st.integers(min_value=0, max_value=2**40),
                st.floats(min_value=0, max_value=4e9, allow_nan=False),
            ),
            max_size=12,
        ),
        st.lists(st.text(min_size=1, max_size=12), max_size=12),
        st.integers(min_value=0, max_value=12),
    )
    def test_changed_rows_removed_ids_and_totals_survive(self, rows, removed, tail) -> None:
        """Any ids, in the rows or removed; the tail, totals, since and position exact."""
        sessions = [SessionRow(*row) for row in rows]
        tail = min(tail, len(sessions))
        answer = decode_answer(encode_a_delta(delta_of(sessions, tail=tail, removed=removed)))
        assert answer.identity == IDENTITY
        assert answer.position == POSITION
        assert answer.delta is not None
        assert list(answer.delta.rows) == sessions
        assert list(answer.snapshot.sessions) == sessions
        assert list(answer.delta.removed) == removed
        assert (answer.delta.since, answer.delta.tail) == (40, tail)
        assert (answer.delta.users, answer.delta.agents) == (7, 70)
        assert answer.snapshot.thresholds == Thresholds(total_agents=9)
        assert answer.snapshot.taken_at == 1_795_780_815.0

    def test_a_full_snapshot_says_so_and_where_the_registry_stands(self) -> None:
        """With a position the answer is marked full, and carries epoch and generation."""
        rows = [SessionRow("u1", 3, 1.0)]
        snapshot = RegistrySnapshot(taken_at=1.0, thresholds=Thresholds(), sessions=rows)
        data = asyncio.run(encode_snapshot(snapshot, IDENTITY, POSITION))
        answer = decode_answer(data)
        assert answer.delta is None
        assert answer.position == POSITION
        assert list(answer.snapshot.sessions) == rows
        assert b'"snapshot": "full"' in data

    def test_a_released_workers_answer_is_a_full_snapshot_without_a_position(self) -> None:
        """Bytes a 0.1 worker wrote (frozen): no delta marker, so full; no generation, so
        the sidecar's next request asks for no delta."""
        answer = decode_answer((DATA / "released-worker-full.bin").read_bytes())
        assert answer.delta is None
        assert answer.position is None
        assert [s.user_id for s in answer.snapshot.sessions] == ["u1", "héllo 🦜", "nul\x00byte"]
        assert answer.identity.worker == "w0"

    def test_a_decoder_of_full_snapshots_only_refuses_a_delta(self) -> None:
        """A delta read as a full snapshot would drop every unchanged user: refused."""
        data = encode_a_delta(delta_of([SessionRow("u1", 3, 1.0)]))
        with pytest.raises(SnapshotFormatError, match="a delta"):
            decode_snapshot(data)
        with pytest.raises(KeyError, match="users"):
            released_decode(data)  # what a 0.1 sidecar does with it: no rows taken


def with_header(data: bytes, **changes: object) -> bytes:
    header_len = struct.unpack_from("<I", data, 4)[0]
    header = json.loads(data[8 : 8 + header_len])
    header.update(changes)
    new = json.dumps(header).encode()
    return struct.pack("<4sI", b"ARS1", len(new)) + new + data[8 + header_len :]


class TestDeltaGarbage:
    @pytest.mark.parametrize(
        ("changes", "problem"),
        [
            ({"snapshot": "partial"}, "unknown snapshot kind"),
            ({"tail": 5}, "a tail of 5 rows"),
            ({"rows": -1}, "not a count"),
            ({"removed": "2"}, "not a count"),
            ({"generation": 1.5}, "not a count"),
            ({"epoch": 7}, "not text"),
            ({"totals": [1]}, "bad header"),
            ({"removed": 40}, "too short"),
        ],
    )
    def test_a_hostile_delta_header_is_refused(self, changes, problem) -> None:
        """Each field checked: never a misaligned or partly applied delta."""
        data = encode_a_delta(delta_of([SessionRow("u1", 3, 1.0)], tail=1, removed=["gone"]))
        with pytest.raises(SnapshotFormatError, match=problem):
            decode_answer(with_header(data, **changes))

    def test_truncated_delta_is_refused(self) -> None:
        """Cut anywhere, a delta never decodes into fewer rows or removals."""
        data = encode_a_delta(
            delta_of([SessionRow("u1", 3, 1.0), SessionRow("u2", 4, 2.0)], removed=["x"])
        )
        for cut in (1, 8, 17, len(data) // 2):
            with pytest.raises(SnapshotFormatError):
                decode_answer(data[:-cut])
