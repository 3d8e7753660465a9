"""HTTP basic auth against bcrypt hashes, with verified credentials cached.

bcrypt is slow on purpose (about 70 ms at cost 10): paying it on every scrape would cost a
15 s scrape interval several per cent of a core. As exporter-toolkit does, a checked
credential is remembered; here only as a keyed digest, compared in constant time, under a
key that never leaves the process. Passwords are never stored, logged or echoed.

A refusal takes as long as a check at the highest cost configured, whoever it names: an
unknown user is checked against a decoy of that cost, and a refusal that took less (a user
whose hash is cheaper) waits out the rest, without using the CPU. Timing tells no user name.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import secrets
import time
from base64 import b64decode
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from enum import StrEnum
from typing import Any, TypeVar

import bcrypt

__all__ = ["AuthFailure", "BasicAuthChecker"]

# bcrypt hashes only the first 72 bytes; the library refuses longer input instead.
_BCRYPT_MAX_BYTES = 72
# The cost of the decoy when no configured hash says one (bcrypt's usual default).
_DEFAULT_COST = 10
_COST = re.compile(r"\$2[abxy]?\$(\d\d)\$")
_T = TypeVar("_T")


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

    def __init__(
        self,
        refused_cache_size: int = 256,
        *,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        # Per cost: a hash of a random value nobody kept, and the longest check seen at it.
        self._decoys: dict[int, str] = {}
        self._slowest: dict[int, float] = {}
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
        cost: int | None = None
        if hashed is not None:
            against, failure = hashed, AuthFailure.WRONG_PASSWORD
        else:
            cost = _highest_cost(users.values())
            against, failure = await self._decoy(cost), AuthFailure.UNKNOWN_USER
        # A cached verdict is as fast for a known user as for an unknown one.
        known = self._cached(user, self._digest(user, against, password))
        if known is not None:
            return None if known else failure
        # The decoy is made before the clock starts, by whichever check comes first for
        # known and unknown users alike; then every refusal lasts one check at that cost.
        cost = _highest_cost(users.values()) if cost is None else cost
        await self._decoy(cost)
        started = self._clock()
        if await self._verify(user, against, password):
            return None
        await self._sleep(self._slowest.get(cost, 0.0) - (self._clock() - started))
        return failure

    async def _decoy(self, cost: int) -> str:
        decoy = self._decoys.get(cost)
        if decoy is None:
            async with self._lock:
                decoy = self._decoys.get(cost)
                if decoy is None:
                    decoy = await asyncio.to_thread(self._timed, cost, _new_decoy, cost)
                    self._decoys[cost] = decoy
        return decoy

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
            matches = await asyncio.to_thread(
                self._timed, _cost_of(hashed), _bcrypt_matches, password, hashed
            )
            self._remember(user, digest, matches)
        return matches

    def _timed(self, cost: int | None, run: Callable[..., _T], *args: Any) -> _T:
        """`run(*args)`, remembering the longest run seen at `cost` (on the worker thread)."""
        started = self._clock()
        try:
            return run(*args)
        finally:
            if cost is not None:
                took = self._clock() - started
                self._slowest[cost] = max(self._slowest.get(cost, 0.0), took)

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


def _cost_of(hashed: str) -> int | None:
    match = _COST.match(hashed)
    return int(match[1]) if match else None


def _highest_cost(hashes: Iterable[str]) -> int:
    return max(filter(None, map(_cost_of, hashes)), default=_DEFAULT_COST)


def _new_decoy(cost: int) -> str:
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost)).decode()


def _bcrypt_matches(password: bytes, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(password[:_BCRYPT_MAX_BYTES], hashed.encode())
    except ValueError:
        return False
