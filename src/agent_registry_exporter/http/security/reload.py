"""The web config in force, and its reload when the file or a file it names changes.

Checked on each new connection and each request (the few small files read and digested),
as exporter-toolkit re-reads its file per request: no restart, no signal, no background
task. A broken new file keeps the last good config, and the log says why.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ...common.loggers import logger_name
from ...common.setting_checks import register_setting_check
from ...common.token_bucket import TokenBucket
from .certificates import Validity, served_validity, warn_if_invalid
from .tls import peer_ssl_context, server_ssl_context
from .webconfig import WebConfig, WebConfigError, load_web_config

__all__ = ["ActiveWebConfig", "WebConfigWatcher"]

_log = logging.getLogger(logger_name("security.reload"))

_Signature = tuple[bytes | None, ...]


@dataclass(frozen=True)
class ActiveWebConfig:
    """One loaded web config file, ready to serve with."""

    config: WebConfig
    ssl_context: ssl.SSLContext | None
    # The client side for forwarding to peer replicas, when TLS is on.
    peer_context: ssl.SSLContext | None
    headers: Mapping[str, str]
    users: Mapping[str, str]
    rate_limit: TokenBucket | None
    files: tuple[Path, ...]
    # The served certificate's dates, when TLS is on (and they can be read).
    certificate: Validity | None = None

    @classmethod
    def load(cls, path: Path) -> ActiveWebConfig:
        """Everything the file asks for, certificates read; WebConfigError naming the key."""
        config = load_web_config(path)
        tls = config.tls_server_config
        try:
            ssl_context = server_ssl_context(tls) if tls.enabled else None
            peer_context = peer_ssl_context(tls) if tls.enabled else None
        except WebConfigError as exc:
            raise WebConfigError(f"web config {path}: {exc}") from None
        limit = config.rate_limit
        return cls(
            config=config,
            ssl_context=ssl_context,
            peer_context=peer_context,
            headers=config.http_server_config.headers.as_dict(),
            users={u: h.get_secret_value() for u, h in config.basic_auth_users.items()},
            rate_limit=(
                TokenBucket(1.0 / limit.interval, limit.burst) if limit.interval > 0 else None
            ),
            files=_files(path, config),
            certificate=served_validity(tls) if tls.enabled else None,
        )

    def warn_if_not_valid(self, path: Path) -> None:
        """One warning naming the dates when the certificate just loaded is not valid now."""
        tls = self.config.tls_server_config
        warn_if_invalid(self.certificate, tls.cert_file or f"{path} (tls_server_config.cert)")


# `Settings(web_config_file=...)` loads the file as a reload would (settings cannot import this).
register_setting_check("web_config_file", ActiveWebConfig.load)


def _files(path: Path, config: WebConfig) -> tuple[Path, ...]:
    tls = config.tls_server_config
    named = (tls.cert_file, tls.key_file, tls.client_ca_file)
    return (path, *(Path(f) for f in named if f is not None))


def _signature(files: tuple[Path, ...]) -> _Signature:
    def one(file: Path) -> bytes | None:
        try:
            # By content, not timestamps: a rewrite within one clock tick, or one keeping its
            # size and mtime, is still a change. Follows symlinks (a Secret's `..data`).
            return hashlib.blake2b(file.read_bytes(), digest_size=16).digest()
        except OSError:
            return None

    return tuple(one(f) for f in files)


class WebConfigWatcher:
    """The web config in force; `current()` reloads it when one of its files changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._active = ActiveWebConfig.load(path)
        self._watched = self._active.files
        self._signature = _signature(self._watched)
        self._active.warn_if_not_valid(path)

    @property
    def tls(self) -> bool:
        """Whether the port serves HTTPS (fixed at start-up)."""
        return self._active.ssl_context is not None

    def current(self) -> ActiveWebConfig:
        signature = _signature(self._watched)
        if signature != self._signature:
            # Once per change, even when the reload fails: no log line per request.
            self._signature = signature
            self._reload()
        return self._active

    def ssl_context(self) -> ssl.SSLContext:
        """The newest server context (for each new connection)."""
        context = self.current().ssl_context
        assert context is not None, "TLS is off: no context to give"
        return context

    def peer_context(self) -> ssl.SSLContext:
        """The newest client context for forwarding to peers (for each new connection)."""
        context = self.current().peer_context
        assert context is not None, "TLS is off: no context to give"
        return context

    def _reload(self) -> None:
        try:
            new = ActiveWebConfig.load(self.path)
            if (new.ssl_context is None) != (self._active.ssl_context is None):
                raise WebConfigError(
                    f"web config {self.path}: tls_server_config: TLS cannot be turned "
                    "on or off without a restart"
                )
        except WebConfigError as exc:
            _log.error("web config not reloaded, keeping the last good one: %s", exc)
            # Also watch the files the broken config names: their arrival may fix it.
            self._watched = tuple(dict.fromkeys((*self._active.files, *_named_by(self.path))))
            self._signature = _signature(self._watched)
            return
        self._active = new
        self._watched = new.files
        self._signature = _signature(self._watched)
        new.warn_if_not_valid(self.path)
        _log.info(
            "web config reloaded from %s",
            self.path,
            extra={"fields": {"tls": self.tls, "basic_auth_users": len(new.users)}},
        )


def _named_by(path: Path) -> tuple[Path, ...]:
    try:
        return _files(path, load_web_config(path))
    except WebConfigError:
        return (path,)
