"""The released (0.1) sidecar's snapshot decoder, frozen: what an old sidecar reads.

A rolling upgrade runs new workers beside old sidecars: a worker's answer to a request
without `since` must still decode here, byte for byte the format it always was.
"""

from __future__ import annotations

import array
import itertools
import json
import struct

_PREFIX = struct.Struct("<4sI")


def released_decode(answer: bytes) -> tuple[str, list[tuple[str, int, float]]]:
    """The worker name and the rows, as the 0.1 sidecar decoded them (little-endian host)."""
    data = memoryview(answer)
    magic, header_len = _PREFIX.unpack_from(data)
    assert magic == b"ARS1"
    offset = _PREFIX.size + header_len
    header = json.loads(bytes(data[_PREFIX.size : offset]))
    n = int(header["users"])
    assert len(data) - offset >= 20 * n
    lengths = array.array("I", bytes(data[offset : offset + 4 * n]))
    ids_end = len(data) - 16 * n
    text = str(data[offset + 4 * n : ids_end], "utf-8", "surrogatepass")
    ends = list(itertools.accumulate(lengths))
    assert (ends[-1] if ends else 0) == len(text)
    ids = list(map(text.__getitem__, map(slice, [0, *ends[:-1]], ends)))
    counts = array.array("q", bytes(data[ids_end : ids_end + 8 * n]))
    created = array.array("d", bytes(data[ids_end + 8 * n :]))
    return str(header["worker"]), list(zip(ids, counts, created, strict=True))
