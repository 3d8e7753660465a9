"""The supported test harness: local Prometheus and Alertmanager processes, a local replica
fleet behind a round-robin proxy (the Kubernetes Service stand-in), ports, waiting helpers.

The project's tests and its demo both use it; so may a backend's own tests.
"""

from .fleet import LocalFleet, Replica, RoundRobinProxy, free_port_on
from .log_handlers import no_stray_log_handlers
from .stack import INSTALL_HINT, LocalStack, ManagedProcess, free_port, get_json, missing_binaries
from .waiting import WaitTimeout, wait_until, wait_until_async

__all__ = [
    "INSTALL_HINT",
    "LocalFleet",
    "LocalStack",
    "ManagedProcess",
    "Replica",
    "RoundRobinProxy",
    "WaitTimeout",
    "free_port",
    "free_port_on",
    "get_json",
    "missing_binaries",
    "no_stray_log_handlers",
    "wait_until",
    "wait_until_async",
]
