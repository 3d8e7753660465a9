"""From Alertmanager alert to verified cleanup: payload models and the receiver's policy."""

from .payload import Alert, WebhookPayload
from .policy import Decision, Outcome, RemediationPolicy, Remediator, TokenBucket

__all__ = [
    "Alert",
    "Decision",
    "Outcome",
    "RemediationPolicy",
    "Remediator",
    "TokenBucket",
    "WebhookPayload",
]
