"""The snapshot's wire format on the registry socket: a JSON header and packed columns.

Encoding is the backend's whole cost in sidecar mode, so it was chosen by measurement
(`benchmarks/sidecar.py`): at 100,000 users json columns cost about 57% of an in-process
render, these packed columns about 15%; a delta (what changed since the sidecar's last
answer) costs what changed. Layout, all integers little-endian:

    full:  b"ARS1" | header length (uint32) | header (UTF-8 JSON)
           | id lengths in code points (uint32 x n) | ids concatenated (UTF-8)
           | agent counts (int64 x n) | created timestamps (float64 x n)
    delta: the same, with the removed ids' lengths (uint32 x r) after the rows' lengths
           and the removed ids after the rows' ids

A full header's `users` is n; a delta's header says `"snapshot": "delta"` and has `rows`
(n) and `removed` (r) instead, so a decoder that knows only full snapshots refuses it. A
worker older than deltas writes no `snapshot` key and no `epoch`/`generation`: its answer
is full. Ids are length-prefixed, never separated: any str, NUL and newline included,
survives.
"""

from __future__ import annotations

import array
import asyncio
import dataclasses
import itertools
import json
import struct
import sys
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import ValidationError

from ..registry import RegistrySnapshot, SessionColumns, SessionLike, Thresholds, agent_counts

__all__ = [
    "API_VERSION",
    "SNAPSHOT_CONTENT_TYPE",
    "Answer",
    "Delta",
    "Position",
    "SnapshotFormatError",
    "WorkerIdentity",
    "decode_answer",
    "decode_snapshot",
    "encode_delta",
    "encode_snapshot",
    "is_delta",
]

API_VERSION = "v1"
SNAPSHOT_CONTENT_TYPE = "application/vnd.agent-registry.snapshot.v1"
_MAGIC = b"ARS1"
_PREFIX = struct.Struct("<4sI")
_LITTLE = sys.byteorder == "little"
# Users read and packed per step on the backend's loop before it yields: 5,000 keep each
# step near a millisecond (measured: 20,000 stalled the loop two to three times longer).
_STEP = 5_000
# Registry-wide figures a snapshot may carry; None (absent) when the worker has none.
_OPTIONAL = ("cleaned_agents_alive", "cleaned_agents_untracked", "resident_memory_bytes")
# Lone surrogates pass through unchanged: an id that is not valid text still cannot break
# the snapshot (the registry refuses such ids where they enter, see DESIGN.md).
_ERRORS = "surrogatepass"


class SnapshotFormatError(ValueError):
    """The bytes are not a v1 snapshot."""


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """Who serves a registry socket: the worker's name, process and start time."""

    worker: str
    pid: int
    started_at: float

    def as_dict(self) -> dict[str, Any]:
        return {"worker": self.worker, "pid": self.pid, "started_at": self.started_at}


@dataclasses.dataclass(frozen=True, slots=True)
class Position:
    """Where a registry's change log stands: its epoch (one per registry object, so a
    restarted worker has another) and its generation within that epoch."""

    epoch: str
    generation: int


@dataclasses.dataclass(frozen=True, slots=True)
class Delta:
    """What changed in a registry since generation `since`.

    `rows` are the changed sessions as they are now; the first ones changed in place, the
    last `tail` (every session created since, and the changed ones after them) go to the
    end in this order, so the registry's order is kept. `users` and `agents` are the
    registry's totals, to check the result by.
    """

    since: int
    rows: SessionColumns
    tail: int
    removed: Sequence[str]
    users: int
    agents: int


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """A decoded `/v1/snapshot` answer: a full snapshot (`delta` None) or a delta, whose
    snapshot holds the changed rows only. `position` is None from a worker without deltas."""

    identity: WorkerIdentity
    snapshot: RegistrySnapshot
    position: Position | None
    delta: Delta | None


def _packed(typecode: str, values: Sequence[Any] | array.array[Any]) -> bytes:
    packed = array.array(typecode, values)
    if not _LITTLE:
        packed.byteswap()
    return packed.tobytes()


def _unpacked(typecode: str, data: bytes | memoryview) -> array.array[Any]:
    values = array.array(typecode)
    values.frombytes(data)
    if not _LITTLE:
        values.byteswap()
    return values


def _header(
    snapshot: RegistrySnapshot, identity: WorkerIdentity, /, **fields: Any
) -> dict[str, Any]:
    return {
        "api": API_VERSION,
        **identity.as_dict(),
        "taken_at": snapshot.taken_at,
        "thresholds": snapshot.thresholds.model_dump(),
        **{name: getattr(snapshot, name) for name in _OPTIONAL},
        **fields,
    }


def _framed(header: dict[str, Any], pieces: Iterable[bytes]) -> bytes:
    header_bytes = json.dumps(header).encode()
    return b"".join([_PREFIX.pack(_MAGIC, len(header_bytes)), header_bytes, *pieces])


def _position_fields(kind: Literal["full", "delta"], position: Position) -> dict[str, Any]:
    return {"snapshot": kind, "epoch": position.epoch, "generation": position.generation}


async def encode_snapshot(
    snapshot: RegistrySnapshot, identity: WorkerIdentity, position: Position | None = None
) -> bytes:
    """The snapshot as v1 bytes; runs on the backend's loop, yielding every `_STEP` users.

    Each step reads and packs its users completely, so no single step holds the loop for
    more than a few milliseconds; the steps' pieces are joined once at the end. With a
    `position` (read in the same step as the snapshot) the sidecar may ask for deltas.
    """
    sessions = snapshot.sessions
    lengths: list[bytes] = []
    ids: list[bytes] = []
    counts: list[bytes] = []
    created: list[bytes] = []
    for lo in range(0, len(sessions), _STEP):
        if lo:
            await asyncio.sleep(0)
        part: Sequence[SessionLike] = sessions[lo : lo + _STEP]
        user_ids = [s.user_id for s in part]
        lengths.append(_packed("I", list(map(len, user_ids))))
        ids.append("".join(user_ids).encode("utf-8", _ERRORS))
        counts.append(_packed("q", agent_counts(part)))
        created.append(_packed("d", [s.created_timestamp for s in part]))
    fields = {} if position is None else _position_fields("full", position)
    header = _header(snapshot, identity, users=len(sessions), **fields)
    return _framed(header, [*lengths, *ids, *counts, *created])


def encode_delta(
    snapshot: RegistrySnapshot, identity: WorkerIdentity, position: Position, delta: Delta
) -> bytes:
    """A delta as v1 bytes (small: no steps); `snapshot` gives the registry-wide figures."""
    rows = delta.rows
    header = _header(
        snapshot,
        identity,
        **_position_fields("delta", position),
        since=delta.since,
        rows=len(rows),
        tail=delta.tail,
        removed=len(delta.removed),
        totals=[delta.users, delta.agents],
    )
    user_ids = list(rows.user_ids)
    return _framed(
        header,
        [
            _packed("I", [*map(len, user_ids), *map(len, delta.removed)]),
            "".join([*user_ids, *delta.removed]).encode("utf-8", _ERRORS),
            _packed("q", rows.agent_counts),
            _packed("d", rows.created_timestamps),
        ],
    )


def decode_snapshot(
    answer: bytes | bytearray | memoryview,
) -> tuple[WorkerIdentity, RegistrySnapshot]:
    """The worker's identity and its full snapshot; `SnapshotFormatError` says what is wrong
    (a delta included: only `decode_answer` reads those)."""
    decoded = decode_answer(answer)
    if decoded.delta is not None:
        raise SnapshotFormatError("a delta, not a full snapshot")
    return decoded.identity, decoded.snapshot


def is_delta(answer: bytes | bytearray | memoryview) -> bool:
    """Whether `answer` says it is a delta (its header only is read; garbage is not)."""
    try:
        header = json.loads(_header_bytes(memoryview(answer)))
    except ValueError:  # SnapshotFormatError included
        return False
    return isinstance(header, dict) and header.get("snapshot") == "delta"


def _header_bytes(data: memoryview) -> bytes:
    """The header's bytes; nothing is copied from an answer that is no snapshot or whose
    header would end past the answer (garbage streamed up to the bound, say)."""
    if len(data) < _PREFIX.size:
        raise SnapshotFormatError(f"{len(data)} bytes is too short for a snapshot")
    magic, header_len = _PREFIX.unpack_from(data)
    if magic != _MAGIC:
        raise SnapshotFormatError(f"starts with {magic!r}, not {_MAGIC!r}")
    if _PREFIX.size + header_len > len(data):
        raise SnapshotFormatError(f"a header of {header_len} bytes, past the answer's end")
    return bytes(data[_PREFIX.size : _PREFIX.size + header_len])


def decode_answer(answer: bytes | bytearray | memoryview) -> Answer:
    """A full snapshot or a delta; `SnapshotFormatError` says what is wrong.

    Read through a memoryview: no part of the answer is copied before it is decoded.
    """
    data = memoryview(answer)
    header_bytes = _header_bytes(data)
    offset = _PREFIX.size + len(header_bytes)
    try:
        header = json.loads(header_bytes)
        identity = WorkerIdentity(
            worker=str(header["worker"]),
            pid=int(header["pid"]),
            started_at=float(header["started_at"]),
        )
        base, position, n, removed = _read_header(header)
        delta_fields = _delta_fields(header) if removed is not None else None
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise SnapshotFormatError(f"bad header: {type(exc).__name__}: {exc}") from None
    ids, counts, created = _columns(data[offset:], n, removed or 0)
    # Kept as columns: the renderer reads them as they are, no object per user.
    sessions = SessionColumns(ids[:n], counts, created)
    snapshot = dataclasses.replace(base, sessions=sessions)
    delta = None
    if delta_fields is not None:
        since, tail, users, agents = delta_fields
        if not 0 <= tail <= n:
            raise SnapshotFormatError(f"a tail of {tail} rows in a delta of {n}")
        delta = Delta(since, sessions, tail, ids[n:], users, agents)
    return Answer(identity, snapshot, position, delta)


def _read_header(
    header: dict[str, Any],
) -> tuple[RegistrySnapshot, Position | None, int, int | None]:
    """The snapshot's figures (no sessions yet), the position, the rows and, for a delta,
    the removed ids' count. Raises ValueError, KeyError or TypeError on a bad header."""
    kind = header.get("snapshot")
    if kind not in (None, "full", "delta"):
        raise ValueError(f"unknown snapshot kind {kind!r}")
    alive, untracked, resident = (
        None if header.get(name) is None else int(header[name]) for name in _OPTIONAL
    )
    base = RegistrySnapshot(
        taken_at=float(header["taken_at"]),
        thresholds=Thresholds.model_validate(header["thresholds"]),
        sessions=(),
        worker=str(header["worker"]),
        cleaned_agents_alive=alive,
        cleaned_agents_untracked=untracked,
        resident_memory_bytes=resident,
    )
    position = None
    if kind is not None:
        position = Position(_text(header["epoch"]), _count(header["generation"]))
    if kind == "delta":
        return base, position, _count(header["rows"]), _count(header["removed"])
    return base, position, _count(header["users"]), None


def _delta_fields(header: dict[str, Any]) -> tuple[int, int, int, int]:
    users, agents = header["totals"]
    return _count(header["since"]), _count(header["tail"]), _count(users), _count(agents)


def _count(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not text")
    return value


def _columns(
    data: memoryview, n: int, removed: int
) -> tuple[list[str], array.array[int], array.array[float]]:
    """The ids (n rows', then `removed` more), the n counts and the n timestamps."""
    ids_at = 4 * (n + removed)
    if len(data) < ids_at + 16 * n:
        raise SnapshotFormatError(f"header says {n + removed} ids; the body is too short")
    lengths = _unpacked("I", data[:ids_at])
    ids_end = len(data) - 16 * n
    try:
        text = str(data[ids_at:ids_end], "utf-8", _ERRORS)
    except UnicodeDecodeError as exc:
        raise SnapshotFormatError(f"user ids are not UTF-8: {exc}") from None
    ends = list(itertools.accumulate(lengths))
    if (ends[-1] if ends else 0) != len(text) or 0 in lengths:
        raise SnapshotFormatError("user id lengths do not match the ids")
    ids = list(map(text.__getitem__, map(slice, [0, *ends[:-1]], ends)))
    counts = _unpacked("q", data[ids_end : ids_end + 8 * n])
    return ids, counts, _unpacked("d", data[ids_end + 8 * n :])
