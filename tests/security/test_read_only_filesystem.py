"""TLS on a read-only root filesystem with no temporary directory (the Deployment patch's
container): start-up, scrapes and certificate rotation write nothing to disk."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from agent_registry_exporter.testing import wait_until

from ..cli_process import console_script, fetch, start_command
from .conftest import Pki

pytestmark = pytest.mark.processes


@pytest.fixture(autouse=True)
def _mount_namespaces() -> None:
    """A mount namespace needs root and util-linux's unshare: `make test` runs as root (it
    installs the Debian packages), so a run without them fails here, never skips."""
    assert os.geteuid() == 0, "run as root: the test makes a mount namespace"
    assert shutil.which("unshare"), "unshare (util-linux) missing"


FILES = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"

# In a mount namespace of its own (gone with the process), every directory Python's tempfile
# would use is made read-only; the check proves it before the exporter starts.
READ_ONLY = """
set -e
for dir in /tmp /var/tmp "$PWD"; do
    mount --bind "$dir" "$dir"
    mount -o remount,bind,ro "$dir"
done
if python -c 'import tempfile; tempfile.TemporaryFile()' 2>/dev/null; then
    echo "a temporary file could still be written" >&2
    exit 97
fi
exec "$@"
"""


def _inline(pki: Pki) -> str:
    def block(text: str) -> str:
        return "|\n" + "".join(f"    {line}\n" for line in text.splitlines())

    cert, key = (pki.dir / "server.crt").read_text(), (pki.dir / "server.key").read_text()
    return f"tls_server_config:\n  cert: {block(cert)}  key: {block(key)}"


def _served_sans(port: int, pki: Pki) -> set[str]:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        pki.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cert = tls.getpeercert() or {}
    return {value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"}


@pytest.mark.parametrize("inline", [False, True], ids=["cert-files", "inline-pem"])
def test_tls_serves_and_rotates_with_no_writable_directory(pki: Pki, inline: bool) -> None:
    """Every temporary directory and the working directory read-only: the exporter starts
    with TLS, answers a TLS scrape, and serves a rotated certificate to new connections."""
    config = pki.write(_inline(pki) if inline else FILES)
    workdir = pki.dir / "workdir"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "TEMP", "TMP")}
    env["PATH"] = f"{Path(console_script()).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env["AGENT_REGISTRY_EXPORTER_WEBHOOK_TOKEN"] = "t0ken"

    def command(port: int) -> list[str]:
        serve = [console_script(), "serve", "--listen-host", "127.0.0.1"]
        serve += ["--listen-port", str(port), "--web-config-file", str(config)]
        return ["unshare", "--mount", "sh", "-c", READ_ONLY, "sh", *serve]

    ctx = pki.client_context()
    running = start_command(
        command, lambda port: f"https://127.0.0.1:{port}/-/healthy", ctx=ctx, env=env, cwd=workdir
    )
    try:
        url = f"https://127.0.0.1:{running.port}"
        assert "agent_registry_users 0" in fetch(f"{url}/metrics", ctx)
        assert "rotated.example" not in _served_sans(running.port, pki)

        pki.server_cert("server", "127.0.0.1", "rotated.example")
        if inline:
            pki.write(_inline(pki))
        wait_until(lambda: "rotated.example" in _served_sans(running.port, pki))
        assert "agent_registry_users 0" in fetch(f"{url}/metrics", ctx)
    finally:
        code = running.stop()
    assert code == 0, running.stderr
    assert "No usable temporary directory" not in running.stderr
    assert "web config not reloaded" not in running.stderr
