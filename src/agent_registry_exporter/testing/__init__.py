"""The supported test harness: local Prometheus and Alertmanager processes, a local replica
fleet behind a round-robin proxy (the Kubernetes Service stand-in), ports, waiting helpers.

The project's tests and its demo both use it; so may a backend's own tests.
"""

from .fleet import LocalFleet, Replica, RoundRobinProxy
from .log_handlers import no_stray_log_handlers
from .ports import (
    PortInUse,
    address_in_use,
    free_port,
    free_port_on,
    free_ports,
    start_on_free_port,
    start_on_free_port_async,
)
from .stack import INSTALL_HINT, LocalStack, ManagedProcess, get_json, missing_binaries
from .waiting import WaitTimeout, wait_until, wait_until_async

__all__ = [
    "INSTALL_HINT",
    "LocalFleet",
    "LocalStack",
    "ManagedProcess",
    "PortInUse",
    "Replica",
    "RoundRobinProxy",
    "WaitTimeout",
    "address_in_use",
    "free_port",
    "free_port_on",
    "free_ports",
    "get_json",
    "missing_binaries",
    "no_stray_log_handlers",
    "start_on_free_port",
    "start_on_free_port_async",
    "wait_until",
    "wait_until_async",
]
