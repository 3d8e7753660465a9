"""A backend worker in its own process serving its registry on a socket (test helper).

    python -m tests.sidecar_worker SOCKET_DIR [NAME] [--users N] [--hang-flag FILE]
                                   [--retry-seconds S]

Without NAME the worker claims a slot (w0, w1, ...). Prints "serving <worker>" once the
socket is up; when serve_registry returned without serving (a socket directory problem),
first "waiting: <problem>". `--hang-flag`: the snapshot request touches FILE and never
answers (a fault injected so a test can kill the worker mid-scrape).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from agent_registry_exporter import AgentRegistry, serve_registry
from agent_registry_exporter.sources import socket_api


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("socket_dir")
    parser.add_argument("name", nargs="?")
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--hang-flag")
    parser.add_argument("--retry-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.hang_flag:
        flag = Path(args.hang_flag)

        async def hang(*args: object) -> bytes:  # in place of encode_snapshot
            await asyncio.to_thread(flag.touch)
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

        socket_api.encode_snapshot = hang  # type: ignore[assignment]
    registry = AgentRegistry()
    for n in range(args.users):
        for a in range(n % 5 + 1):
            await registry.register_user_agent(
                f"{args.name or 'slot'}-user-{n}", f"agent-{a}", object()
            )
    handle = await serve_registry(
        registry, args.socket_dir, worker=args.name, retry_seconds=args.retry_seconds
    )
    if not handle.serving:
        print(f"waiting: {handle.problem}", flush=True)
    await handle.wait_serving()
    print(f"serving {handle.worker}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
