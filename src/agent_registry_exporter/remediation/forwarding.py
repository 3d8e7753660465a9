"""Forwarding alerts to the replica that owns them, once, with bounded time and body.

The peer is a current peer address (see `peers`); the request carries the same bearer
token and the hop header, so the peer acts on it or answers, but never forwards it again.
No redirect is followed, no response body is decompressed or read past its bound.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
from aiohttp import hdrs
from pydantic import BaseModel, ConfigDict, ValidationError

from .decision import Decision, Outcome, decision_for
from .payload import Alert, WebhookPayload

__all__ = ["HOP_HEADER", "Forwarder"]

HOP_HEADER = "X-Agent-Registry-Forwarded"
_READ_CHUNK = 64 * 1024
_DETAIL_CHARS = 300


class _PeerDecision(BaseModel):
    model_config = ConfigDict(extra="ignore")

    fingerprint: str
    outcome: Outcome
    detail: str = ""


class _PeerAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    alerts: list[_PeerDecision]


class _Failure(Exception):
    def __init__(self, outcome: Outcome, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


class Forwarder:
    """Posts alerts to a peer's webhook and brings the peer's decisions back."""

    def __init__(
        self,
        own_instance: str,
        *,
        path: str,
        token: Callable[[], str | None],
        timeout_seconds: float,
        max_request_bytes: int,
        max_response_bytes: int,
        scheme: str = "http",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.own_instance = own_instance
        self._path = path
        self._token = token
        self._timeout = timeout_seconds
        self._max_request_bytes = max_request_bytes
        self._max_response_bytes = max_response_bytes
        self._scheme = scheme
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None

    async def forward(
        self, peer: str, payload: WebhookPayload, alerts: Sequence[Alert]
    ) -> list[Decision]:
        """One decision per alert, in order; never raises (a failure is a decision).

        Alerts go in as few requests as the peer's body limit (taken to be ours) allows.
        """
        chunks = _split(payload, list(alerts), self._max_request_bytes)
        results = await asyncio.gather(*(self._forward(peer, *chunk) for chunk in chunks))
        return [decision for result in results for decision in result]

    async def _forward(self, peer: str, alerts: list[Alert], body: bytes | None) -> list[Decision]:
        started = time.perf_counter()
        try:
            if body is None:
                limit = self._max_request_bytes
                raise _Failure(Outcome.ERROR, f"the alert alone exceeds {limit} bytes")
            answers = await self._post(peer, body, alerts)
        except _Failure as failure:
            detail = f"forwarding from {self.own_instance} to {peer} failed: {failure.detail}"
            decisions = [decision_for(a, failure.outcome, detail) for a in alerts]
        else:
            decisions = []
            for alert, answer in zip(alerts, answers, strict=True):
                decision = decision_for(
                    alert,
                    Outcome.FORWARDED,
                    f"forwarded from {self.own_instance} to {peer}: {answer.outcome.value}"
                    + (f": {answer.detail}" if answer.detail else ""),
                )
                decision.peer_outcome = answer.outcome
                decisions.append(decision)
        elapsed = time.perf_counter() - started
        for decision in decisions:
            decision.peer = peer
            decision.duration_seconds = elapsed
        return decisions

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl),
                auto_decompress=False,  # a peer's answer is never inflated
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,  # never through an HTTP(S)_PROXY from the environment
            )
        return self._session

    async def _post(self, peer: str, body: bytes, alerts: Sequence[Alert]) -> list[_PeerDecision]:
        headers = {
            hdrs.CONTENT_TYPE: "application/json",
            hdrs.ACCEPT_ENCODING: "identity",
            HOP_HEADER: "1",
        }
        token = self._token()
        if token is not None:
            headers[hdrs.AUTHORIZATION] = f"Bearer {token}"
        url = f"{self._scheme}://{peer}{self._path}"
        try:
            async with asyncio.timeout(self._timeout):
                async with self._client().post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as resp:
                    status = resp.status
                    text = await self._read_bounded(resp)
        except TimeoutError:
            raise _Failure(
                Outcome.TIMEOUT, f"no complete answer within {self._timeout:g}s"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _Failure(Outcome.ERROR, f"{type(exc).__name__}: {exc}") from None
        if 300 <= status < 400:
            raise _Failure(Outcome.ERROR, f"the peer answered {status}; redirects are not followed")
        answers = _parse(text, alerts)
        if answers is not None:
            return answers
        outcome = Outcome.RATE_LIMITED if status == 429 else Outcome.ERROR
        excerpt = text[:_DETAIL_CHARS].decode("utf-8", "replace")
        raise _Failure(outcome, f"the peer answered {status} without decisions: {excerpt!r}")

    async def _read_bounded(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self._max_response_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise _Failure(Outcome.ERROR, f"the peer's answer exceeds {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while chunk := await resp.content.read(_READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise _Failure(Outcome.ERROR, f"the peer's answer exceeds {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _body(payload: WebhookPayload, alerts: Sequence[Alert]) -> bytes:
    document: dict[str, Any] = {
        "version": payload.version,
        "status": "firing",
        "receiver": payload.receiver,
        "groupKey": payload.group_key,
        "groupLabels": payload.group_labels,
        "externalURL": payload.external_url,
        "truncatedAlerts": 0,
        "alerts": [a.model_dump(mode="json", by_alias=True) for a in alerts],
    }
    return json.dumps(document).encode()


def _split(
    payload: WebhookPayload, alerts: list[Alert], limit: int
) -> list[tuple[list[Alert], bytes | None]]:
    """(alerts, body) per request, each body within `limit`; None for an alert too big alone."""
    body = _body(payload, alerts)
    if len(body) <= limit:
        return [(alerts, body)]
    if len(alerts) == 1:
        return [(alerts, None)]
    half = len(alerts) // 2
    return _split(payload, alerts[:half], limit) + _split(payload, alerts[half:], limit)


def _parse(text: bytes, alerts: Sequence[Alert]) -> list[_PeerDecision] | None:
    """The peer's per-alert decisions, when they answer exactly the alerts sent, in order."""
    try:
        answer = _PeerAnswer.model_validate_json(text)
    except ValidationError:
        return None
    fingerprints = [a.fingerprint for a in alerts]
    if [d.fingerprint for d in answer.alerts] != fingerprints:
        return None
    return answer.alerts
