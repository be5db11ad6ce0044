"""Bench service, asyncio variant: a FastAPI app (served by uvicorn on the pure-asyncio loop
with h11) that makes one downstream HTTP call per request with httpx.AsyncClient.

The downstream URL comes from BENCH_DOWNSTREAM_URL. One client per worker process, opened at
startup, so downstream connections are pooled and reused.
"""

import contextlib
import os

import httpx
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

DOWNSTREAM = os.environ["BENCH_DOWNSTREAM_URL"]


@contextlib.asynccontextmanager
async def lifespan(app):
    async with httpx.AsyncClient(timeout=5) as client:
        app.state.client = client
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/", response_class=PlainTextResponse)
async def index():
    downstream = await app.state.client.get(DOWNSTREAM)
    return "downstream %d\n" % downstream.status_code
