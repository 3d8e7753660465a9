"""The demo: a simulated workload and a local Prometheus/Alertmanager stack wired to it;
a local replica fleet behind a round-robin proxy (the Kubernetes Service stand-in)."""

from ..testing.fleet import LocalFleet, Replica, RoundRobinProxy
from ..testing.ports import free_port, free_port_on
from ..testing.stack import INSTALL_HINT, LocalStack, ManagedProcess, get_json, missing_binaries
from .workload import DemoAgent, SimulatedBackend, WorkloadShape, populate, run_demo

__all__ = [
    "INSTALL_HINT",
    "DemoAgent",
    "LocalFleet",
    "LocalStack",
    "ManagedProcess",
    "Replica",
    "RoundRobinProxy",
    "SimulatedBackend",
    "WorkloadShape",
    "free_port",
    "free_port_on",
    "get_json",
    "missing_binaries",
    "populate",
    "run_demo",
]
