"""`host:port` as Prometheus writes it: parsed and formatted once (IPv6 in brackets)."""

from __future__ import annotations

import ipaddress

__all__ = [
    "bracket_host",
    "format_host_port",
    "parse_peers",
    "split_host_port",
    "split_listen_address",
]


def bracket_host(host: str) -> str:
    """`host` as it stands before `:port` or in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def format_host_port(host: str, port: int) -> str:
    """`host:port` as Prometheus writes an `instance` label (IPv6 in brackets)."""
    return f"{bracket_host(host)}:{port}"


def split_host_port(
    text: str, *, port_required: bool = False, port_zero: bool = False
) -> tuple[str, int | None]:
    """`host`, `host:port` or `[v6]:port` -> (host, port); ValueError naming what is wrong.
    `port_zero`: port 0 (a free one, for an address to listen on) is valid too."""
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not host:port")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        try:
            ipaddress.IPv6Address(text)  # a bare IPv6 address
        except ValueError:
            raise ValueError(f"{text!r} is not host:port") from None
    if not host:
        raise ValueError(f"{text!r} has no host")
    if not port_text:
        if port_required or text.endswith(":"):
            raise ValueError(f"{text!r} has no port")
        return host, None
    if not _is_port(port_text) or not (0 if port_zero else 1) <= int(port_text) < 65536:
        raise ValueError(f"{text!r} has no valid port")
    return host, int(port_text)


def _is_port(text: str) -> bool:
    # ASCII digits only: str.isdigit() takes "\u0663\u0663" (int() reads 33) and
    # "\u00b9" (int() refuses it), as Go's net.SplitHostPort and Prometheus do not.
    return text.isascii() and text.isdigit()


def parse_peers(spec: str) -> list[tuple[str, int | None]]:
    """The entries of a `peers` setting; ValueError when one is malformed."""
    entries = [e.strip() for e in spec.split(",")]
    if not any(entries):
        raise ValueError("is empty")
    if not all(entries):
        raise ValueError(f"{spec!r} has an empty entry")
    return [split_host_port(entry) for entry in entries]


def split_listen_address(text: str) -> tuple[str, int]:
    """A Go exporter's `--web.listen-address`: `host:port`, `[v6]:port`, or `:port` (every
    IPv4 interface, `0.0.0.0`) -> (host, port); port 0 picks a free one."""
    if text.startswith(":") and ":" not in text[1:]:
        if not _is_port(text[1:]) or int(text[1:]) > 65535:
            raise ValueError(f"{text!r} has no valid port")
        return "0.0.0.0", int(text[1:])
    host, port = split_host_port(text, port_required=True, port_zero=True)
    assert port is not None  # port_required
    return host, port
