"""What securing the port costs a scrape: TLS, bcrypt basic auth (cached), private user ids.

Serves one registry (3 agents per user) four ways on one event loop and scrapes each from
another thread with Prometheus' headers over one kept-alive connection, as Prometheus does:

- stock: prometheus_client's collector path (`make_aiohttp_handler`), plain HTTP;
- ours: `start_exporter`, plain HTTP;
- ours+tls+auth: a web config with TLS and a bcrypt (cost 10) user;
- ours+tls+auth+hmac: the same, and `user_id_hmac_key_file`.

Prints median milliseconds per scrape and each path's ratio to the stock one, measured in
the same run; and how long the first authenticated scrape (bcrypt) took against the next
ones (cached).

    .venv/bin/python benchmarks/secured.py [--sizes 1000,10000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import ssl
import statistics
import tempfile
import time
from base64 import b64encode
from pathlib import Path

import bcrypt
import trustme
from scrape import HEADERS, build_registry, start_stock

from agent_registry_exporter import AgentRegistry, Settings, start_exporter

PASSWORD = "benchmark-pass"  # noqa: S105 - a throwaway local credential


class Scraper:
    """One kept-alive connection, like Prometheus' scrape loop."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext | None, auth: bool) -> None:
        self.conn: http.client.HTTPConnection = (
            http.client.HTTPSConnection(host, port, context=ctx, timeout=120)
            if ctx is not None
            else http.client.HTTPConnection(host, port, timeout=120)
        )
        self.headers = dict(HEADERS)
        if auth:
            token = b64encode(f"prometheus:{PASSWORD}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"

    def scrape(self) -> float:
        started = time.perf_counter()
        self.conn.request("GET", "/metrics", headers=self.headers)
        resp = self.conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status
        return time.perf_counter() - started


async def timed(scraper: Scraper, repeat: int) -> tuple[float, float]:
    """(first scrape, median of the next `repeat`) in seconds."""
    first = await asyncio.to_thread(scraper.scrape)
    rest = [await asyncio.to_thread(scraper.scrape) for _ in range(repeat)]
    scraper.conn.close()
    return first, statistics.median(rest)


def secured_files(workdir: Path) -> tuple[Path, Path, ssl.SSLContext]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(workdir / "tls.key"))
    cert.cert_chain_pems[0].write_to_path(str(workdir / "tls.crt"))
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    config = workdir / "web.yml"
    config.write_text(
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
        f"basic_auth_users:\n  prometheus: {hashed}\n"
    )
    key = workdir / "hmac.key"
    key.write_text("a benchmark key of more than sixteen bytes")
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return config, key, client


async def bench(users: int, repeat: int, workdir: Path) -> dict[str, float]:
    registry: AgentRegistry = await build_registry(users)
    runner, _ = await start_stock(registry)
    results = {"users": float(users)}
    _, results["stock"] = await timed(
        Scraper("127.0.0.1", runner.addresses[0][1], None, False), max(1, repeat // 2)
    )
    await runner.cleanup()

    config, key, client = secured_files(workdir)
    base = {
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "max_user_series": users,
        "webhook_token": "benchmark-only",
    }
    variants = {
        "ours": ({}, None),
        "tls+auth": ({"web_config_file": config}, client),
        "tls+auth+hmac": ({"web_config_file": config, "user_id_hmac_key_file": key}, client),
    }
    for name, (extra, ctx) in variants.items():
        server = await start_exporter(registry, Settings(**base, **extra))  # type: ignore[arg-type]
        try:
            first, median = await timed(
                Scraper("127.0.0.1", server.port, ctx, ctx is not None), repeat
            )
        finally:
            await server.stop()
        results[name] = median
        if name == "tls+auth":
            results["first_auth"] = first
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    names = ("stock", "ours", "tls+auth", "tls+auth+hmac")
    print(f"{'users':>8} " + " ".join(f"{n + ' ms':>17}" for n in names) + "  first auth ms")
    with tempfile.TemporaryDirectory() as d:
        for size in (int(s) for s in args.sizes.split(",")):
            r = await bench(size, args.repeat, Path(d))
            cells = " ".join(f"{r[n] * 1000:>8.1f} ({r['stock'] / r[n]:>5.1f}x)" for n in names)
            print(f"{size:>8,} {cells}  {r['first_auth'] * 1000:>13.1f}", flush=True)
    print("(Nx) = stock time / this path's time: above 1 is faster than the stock path.")


if __name__ == "__main__":
    asyncio.run(main())
