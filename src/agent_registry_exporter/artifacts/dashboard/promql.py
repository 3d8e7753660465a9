"""The PromQL the dashboard sends: selectors on its variables, and the shapes it repeats."""

from __future__ import annotations

from ...exporting import catalogue as c

__all__ = [
    "REGISTRY_MEMORY",
    "SEL",
    "SESSION",
    "SESSION_AGE",
    "USER_SEL",
    "WORKER_SEL",
    "rate",
    "threshold",
    "threshold_line",
]

SEL = 'job=~"$job", instance=~"$instance"'
# `=~` and not `=`: the All value `.*` also matches the empty string, so in embedded mode, where
# no series has a `worker` label, every series still matches.
WORKER_SEL = f'{SEL}, worker=~"$worker"'
USER_SEL = f'{WORKER_SEL}, user_id=~"$user_id"'
SESSION = "{{user_id}} on {{instance}} {{worker}}"
SESSION_AGE = f"time() - {c.USER_SESSION_CREATED.sample}{{{USER_SEL}}}"
# Memory of the process holding each registry: a sidecar exports each worker's; embedded, the
# registry lives in the exporter's own process.
REGISTRY_MEMORY = (
    f"{c.RESIDENT_MEMORY.sample}{{{WORKER_SEL}}} "
    f"or on (job, instance) process_resident_memory_bytes{{{SEL}}}"
)


def threshold(name: str) -> str:
    # max by (job, instance): one limit per target whether or not a sidecar labels it per worker
    # (its workers share one configuration), so `group_left` always finds exactly one match.
    return f'max by (job, instance) ({c.THRESHOLD.sample}{{{WORKER_SEL}, threshold="{name}"}})'


def threshold_line(name: str) -> str:
    return f'max({c.THRESHOLD.sample}{{{WORKER_SEL}, threshold="{name}"}})'


def rate(counter: str, by: str, matchers: str = SEL) -> str:
    return f"sum by ({by}) (rate({counter}{{{matchers}}}[$__rate_interval]))"
