"""Securing the exporter port with a web config file (exporter-toolkit's convention): TLS
with rotation, client certificates, bcrypt basic auth, headers, a rate limit."""

from .basic_auth import AuthFailure, BasicAuthChecker
from .certificates import CertificateExpiry
from .middleware import PROBE_PATHS, PortGuard
from .reload import ActiveWebConfig, WebConfigWatcher
from .tls import ReloadingSSLContext, server_ssl_context

__all__ = [
    "PROBE_PATHS",
    "ActiveWebConfig",
    "AuthFailure",
    "BasicAuthChecker",
    "CertificateExpiry",
    "PortGuard",
    "ReloadingSSLContext",
    "WebConfigWatcher",
    "server_ssl_context",
]
