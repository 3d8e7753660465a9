"""A backend worker as the Deployment patch configures it, for the engine-less image test.

Runs with the image's Python (no test dependency): `python backend_worker.py WORKER`. The
socket directory comes from AGENT_REGISTRY_EXPORTER_SOCKET_DIR, the variable the patch sets
on the backend container. Prints one line once the socket serves.
"""

from __future__ import annotations

import asyncio
import sys

from agent_registry_exporter import AgentRegistry, serve_registry


async def main(worker: str) -> None:
    registry = AgentRegistry()
    for n in range(3):
        await registry.register_user_agent("alice", f"agent-{n}", object())
    socket = await serve_registry(registry, worker=worker)
    print(f"worker {worker} serving {socket}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
