"""From Alertmanager alert to verified cleanup: payload models, the receiver's policy, and
routing across replicas (peers and forwarding)."""

from .decision import Decision, Outcome
from .forwarding import HOP_HEADER, Forwarder
from .payload import Alert, WebhookPayload
from .peers import Peers, PeerSet, parse_peers, split_host_port
from .policy import RemediationPolicy, Remediator, TokenBucket
from .routing import InstanceRouter

__all__ = [
    "HOP_HEADER",
    "Alert",
    "Decision",
    "Forwarder",
    "InstanceRouter",
    "Outcome",
    "PeerSet",
    "Peers",
    "RemediationPolicy",
    "Remediator",
    "TokenBucket",
    "WebhookPayload",
    "parse_peers",
    "split_host_port",
]
