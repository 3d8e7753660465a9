"""Every metric family the exporter serves, as data.

The one list the fast writer (HELP and TYPE lines), the exporter's own prometheus_client
metrics, the sidecar's worker metrics, the alert rules, the dashboard and `docs/metrics.md`
read: a name, help text, label or unit is changed here and nowhere else. A test renders a
scrape with every optional family present and checks it serves exactly this list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "AGENTS",
    "AUTH_FAILURES",
    "BUILD_INFO",
    "CATALOGUE",
    "CLEANED_AGENTS",
    "CLEANED_AGENTS_ALIVE",
    "CLEANED_AGENTS_UNTRACKED",
    "CLEANUPS",
    "EXPORTER_INFO",
    "FOREIGN_PREFIXES",
    "RENDER_FAILURES",
    "RESIDENT_MEMORY",
    "SCRAPE_DURATION",
    "SESSION_AGE",
    "SESSION_AGENTS",
    "SOURCE_SCRAPE_DURATION",
    "SOURCE_SOCKETS_REMOVED",
    "SOURCE_UP",
    "SOURCE_WORKERS",
    "THRESHOLD",
    "TLS_CERT_EXPIRY",
    "USERS",
    "USER_AGENTS",
    "USER_SERIES_OMITTED",
    "USER_SESSION_AGE",
    "USER_SESSION_CREATED",
    "WEBHOOK_REQUESTS",
    "Family",
    "Kind",
    "Writer",
    "family",
]

_NAME = re.compile(r"^agent_registry_[a-z](?:[a-z0-9_]*[a-z0-9])?$")
# Families prometheus_client's process and GC collectors add beside ours (not listed here).
FOREIGN_PREFIXES = ("process_", "python_gc_")


class Kind(StrEnum):
    """A family's metric type, spelled as both formats' `# TYPE` lines spell it."""

    GAUGE = "gauge"
    COUNTER = "counter"
    HISTOGRAM = "histogram"


class Writer(StrEnum):
    """Which part of the exporter writes a family."""

    REGISTRY = "registry"  # from each registry's snapshot (the fast writer); `worker` in sidecar
    EXPORTER = "exporter"  # the exporter's own metrics, one set per exporter process
    SIDECAR = "sidecar"  # the sidecar's view of its workers


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: its name (a counter's without `_total`), type, help, labels, unit."""

    name: str
    kind: Kind
    help: str
    writer: Writer
    labels: tuple[str, ...] = ()
    unit: str = ""
    when: str = ""  # served only under this condition ("" when always)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or self.name.endswith("_total"):
            raise ValueError(f"{self.name!r}: a family name, agent_registry_*, without _total")
        if self.unit and not self.name.endswith("_" + self.unit):
            raise ValueError(f"{self.name!r} must end with its unit {self.unit!r}")
        if not self.help.endswith(".") or any(c in self.help for c in '\\\n"'):
            # Nothing to escape in either format: HELP lines are written as they are.
            raise ValueError(f"{self.name!r}: help is one plain sentence")

    @property
    def sample(self) -> str:
        """The name of the series PromQL selects (`_total` appended for a counter; a
        histogram's family name, whose series are `series`)."""
        return self.name + "_total" if self.kind is Kind.COUNTER else self.name

    @property
    def series(self) -> tuple[str, ...]:
        """Every series name the family's samples carry (a histogram's three)."""
        if self.kind is Kind.HISTOGRAM:
            return tuple(self.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        return (self.sample,)


_G, _C, _H = Kind.GAUGE, Kind.COUNTER, Kind.HISTOGRAM
_REG, _EXP, _SIDE = Writer.REGISTRY, Writer.EXPORTER, Writer.SIDECAR
_USER = ("user_id",)

USER_AGENTS = Family("agent_registry_user_agents", _G, "Agents in the user's session.", _REG, _USER)
USER_SESSION_AGE = Family(
    "agent_registry_user_session_age_seconds",
    _G,
    "Age of the user's session.",
    _REG,
    _USER,
    unit="seconds",
    when="export_session_age is on (the default)",
)
USER_SESSION_CREATED = Family(
    "agent_registry_user_session_created_timestamp_seconds",
    _G,
    "Start of the user's session in Unix seconds.",
    _REG,
    _USER,
    unit="seconds",
)
USERS = Family("agent_registry_users", _G, "Sessions in the registry.", _REG)
AGENTS = Family("agent_registry_agents", _G, "Agents in the registry.", _REG)
THRESHOLD = Family(
    "agent_registry_threshold",
    _G,
    "Limits the lifecycle manager enforces.",
    _REG,
    ("threshold",),
)
USER_SERIES_OMITTED = Family(
    "agent_registry_user_series_omitted",
    _G,
    "Users left out of the per-user series (by the max_user_series cap or below"
    " user_series_min_pressure).",
    _REG,
)
SESSION_AGENTS = Family(
    "agent_registry_session_agents",
    _H,
    "Agents per session, every session of the registry (buckets 1 to 200 and the"
    " agents_per_user limit).",
    _REG,
)
SESSION_AGE = Family(
    "agent_registry_session_age_seconds",
    _H,
    "Session ages, every session of the registry (buckets 1h to 7d and the"
    " session_age_seconds limit).",
    _REG,
    unit="seconds",
)
CLEANED_AGENTS_ALIVE = Family(
    "agent_registry_cleaned_agents_alive",
    _G,
    "Cleaned agents still referenced more than leak_grace_seconds after cleanup.",
    _REG,
    when="the source reports it (AgentRegistry always does)",
)
CLEANED_AGENTS_UNTRACKED = Family(
    "agent_registry_cleaned_agents_untracked",
    _C,
    "Cleaned agents not watched for a leak (no weak reference support, or over the tracking"
    " bound).",
    _REG,
    when="the source reports it (AgentRegistry always does)",
)
RESIDENT_MEMORY = Family(
    "agent_registry_resident_memory_bytes",
    _G,
    "Resident memory of the process holding the registry.",
    _REG,
    unit="bytes",
    when="sidecar mode (each worker's process)",
)
BUILD_INFO = Family(
    "agent_registry_exporter_build_info",
    _G,
    "Always 1; the version label names the running exporter.",
    _EXP,
    ("version",),
)
# The cleanup rules join `address` onto their alerts: routing survives relabelling.
EXPORTER_INFO = Family(
    "agent_registry_exporter_info",
    _G,
    "Always 1; address is the instance this replica advertises (its own alerts' owner).",
    _EXP,
    ("address",),
)
SCRAPE_DURATION = Family(
    "agent_registry_exporter_scrape_duration_seconds",
    _G,
    "Time the last /metrics render took.",
    _EXP,
    unit="seconds",
)
CLEANUPS = Family(
    "agent_registry_cleanups",
    _C,
    "Cleanup decisions by trigger and outcome.",
    _EXP,
    ("trigger", "result"),
)
CLEANED_AGENTS = Family("agent_registry_cleaned_agents", _C, "Agents closed by cleanups.", _EXP)
RENDER_FAILURES = Family(
    "agent_registry_exporter_render_failures",
    _C,
    "/metrics renders that failed (the scrape was answered 500).",
    _EXP,
)
WEBHOOK_REQUESTS = Family(
    "agent_registry_webhook_requests",
    _C,
    "Webhook HTTP responses by status code.",
    _EXP,
    ("code",),
)
AUTH_FAILURES = Family(
    "agent_registry_exporter_auth_failures",
    _C,
    "Requests refused for their credentials, by reason.",
    _EXP,
    ("reason",),
)
TLS_CERT_EXPIRY = Family(
    "agent_registry_exporter_tls_cert_expiry_timestamp_seconds",
    _G,
    "When the served TLS certificate expires (its notAfter), in Unix seconds.",
    _EXP,
    unit="seconds",
    when="TLS on (web config)",
)
SOURCE_UP = Family(
    "agent_registry_source_up",
    _G,
    "1 when the worker answered this scrape's snapshot request, else 0.",
    _SIDE,
    ("worker",),
    when="sidecar mode",
)
SOURCE_SCRAPE_DURATION = Family(
    "agent_registry_source_scrape_duration_seconds",
    _G,
    "Time the worker took to answer this scrape's snapshot request.",
    _SIDE,
    ("worker",),
    unit="seconds",
    when="sidecar mode",
)
SOURCE_WORKERS = Family(
    "agent_registry_source_workers",
    _G,
    "Worker sockets found in the socket directory at the last scrape.",
    _SIDE,
    when="sidecar mode",
)
SOURCE_SOCKETS_REMOVED = Family(
    "agent_registry_source_sockets_removed",
    _C,
    "Sockets of dead workers (connection refused repeatedly) removed by the sidecar.",
    _SIDE,
    when="sidecar mode",
)

CATALOGUE: tuple[Family, ...] = (
    USER_AGENTS,
    USER_SESSION_AGE,
    USER_SESSION_CREATED,
    USERS,
    AGENTS,
    THRESHOLD,
    USER_SERIES_OMITTED,
    SESSION_AGENTS,
    SESSION_AGE,
    CLEANED_AGENTS_ALIVE,
    CLEANED_AGENTS_UNTRACKED,
    RESIDENT_MEMORY,
    BUILD_INFO,
    EXPORTER_INFO,
    SCRAPE_DURATION,
    CLEANUPS,
    CLEANED_AGENTS,
    RENDER_FAILURES,
    WEBHOOK_REQUESTS,
    AUTH_FAILURES,
    TLS_CERT_EXPIRY,
    SOURCE_UP,
    SOURCE_SCRAPE_DURATION,
    SOURCE_WORKERS,
    SOURCE_SOCKETS_REMOVED,
)
_BY_NAME = {f.name: f for f in CATALOGUE}
if len(_BY_NAME) != len(CATALOGUE):
    raise ValueError("a family is listed twice in the catalogue")


def family(name: str) -> Family:
    """The family named `name` (a counter's name with or without `_total`)."""
    found = _BY_NAME.get(name)
    if found is None and name.endswith("_total"):
        found = _BY_NAME.get(name.removesuffix("_total"))
        found = found if found is not None and found.kind is Kind.COUNTER else None
    if found is None:
        raise KeyError(f"{name!r} is not in the metric catalogue")
    return found
