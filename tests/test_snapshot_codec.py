"""The snapshot wire format: any id survives, garbage is refused with a reason."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_registry_exporter import RegistrySnapshot, SessionRow, Thresholds
from agent_registry_exporter.sources import WorkerIdentity, decode_snapshot, encode_snapshot
from agent_registry_exporter.sources.snapshot_codec import SnapshotFormatError

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
