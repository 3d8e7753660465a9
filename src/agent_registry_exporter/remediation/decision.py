"""What the receiver decided for one alert: `Outcome` and `Decision`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .payload import Alert

__all__ = ["ADDRESS_LABEL", "Decision", "Outcome", "decision_for", "owner"]

# The replica's own advertised instance, joined onto cleanup alerts by the rules from
# agent_registry_exporter_info: it names the owner even where `instance` was relabelled.
ADDRESS_LABEL = "address"


def owner(alert: Alert) -> str | None:
    """The replica an alert belongs to: its `address` when present, else its `instance`."""
    return alert.labels.get(ADDRESS_LABEL) or alert.labels.get("instance") or None


class Outcome(StrEnum):
    """What the receiver did with one alert."""

    CLEANED = "cleaned"
    DRY_RUN = "dry_run"
    NOT_VIOLATING = "not_violating"
    NO_SESSION = "no_session"
    DUPLICATE = "duplicate"
    RESOLVED = "ignored_resolved"
    NOT_REMEDIABLE = "ignored_not_remediable"
    NO_USER = "ignored_no_user_id"
    OTHER_INSTANCE = "other_instance"
    UNKNOWN_WORKER = "unknown_worker"
    FORWARDED = "forwarded"
    UNKNOWN_INSTANCE = "unknown_instance"
    RATE_LIMITED = "rate_limited"
    BREAKER_OPEN = "breaker_open"
    ERROR = "error"
    TIMEOUT = "timeout"

    @property
    def retry_helps(self) -> bool:
        """A failure that a quick retry may fix (answered 5xx)."""
        return self in (Outcome.ERROR, Outcome.TIMEOUT)

    @property
    def deferred(self) -> bool:
        """Held back on purpose; the next group_interval re-send may act (answered 429)."""
        return self in (Outcome.RATE_LIMITED, Outcome.BREAKER_OPEN)


@dataclass
class Decision:
    """The outcome for one alert, with what identifies it.

    A forwarded alert carries the peer that owns it and the peer's own outcome, which
    decides the HTTP answer (a peer's error is retried, its rate limit defers).
    """

    alertname: str
    user_id: str | None
    instance: str | None
    fingerprint: str
    outcome: Outcome
    detail: str = ""
    agents_cleaned: int = 0
    duration_seconds: float = 0.0
    peer: str | None = None
    peer_outcome: Outcome | None = None
    worker: str | None = None
    address: str | None = None

    @property
    def owner(self) -> str | None:
        """The replica the alert belongs to (`address`, else `instance`)."""
        return self.address or self.instance

    @property
    def effective_outcome(self) -> Outcome:
        """The outcome that decides the answer: the peer's when forwarded."""
        return self.peer_outcome or self.outcome

    def as_dict(self) -> dict[str, object]:
        fields: dict[str, object] = {
            "alertname": self.alertname,
            "user_id": self.user_id,
            "instance": self.instance,
            "fingerprint": self.fingerprint,
            "outcome": self.outcome.value,
            "detail": self.detail,
            "agents_cleaned": self.agents_cleaned,
            "duration_ms": round(self.duration_seconds * 1000, 1),
        }
        if self.worker is not None:
            fields["worker"] = self.worker
        if self.address is not None:
            fields["address"] = self.address
        if self.peer is not None:
            fields["peer"] = self.peer
        if self.peer_outcome is not None:
            fields["peer_outcome"] = self.peer_outcome.value
        return fields


def decision_for(alert: Alert, outcome: Outcome, detail: str = "") -> Decision:
    """A decision about `alert`, identified by its labels and fingerprint."""
    return Decision(
        alertname=alert.labels.get("alertname", ""),
        user_id=alert.labels.get("user_id") or None,
        instance=alert.labels.get("instance"),
        worker=alert.labels.get("worker"),
        address=alert.labels.get(ADDRESS_LABEL) or None,
        fingerprint=alert.fingerprint,
        outcome=outcome,
        detail=detail,
    )
