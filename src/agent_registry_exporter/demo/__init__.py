"""The demo: a simulated workload and a local Prometheus/Alertmanager stack wired to it."""

from .stack import INSTALL_HINT, LocalStack, ManagedProcess, free_port, get_json, missing_binaries
from .workload import DemoAgent, SimulatedBackend, WorkloadShape, populate, run_demo

__all__ = [
    "INSTALL_HINT",
    "DemoAgent",
    "LocalStack",
    "ManagedProcess",
    "SimulatedBackend",
    "WorkloadShape",
    "free_port",
    "get_json",
    "missing_binaries",
    "populate",
    "run_demo",
]
