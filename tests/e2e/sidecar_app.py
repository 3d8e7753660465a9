"""A FastAPI backend whose workers each serve their registry to the sidecar (e2e helper).

    AGENT_REGISTRY_EXPORTER_SOCKET_DIR=DIR uvicorn tests.e2e.sidecar_app:app --workers 2

`POST /users/{user_id}/agents?count=N` registers N agents on whichever worker takes the
connection; `on`/`not_on` (a worker's slot, w0 or w1) make a worker refuse with 409 so the
caller can retry on a new connection until the worker it wants answers.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI, HTTPException

from agent_registry_exporter import AgentRegistry, RegistrySocket, serve_registry

registry = AgentRegistry()
served: list[RegistrySocket] = []


class Agent:
    async def aclose(self) -> None:
        pass


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    handle = await serve_registry(registry)  # worker name: the lowest free slot
    served.append(handle)
    yield
    await handle.stop()


app = FastAPI(lifespan=lifespan)


@app.post("/users/{user_id}/agents")
async def add_agents(
    user_id: str, count: int = 1, on: str | None = None, not_on: str | None = None,
    age_hours: float = 0.0,
) -> dict[str, int | str | None]:  # fmt: skip
    worker = served[0].worker
    if (on is not None and worker != on) or worker == not_on:
        raise HTTPException(409, f"worker {worker} is not the one asked for")
    session = await registry.get_user_session(user_id)
    start = session.agent_count
    for n in range(start, start + count):
        await registry.register_user_agent(user_id, f"agent-{n}", Agent())
    if age_hours:
        session.created_at = datetime.now(UTC) - timedelta(hours=age_hours)
    return {"worker": worker, "pid": os.getpid(), "agents": session.agent_count}
