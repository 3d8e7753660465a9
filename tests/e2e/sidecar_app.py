"""A FastAPI backend whose workers each serve their registry to the sidecar (e2e helper).

    AGENT_REGISTRY_EXPORTER_SOCKET_DIR=DIR uvicorn tests.e2e.sidecar_app:app --workers 2

`POST /users/{user_id}/agents?count=N` registers N agents on whichever worker takes the
connection; `on`/`not_on` (a pid) make a worker refuse with 409 so the caller can retry
on a new connection until the worker it wants answers.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI, HTTPException

from agent_registry_exporter import AgentRegistry, serve_registry

registry = AgentRegistry()


class Agent:
    async def aclose(self) -> None:
        pass


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    handle = await serve_registry(registry)  # worker name: this process's pid
    yield
    await handle.stop()


app = FastAPI(lifespan=lifespan)


@app.post("/users/{user_id}/agents")
async def add_agents(
    user_id: str, count: int = 1, on: int | None = None, not_on: int | None = None,
    age_hours: float = 0.0,
) -> dict[str, int]:  # fmt: skip
    pid = os.getpid()
    if (on is not None and pid != on) or pid == not_on:
        raise HTTPException(409, f"worker {pid} is not the one asked for")
    session = await registry.get_user_session(user_id)
    start = session.agent_count
    for n in range(start, start + count):
        await registry.register_user_agent(user_id, f"agent-{n}", Agent())
    if age_hours:
        session.created_at = datetime.now(UTC) - timedelta(hours=age_hours)
    return {"pid": pid, "agents": session.agent_count}
