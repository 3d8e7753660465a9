"""The `agent-registry-exporter` command as a child process on a free port, for the tests
that start it for real (mark them `processes`)."""

from __future__ import annotations

import os
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent_registry_exporter.testing import PortInUse, start_on_free_port, wait_until

from .conftest import console_script

__all__ = ["Running", "console_script", "fetch", "start_command", "status"]


def status(url: str, ctx: ssl.SSLContext | None = None) -> int:
    """The status `url` answers with; 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5, context=ctx) as resp:  # noqa: S310 - loopback
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def fetch(url: str, ctx: ssl.SSLContext | None = None) -> str:
    """The body `url` answers with (an error status raises)."""
    with urllib.request.urlopen(url, timeout=30, context=ctx) as resp:  # noqa: S310 - loopback
        return str(resp.read().decode())


@dataclass
class Running:
    """A started command: its process, its port, and what it printed once stopped."""

    process: subprocess.Popen[str]
    port: int
    stdout: str = ""
    stderr: str = ""

    def stop(self) -> int:
        """SIGTERM, then its exit code (the output is kept on the object)."""
        if self.process.poll() is None:
            self.process.terminate()
        self.stdout, self.stderr = self.process.communicate(timeout=60)
        return self.process.returncode


def start_command(
    command: Callable[[int], Sequence[str]],
    healthy_url: Callable[[int], str],
    *,
    ctx: ssl.SSLContext | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Running:
    """`command(port)` on a free port, once `healthy_url(port)` answers 200 (over `ctx`);
    tried on another port when its own was taken, failing with its stderr otherwise."""

    def on(port: int) -> Running:
        process = subprocess.Popen(
            list(command(port)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ if env is None else env),
            cwd=cwd,
        )
        running = Running(process, port)

        def healthy() -> bool:
            if process.poll() is not None:
                running.stop()
                if "address already in use" in running.stderr.lower():
                    raise PortInUse(f"{process.args!r}")
                raise AssertionError(f"exited {process.returncode}:\n{running.stderr}")
            return status(healthy_url(port), ctx) == 200

        try:
            wait_until(healthy, timeout=60, message=f"{healthy_url(port)} answers 200")
        except BaseException:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=30)
            raise
        return running

    return start_on_free_port(on)
