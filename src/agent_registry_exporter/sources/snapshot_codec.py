"""The snapshot's wire format on the registry socket: a JSON header and packed columns.

Encoding is the backend's whole cost in sidecar mode, so it was chosen by measurement
(`benchmarks/sidecar.py`): at 100,000 users json columns cost about 57% of an in-process
render, these packed columns about 15%. Layout, all integers little-endian:

    b"ARS1" | header length (uint32) | header (UTF-8 JSON)
    | id lengths in code points (uint32 x n) | ids concatenated (UTF-8)
    | agent counts (int64 x n) | created timestamps (float64 x n)

Ids are length-prefixed, never separated: any str, NUL and newline included, survives.
"""

from __future__ import annotations

import array
import asyncio
import itertools
import json
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..registry import RegistrySnapshot, SessionColumns, SessionLike, Thresholds, agent_counts

__all__ = [
    "API_VERSION",
    "SNAPSHOT_CONTENT_TYPE",
    "SnapshotFormatError",
    "WorkerIdentity",
    "decode_snapshot",
    "encode_snapshot",
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


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """Who serves a registry socket: the worker's name, process and start time."""

    worker: str
    pid: int
    started_at: float

    def as_dict(self) -> dict[str, Any]:
        return {"worker": self.worker, "pid": self.pid, "started_at": self.started_at}


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


async def encode_snapshot(snapshot: RegistrySnapshot, identity: WorkerIdentity) -> bytes:
    """The snapshot as v1 bytes; runs on the backend's loop, yielding every `_STEP` users.

    Each step reads and packs its users completely, so no single step holds the loop for
    more than a few milliseconds; the steps' pieces are joined once at the end.
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
    header = {
        "api": API_VERSION,
        **identity.as_dict(),
        "taken_at": snapshot.taken_at,
        "thresholds": snapshot.thresholds.model_dump(),
        "users": len(sessions),
        **{name: getattr(snapshot, name) for name in _OPTIONAL},
    }
    header_bytes = json.dumps(header).encode()
    return b"".join(
        [
            _PREFIX.pack(_MAGIC, len(header_bytes)),
            header_bytes,
            *lengths,
            *ids,
            *counts,
            *created,
        ]
    )


def decode_snapshot(
    answer: bytes | bytearray | memoryview,
) -> tuple[WorkerIdentity, RegistrySnapshot]:
    """The worker's identity and its snapshot; `SnapshotFormatError` says what is wrong.

    Read through a memoryview: no part of the answer is copied before it is decoded.
    """
    data = memoryview(answer)
    if len(data) < _PREFIX.size:
        raise SnapshotFormatError(f"{len(data)} bytes is too short for a snapshot")
    magic, header_len = _PREFIX.unpack_from(data)
    if magic != _MAGIC:
        raise SnapshotFormatError(f"starts with {magic!r}, not {_MAGIC!r}")
    offset = _PREFIX.size + header_len
    try:
        header = json.loads(bytes(data[_PREFIX.size : offset]))
        n = int(header["users"])
        identity = WorkerIdentity(
            worker=str(header["worker"]),
            pid=int(header["pid"]),
            started_at=float(header["started_at"]),
        )
        thresholds = Thresholds.model_validate(header["thresholds"])
        taken_at = float(header["taken_at"])
        alive, untracked, resident = (
            None if header.get(name) is None else int(header[name]) for name in _OPTIONAL
        )
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise SnapshotFormatError(f"bad header: {type(exc).__name__}: {exc}") from None
    if n < 0 or len(data) - offset < 20 * n:
        raise SnapshotFormatError(f"header says {n} users; the body is too short")
    lengths = _unpacked("I", data[offset : offset + 4 * n])
    ids_end = len(data) - 16 * n
    try:
        text = str(data[offset + 4 * n : ids_end], "utf-8", _ERRORS)
    except UnicodeDecodeError as exc:
        raise SnapshotFormatError(f"user ids are not UTF-8: {exc}") from None
    ends = list(itertools.accumulate(lengths))
    if (ends[-1] if ends else 0) != len(text) or 0 in lengths:
        raise SnapshotFormatError("user id lengths do not match the ids")
    # Kept as columns: the renderer reads them as they are, no object per user.
    sessions = SessionColumns(
        user_ids=list(map(text.__getitem__, map(slice, [0, *ends[:-1]], ends))),
        agent_counts=_unpacked("q", data[ids_end : ids_end + 8 * n]),
        created_timestamps=_unpacked("d", data[ids_end + 8 * n :]),
    )
    return identity, RegistrySnapshot(
        taken_at=taken_at,
        thresholds=thresholds,
        sessions=sessions,
        worker=identity.worker,
        cleaned_agents_alive=alive,
        cleaned_agents_untracked=untracked,
        resident_memory_bytes=resident,
    )
