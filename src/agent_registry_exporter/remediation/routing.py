"""Whose alert is it: this replica's, another peer's (forwarded), or nobody's.

An alert belongs to the replica its `address` label names (the rules join it from the
owner's agent_registry_exporter_info, so it survives relabelling of `instance`), else the
one its `instance` label names. Ours is acted on here; a
current peer's is forwarded to it (batched per peer, concurrently); any other instance is
never contacted. A forwarded request is never forwarded again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..common.loggers import logger_name
from .decision import Decision, Outcome, decision_for, owner
from .forwarding import Forwarder
from .payload import Alert, WebhookPayload
from .peers import Peers

__all__ = ["InstanceRouter", "Routes"]

_log = logging.getLogger(logger_name("remediation.routing"))


@dataclass
class Routes:
    """Positions in the routed alerts: acted on here, forwarded per peer, or decided."""

    local: list[int] = field(default_factory=list)
    remote: dict[str, list[int]] = field(default_factory=dict)
    decided: dict[int, Decision] = field(default_factory=dict)


class InstanceRouter:
    """Routes alerts by `instance`; without an own instance every alert is local."""

    def __init__(
        self,
        own_instance: str | None,
        peers: Peers | None = None,
        forwarder: Forwarder | None = None,
    ) -> None:
        if (peers is None) != (forwarder is None):
            raise ValueError("peers and forwarder go together")
        self.own_instance = own_instance
        self.peers = peers
        self._forwarder = forwarder

    async def route(self, alerts: Sequence[Alert], *, forwarded: bool = False) -> Routes:
        """Where each alert goes; `forwarded` means a peer sent them (hop header)."""
        routes = Routes()
        own = self.own_instance
        foreign: list[int] = []
        for n, alert in enumerate(alerts):
            instance = owner(alert)
            named = instance or "no instance"
            if not own or instance == own:
                routes.local.append(n)
            elif forwarded:
                detail = (
                    f"forwarded here by a peer, but the alert is for {named}; this replica "
                    f"is {own}: not forwarded again (check `instance` and `peers` settings)"
                )
                _log.warning("misrouted forward: %s", detail)
                routes.decided[n] = decision_for(alert, Outcome.OTHER_INSTANCE, detail)
            elif self.peers is None:
                detail = f"the alert is for {named}; this replica is {own} (no peers set)"
                routes.decided[n] = decision_for(alert, Outcome.OTHER_INSTANCE, detail)
            else:
                foreign.append(n)
        if foreign:
            await self._route_to_peers(alerts, foreign, routes)
        return routes

    async def _route_to_peers(
        self, alerts: Sequence[Alert], foreign: list[int], routes: Routes
    ) -> None:
        assert self.peers is not None
        instances = {owner(alerts[n]) for n in foreign}
        known = await self.peers.lookup(i for i in instances if i)
        for n in foreign:
            instance = owner(alerts[n])
            named = instance or "no instance"
            if instance and instance in known.addresses:
                routes.remote.setdefault(instance, []).append(n)
                continue
            if known.error is not None:
                # It may be a peer the failed resolution missed: let Alertmanager retry.
                outcome = Outcome.ERROR
                detail = (
                    f"the alert is for {named}, not this replica ({self.own_instance}), "
                    f"and it is no known peer while {known.error}"
                )
            else:
                outcome = Outcome.UNKNOWN_INSTANCE
                detail = (
                    f"the alert is for {named}, not this replica ({self.own_instance}), "
                    f"and {named} is no current peer of {self.peers.spec!r}: not contacted"
                )
            routes.decided[n] = decision_for(alerts[n], outcome, detail)

    async def forward(
        self, payload: WebhookPayload, alerts: Sequence[Alert], remote: dict[str, list[int]]
    ) -> dict[int, Decision]:
        """The peers' decisions, by position; one request per peer, all at once."""
        assert self._forwarder is not None
        forwarder = self._forwarder
        results: dict[int, Decision] = {}

        async def one(peer: str, positions: list[int]) -> None:
            decisions = await forwarder.forward(peer, payload, [alerts[n] for n in positions])
            results.update(zip(positions, decisions, strict=True))

        await asyncio.gather(*(one(peer, positions) for peer, positions in remote.items()))
        return results

    async def close(self) -> None:
        if self._forwarder is not None:
            await self._forwarder.close()
