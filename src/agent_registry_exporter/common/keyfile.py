"""The HMAC key file of private user ids: read and checked once (settings and the hasher)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["MIN_KEY_BYTES", "read_key_file"]

MIN_KEY_BYTES = 16


def read_key_file(path: Path) -> bytes:
    """The HMAC key in `path`, surrounding whitespace removed; ValueError naming the file
    when unusable."""
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"{str(path)!r} cannot be read: {exc.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"{str(path)!r} holds {len(key)} bytes; at least {MIN_KEY_BYTES} needed "
            "(make one with: head -c 32 /dev/urandom | base64)"
        )
    return key
