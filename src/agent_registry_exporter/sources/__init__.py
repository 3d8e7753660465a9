"""Where the exporter gets its data: the `RegistrySource` seam and its implementations.

Embedded mode reads the registry in-process; in sidecar mode each backend worker serves
its registry on a Unix socket (`serve_registry`) and the sidecar gathers them all.
"""

from .deadline import SCRAPE_TIMEOUT_HEADER, answer_within, scrape_budget, time_left
from .in_process import InProcessSource
from .private_ids import PrivateIdSource, PrivateWorkerSources, UserIdHasher, private_ids
from .protocol import LooksUpInBatches, Peeks, RegistrySource, WorkerSources, peek
from .sidecar import SidecarSource, discover_workers, socket_dir_problem
from .snapshot_codec import API_VERSION, WorkerIdentity, decode_snapshot, encode_snapshot
from .socket_api import (
    DEFAULT_SOCKET_DIR,
    SOCKET_DIR_ENV,
    RegistrySocket,
    create_registry_app,
    serve_registry,
    socket_path,
)
from .worker_client import WorkerError, WorkerSource

__all__ = [
    "API_VERSION",
    "DEFAULT_SOCKET_DIR",
    "SCRAPE_TIMEOUT_HEADER",
    "SOCKET_DIR_ENV",
    "InProcessSource",
    "LooksUpInBatches",
    "Peeks",
    "PrivateIdSource",
    "PrivateWorkerSources",
    "RegistrySocket",
    "RegistrySource",
    "SidecarSource",
    "UserIdHasher",
    "WorkerError",
    "WorkerIdentity",
    "WorkerSource",
    "WorkerSources",
    "answer_within",
    "create_registry_app",
    "decode_snapshot",
    "discover_workers",
    "encode_snapshot",
    "peek",
    "private_ids",
    "scrape_budget",
    "serve_registry",
    "socket_dir_problem",
    "socket_path",
    "time_left",
]
