"""Snapshot deltas: whatever the history, the sidecar's columns are the worker's registry."""

from __future__ import annotations

from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_registry_exporter import RegistrySnapshot, SessionRow, Thresholds
from agent_registry_exporter.registry import SessionColumns
from agent_registry_exporter.sources.snapshot_codec import (
    Position,
    WorkerIdentity,
    decode_answer,
    encode_delta,
)
from agent_registry_exporter.sources.snapshot_delta import DeltaMismatch, apply_delta, cut_delta

IDENTITY = WorkerIdentity("w0", 1, 2.0)


def columns_of(rows: list[SessionRow]) -> SessionColumns:
    return SessionColumns(
        [r.user_id for r in rows],
        array("q", [r.agent_count for r in rows]),
        array("d", [r.created_timestamp for r in rows]),
    )


class Worker:
    """A registry in miniature: sessions in creation order and what changed since a scrape,
    as the registry's change log reports it (changed: present now; removed: gone now)."""

    def __init__(self) -> None:
        self.rows: dict[str, SessionRow] = {}
        self.changed: set[str] = set()
        self.removed: set[str] = set()

    def put(self, row: SessionRow, *, recreate: bool = False) -> None:
        if recreate:
            del self.rows[row.user_id]  # a fresh session goes to the end
        self.rows[row.user_id] = row
        self.changed.add(row.user_id)
        self.removed.discard(row.user_id)

    def remove(self, user_id: str) -> None:
        del self.rows[user_id]
        self.changed.discard(user_id)
        self.removed.add(user_id)

    def delta_bytes(self) -> bytes:
        """What the socket sends: cut, encoded; the change log restarts from here."""
        rows = list(self.rows.values())
        delta = cut_delta(
            rows,
            self.rows.get,
            since=1,
            changed=frozenset(self.changed),
            removed=frozenset(self.removed),
            totals=(len(rows), sum(r.agent_count for r in rows)),
        )
        self.changed, self.removed = set(), set()
        snapshot = RegistrySnapshot(taken_at=1.0, thresholds=Thresholds(), sessions=())
        return encode_delta(snapshot, IDENTITY, Position("e", 2), delta)


ids = st.sampled_from([f"u{n}" for n in range(12)] + ["né\nw", "\x00"])
step = st.one_of(
    st.tuples(st.just("add"), ids, st.integers(0, 60), st.floats(0, 1e9)),
    st.tuples(st.just("count"), st.integers(0, 100), st.integers(0, 60)),
    st.tuples(st.just("remove"), st.integers(0, 100)),
    st.tuples(st.just("recreate"), st.integers(0, 100), st.floats(0, 1e9)),
    st.tuples(st.just("scrape")),
    st.tuples(st.just("restart")),
)


class TestAnyHistory:
    @settings(max_examples=400, deadline=None)
    @given(st.lists(step, max_size=40))
    def test_delta_applied_columns_are_the_full_snapshots_columns(self, steps) -> None:
        """Adds, count changes, removals, re-created sessions (moved to the end), scrapes and
        sidecar restarts: after every scrape the columns are the registry's, in its order,
        and the columns handed out before are never changed."""
        worker = Worker()
        held = columns_of([])
        handed_out: list[tuple[SessionColumns, list[SessionRow]]] = []
        for op, *args in [*steps, ("scrape",)]:
            keys = list(worker.rows)
            if op == "add" and args[0] not in worker.rows:
                worker.put(SessionRow(args[0], args[1], args[2]))
            elif op == "count" and keys:
                user = keys[args[0] % len(keys)]
                worker.put(worker.rows[user]._replace(agent_count=args[1]))
            elif op == "remove" and keys:
                worker.remove(keys[args[0] % len(keys)])
            elif op == "recreate" and keys:
                user = keys[args[0] % len(keys)]
                worker.put(SessionRow(user, 1, args[1]), recreate=True)
            elif op == "restart":  # the sidecar lost its columns: a full snapshot, log reset
                held = columns_of(list(worker.rows.values()))
                worker.changed, worker.removed = set(), set()
            elif op == "scrape":
                answer = decode_answer(worker.delta_bytes())
                assert answer.delta is not None
                held = apply_delta(held, answer.delta)
                assert list(held) == list(worker.rows.values())
                handed_out.append((held, list(held)))
        for columns, rows in handed_out:
            assert list(columns) == rows


class TestMismatch:
    def test_totals_that_disagree_are_a_mismatch(self) -> None:
        """Columns that are not the worker's (a lost delta, a bug): never rendered."""
        worker = Worker()
        worker.put(SessionRow("u1", 2, 1.0))
        answer = decode_answer(worker.delta_bytes())
        assert answer.delta is not None
        stale = columns_of([SessionRow("u0", 5, 0.5)])
        with pytest.raises(DeltaMismatch, match="2 users with 7 agents, the worker has 1 with 2"):
            apply_delta(stale, answer.delta)

    def test_a_changed_row_the_columns_lack_is_a_mismatch(self) -> None:
        """An in-place change of a session the sidecar never saw: its place is unknown."""
        worker = Worker()
        worker.put(SessionRow("u1", 2, 1.0))
        worker.put(SessionRow("u2", 2, 1.0))
        worker.delta_bytes()
        worker.put(worker.rows["u1"]._replace(agent_count=3))
        answer = decode_answer(worker.delta_bytes())
        assert answer.delta is not None
        with pytest.raises(DeltaMismatch, match="1 changed rows are not in the columns"):
            apply_delta(columns_of([SessionRow("u2", 2, 1.0)]), answer.delta)

    def test_a_cut_names_a_session_found_gone_as_removed(self) -> None:
        """A changed id whose session cannot be found is sent as removed, never as a row."""
        rows = [SessionRow("u1", 1, 1.0), SessionRow("u2", 1, 1.0)]
        delta = cut_delta(
            rows, {"u1": rows[0]}.get, since=0, changed={"u1", "ghost"}, removed=(), totals=(2, 2)
        )
        assert list(delta.removed) == ["ghost"]
        assert list(delta.rows) == [rows[0]]  # not at the end: changed in place
        assert delta.tail == 0
