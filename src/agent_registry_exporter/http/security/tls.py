"""TLS for the exporter port: a server context built from `tls_server_config`, and a context
that hands every new connection the newest one (certificate rotation without a restart)."""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .webconfig import TLSServerConfig, WebConfigError, error_reason

__all__ = ["ReloadingSSLContext", "peer_ssl_context", "server_ssl_context"]


def server_ssl_context(tls: TLSServerConfig) -> ssl.SSLContext:
    """A fresh server context for `tls`, its files read now; WebConfigError naming the key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version, ctx.maximum_version = tls.versions
    # aiohttp speaks HTTP/1.1 only; saying so lets a Go client skip its h2 attempt.
    ctx.set_alpn_protocols(["http/1.1"])
    _load_certificate(ctx, tls)
    ctx.verify_mode = tls.verify_mode
    if tls.client_ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(
                f"tls_server_config.client_ca_file: cannot load {tls.client_ca_file}: "
                f"{error_reason(exc)}"
            ) from None
    elif tls.client_ca is not None:
        try:
            ctx.load_verify_locations(cadata=tls.client_ca)
        except (ValueError, ssl.SSLError) as exc:
            raise WebConfigError(f"tls_server_config.client_ca: {error_reason(exc)}") from None
    elif ctx.verify_mode != ssl.CERT_NONE:
        ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)  # as Go does: the system's roots
    if tls.openssl_ciphers:
        ctx.set_ciphers(tls.openssl_ciphers)
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.ecdh_curve is not None:
        ctx.set_ecdh_curve(tls.ecdh_curve)
    return ctx


def peer_ssl_context(tls: TLSServerConfig) -> ssl.SSLContext:
    """The client side for forwarding alerts to peer replicas over the same TLS.

    Replicas serve the certificate of one Secret: a peer is trusted when it presents a
    certificate chaining to ours, or to the client CA. Peers are dialled by pod IP, which a
    Service's certificate does not name, so the name is not checked; the address itself
    comes from the current peers only. When the port requires client certificates, ours is
    presented.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version, ctx.maximum_version = tls.versions
    # Our own certificate (or its issuer) as a trust anchor, though it is no root.
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cadata=_pem(tls.cert, tls.cert_file, "cert", "CERTIFICATE"))
    if tls.client_ca_file is not None:
        ctx.load_verify_locations(cafile=tls.client_ca_file)
    elif tls.client_ca is not None:
        ctx.load_verify_locations(cadata=tls.client_ca)
    if tls.verify_mode != ssl.CERT_NONE:
        _load_certificate(ctx, tls)
    return ctx


def _load_certificate(ctx: ssl.SSLContext, tls: TLSServerConfig) -> None:
    # Files are loaded from where they are; inline PEM from memory. Nothing is written to
    # disk: the container's root filesystem is read-only, with no /tmp.
    cert = _pem(tls.cert, tls.cert_file, "cert", "CERTIFICATE")
    key_text = tls.key.get_secret_value() if tls.key is not None else None
    key = _pem(key_text, tls.key_file, "key", "PRIVATE KEY")
    where = "tls_server_config.key_file" if tls.key_file else "tls_server_config.key"
    with contextlib.ExitStack() as opened:
        cert_path = tls.cert_file or opened.enter_context(_in_memory(cert, "cert"))
        key_path = tls.key_file or opened.enter_context(_in_memory(key, "key"))
        try:
            ctx.load_cert_chain(cert_path, key_path)
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(
                f"{where}: cannot be used with the certificate: {error_reason(exc)}"
            ) from None


@contextlib.contextmanager
def _in_memory(text: str, key: str) -> Iterator[str]:
    """A path OpenSSL can open that reads `text` from memory (ssl loads a certificate chain
    only by path): an anonymous memory file, closed when the block ends."""
    if not hasattr(os, "memfd_create") or not os.path.isdir("/proc/self/fd"):
        raise WebConfigError(
            f"tls_server_config.{key}: inline PEM is read from memory, which needs Linux"
            f" (memfd_create and /proc); use {key}_file"
        )
    fd = os.memfd_create(f"tls-{key}", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as memory:
            memory.write(text.encode())
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _pem(inline: str | None, file: str | None, key: str, kind: str) -> str:
    if file is not None:
        try:
            text = Path(file).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise WebConfigError(
                f"tls_server_config.{key}_file: cannot read {file}: {error_reason(exc)}"
            ) from None
        key = f"{key}_file"
    else:
        text = inline or ""
    if f"{kind}-----" not in text:  # BEGIN CERTIFICATE, BEGIN (RSA |EC )PRIVATE KEY
        raise WebConfigError(f"tls_server_config.{key}: no PEM {kind.lower()} in it")
    return text


class ReloadingSSLContext(ssl.SSLContext):
    """A context that builds each connection from `current()`'s context.

    asyncio creates every connection's TLS object through `wrap_bio` of the context the
    server was started with; delegating that call swaps everything per connection
    (certificate, client CAs, verify mode, versions, ciphers), which a context's own
    setters or an SNI callback cannot. Connections already open keep theirs.
    """

    _current: Callable[[], ssl.SSLContext]

    def __new__(
        cls, current: Callable[[], ssl.SSLContext], protocol: int = ssl.PROTOCOL_TLS_SERVER
    ) -> ReloadingSSLContext:
        self = super().__new__(cls, protocol)
        self._current = current
        return self

    def __init__(
        self, current: Callable[[], ssl.SSLContext], protocol: int = ssl.PROTOCOL_TLS_SERVER
    ) -> None:
        # SSLContext takes its arguments in __new__.
        pass

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        return self._current().wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        return self._current().wrap_socket(*args, **kwargs)
