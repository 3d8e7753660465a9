"""HTTP basic auth against bcrypt hashes, with verified credentials cached.

bcrypt is slow on purpose (about 70 ms at cost 10): paying it on every scrape would cost a
15 s scrape interval several per cent of a core. As exporter-toolkit does, a checked
credential is remembered; here only as a keyed digest, compared in constant time, under a
key that never leaves the process. Passwords are never stored, logged or echoed.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from base64 import b64decode
from collections import OrderedDict
from collections.abc import Mapping
from enum import StrEnum

import bcrypt

__all__ = ["AuthFailure", "BasicAuthChecker"]

# bcrypt hashes only the first 72 bytes; the library refuses longer input instead.
_BCRYPT_MAX_BYTES = 72
# A bcrypt hash (cost 10) of a random value nobody kept: an unknown user costs the same
# time as a wrong password, so timing does not tell which user names exist.
_DECOY_HASH = "$2b$10$5kbADJudd2vqsNl8bZsH.e2ScYhAZ7bwVbqR9T3GoZrLfyQ/GBjUW"


class AuthFailure(StrEnum):
    """Why a request was refused: the `reason` label of the auth failure counter."""

    MISSING = "missing_credentials"
    MALFORMED = "malformed_credentials"
    UNKNOWN_USER = "unknown_user"
    WRONG_PASSWORD = "wrong_password"  # noqa: S105 - a label value, not a secret
    CLIENT_CERTIFICATE = "client_certificate_san"
    WEBHOOK_TOKEN = "webhook_token"  # noqa: S105 - a label value, not a secret


class BasicAuthChecker:
    """Checks `Authorization: Basic` headers against the current users' bcrypt hashes.

    The users are passed on every call, so a reloaded file takes effect at once; a cached
    verdict is tied to the hash it was checked against and dies with it.
    """

    def __init__(self, refused_cache_size: int = 256) -> None:
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}  # user -> digest of the accepted credential
        # Refused credentials too, bounded: a scraper with a stale password must not cost
        # a bcrypt run per scrape either.
        self._refused: OrderedDict[bytes, None] = OrderedDict()
        self._refused_cache_size = refused_cache_size
        # One bcrypt at a time, off the event loop: a burst of guesses uses one core at most.
        self._lock = asyncio.Lock()
        self.bcrypt_runs = 0

    async def check(self, users: Mapping[str, str], header: str | None) -> AuthFailure | None:
        """None when `header` carries a configured user's password, else why not."""
        if not header:
            return AuthFailure.MISSING
        credentials = _parse(header)
        if credentials is None:
            return AuthFailure.MALFORMED
        user, password = credentials
        hashed = users.get(user)
        if hashed is None:
            await self._verify(user, _DECOY_HASH, password)
            return AuthFailure.UNKNOWN_USER
        return None if await self._verify(user, hashed, password) else AuthFailure.WRONG_PASSWORD

    async def _verify(self, user: str, hashed: str, password: bytes) -> bool:
        digest = self._digest(user, hashed, password)
        # Looking the digest up is no timing oracle: it is keyed by a secret of this process.
        known = self._cached(user, digest)
        if known is not None:
            return known
        async with self._lock:
            # Another request may have checked the same credential while this one waited.
            known = self._cached(user, digest)
            if known is not None:
                return known
            self.bcrypt_runs += 1
            matches = await asyncio.to_thread(_bcrypt_matches, password, hashed)
            self._remember(user, digest, matches)
        return matches

    def _cached(self, user: str, digest: bytes) -> bool | None:
        accepted = self._verified.get(user)
        if accepted is not None and hmac.compare_digest(accepted, digest):
            return True
        return False if digest in self._refused else None

    def _remember(self, user: str, digest: bytes, accepted: bool) -> None:
        if accepted:
            self._verified[user] = digest
            return
        self._refused[digest] = None
        while len(self._refused) > self._refused_cache_size:
            self._refused.popitem(last=False)

    def _digest(self, user: str, hashed: str, password: bytes) -> bytes:
        name = user.encode()
        message = len(name).to_bytes(4, "big") + name + hashed.encode() + password
        return hmac.digest(self._key, message, "sha256")


def _parse(header: str) -> tuple[str, bytes] | None:
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = b64decode(encoded.strip(), validate=True)
        user, colon, password = decoded.partition(b":")
        if not colon:
            return None
        return user.decode(), password
    # binascii.Error and UnicodeDecodeError are ValueErrors, and so is what b64decode
    # raises for text outside ASCII ("Basic é", or raw bytes aiohttp hands on as surrogates).
    except ValueError:
        return None


def _bcrypt_matches(password: bytes, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(password[:_BCRYPT_MAX_BYTES], hashed.encode())
    except ValueError:
        return False
