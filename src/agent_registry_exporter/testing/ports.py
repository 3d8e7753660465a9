"""Ports for local servers, without the race between choosing a port and binding it.

A port found free (bound to port 0, read, closed) can be taken by another process before
the server that was meant to have it binds it. Where the server runs in this process and
needs no port in its configuration, bind port 0 and read the port back (`start_exporter`
with `listen_port=0`, `server.port`). Where the port must be known first (a child process,
or an exporter whose `instance` names its own address), start it through
`start_on_free_port`: a start that fails because the address is in use is tried again on
another port.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

__all__ = [
    "PortInUse",
    "address_in_use",
    "free_port",
    "free_port_on",
    "free_ports",
    "start_on_free_port",
    "start_on_free_port_async",
]

T = TypeVar("T")
ATTEMPTS = 10


class PortInUse(OSError):
    """A server (often a child process) could not bind its port: another process has it."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.EADDRINUSE, f"{what}: address already in use")


def address_in_use(exc: BaseException) -> bool:
    """True when `exc` says a bind failed because the address is taken."""
    return isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE


def _socket_for(host: str) -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` right now: only for an address nobody is meant to listen on,
    or through `start_on_free_port` (someone may bind it first)."""
    with _socket_for(host) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports free on `host` right now (each socket held until all are
    chosen, so two never coincide); the same caveat as `free_port`."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(_socket_for(host))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def free_port_on(hosts: Sequence[str], attempts: int = 50) -> int:
    """A port free on every one of `hosts` right now (pods share one port)."""
    for _ in range(attempts):
        with contextlib.ExitStack() as held:
            first = held.enter_context(_socket_for(hosts[0]))
            first.bind((hosts[0], 0))
            port = int(first.getsockname()[1])
            try:
                for host in hosts[1:]:
                    held.enter_context(_socket_for(host)).bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no port free on all of {list(hosts)}")


def start_on_free_port(
    start: Callable[[int], T],
    *,
    choose: Callable[[], int] = free_port,
    attempts: int = ATTEMPTS,
) -> T:
    """`start(port)` on a port `choose` found free, again on another while the start fails
    with the address in use (`address_in_use`); any other failure is raised at once."""
    for attempt in range(1, attempts + 1):
        try:
            return start(choose())
        except OSError as exc:
            if not address_in_use(exc) or attempt == attempts:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def start_on_free_port_async(
    start: Callable[[int], Awaitable[T]],
    *,
    choose: Callable[[], int] = free_port,
    attempts: int = ATTEMPTS,
) -> T:
    """`start_on_free_port` for a start that is awaited (an in-process server)."""
    for attempt in range(1, attempts + 1):
        try:
            return await start(choose())
        except OSError as exc:
            if not address_in_use(exc) or attempt == attempts:
                raise
    raise AssertionError("unreachable")  # pragma: no cover
