"""One user's monitoring result: what `RegistrySource.monitor_user` returns and the
receiver's policy matches on; the seed system's dict is built from it here, once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .sessions import UserAgentSession
from .thresholds import Thresholds

__all__ = ["MonitorResult", "Status"]


class Status(StrEnum):
    """Where one user's session stands; the values are the seed system's `status` strings."""

    HEALTHY = "healthy"
    WARNING = "warning"  # a threshold is exceeded: `issues` says which
    NO_SESSION = "no_session"
    NO_REGISTRY = "no_registry"
    ERROR = "error"  # the check itself failed: `error` says why


@dataclass(frozen=True, slots=True)
class MonitorResult:
    """One user's session checked against the thresholds.

    `metrics` is the session's `get_metrics()` (empty without a session); `issues` the issue
    strings in the seed system's exact wording; `error` is set with `Status.ERROR` only.
    """

    status: Status
    user_id: str
    metrics: Mapping[str, Any] = field(default_factory=dict)
    issues: tuple[str, ...] = ()
    error: str | None = None

    @classmethod
    def of_session(cls, session: UserAgentSession, thresholds: Thresholds) -> MonitorResult:
        """The result for a session the caller holds."""
        metrics = session.get_metrics()
        issues = thresholds.user_issues(metrics["agent_count"], metrics["uptime_seconds"])
        status = Status.WARNING if issues else Status.HEALTHY
        return cls(status, session.user_id, metrics, tuple(issues))

    @classmethod
    def failed(cls, user_id: str, error: str) -> MonitorResult:
        """The check could not be made; `error` is one line saying why."""
        return cls(Status.ERROR, user_id, error=error)

    @property
    def violating(self) -> bool:
        """A threshold is exceeded (what a cleanup needs)."""
        return self.status is Status.WARNING

    def as_dict(self) -> dict[str, Any]:
        """The seed system's `monitor_memory_usage` dict, key for key (also the socket API's
        answer): `{'status', 'user_id', 'metrics', 'issues'}`, plus `'error'` on an error."""
        result: dict[str, Any] = {
            "status": self.status.value,
            "user_id": self.user_id,
            "metrics": dict(self.metrics),
            "issues": list(self.issues),
        }
        if self.error is not None:
            result["error"] = self.error
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MonitorResult:
        """Read back an `as_dict()` (what a worker answers); ValueError naming what is wrong."""
        try:
            status = Status(data["status"])
        except KeyError:
            raise ValueError("no status") from None
        except ValueError:
            raise ValueError(f"unknown status {data['status']!r}") from None
        user_id = data.get("user_id")
        metrics = data.get("metrics", {})
        issues = data.get("issues", [])
        error = data.get("error")
        if not isinstance(user_id, str):
            raise ValueError("user_id is not a string")
        if not isinstance(metrics, dict):
            raise ValueError("metrics is not an object")
        if not isinstance(issues, list) or not all(isinstance(i, str) for i in issues):
            raise ValueError("issues is not a list of strings")
        if error is not None and not isinstance(error, str):
            raise ValueError("error is not a string")
        return cls(status, user_id, metrics, tuple(issues), error)
