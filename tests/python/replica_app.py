"""One replica of a scaled-out service, for the scale-out tests and benchmarks/scaleout.py:

    TOKENLANE_DB=postgresql://... TOKENLANE_STATE=redis://... python -m uvicorn replica_app:app \\
        --app-dir tests/python --port 0

An OpenAI-compatible proxy route on the simulated provider behind TokenlaneMiddleware, configured
only by TOKENLANE_* environment variables. With REPLICA_TRACK_URL (a Redis URL) set, the route
counts the upstream calls in flight over all replicas and keeps the highest count seen, so a test
can check the global concurrency limit with a measure of its own (not tokenlane's bookkeeping), and
records every upstream call by the question it asks (which replica, when): a question containing
``[slow=N]`` takes N seconds the first time it is asked. REPLICA_PAUSED=1 pauses this replica's
scheduler (it queues and defers, runs nothing itself). REPLICA_BARE=1 leaves the middleware out
(the benchmark's baseline). REPLICA_TIMINGS=1 times the calls to PostgreSQL and Redis (GET /timings;
replica_timings.py, for benchmarks/scaleout.py --stages).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tokenlane import Tokenlane, TokenlaneMiddleware
from tokenlane.providers import SimulatedProvider

provider = SimulatedProvider(time_scale=float(os.environ.get("REPLICA_TIME_SCALE", "0.02")))
app = FastAPI()
_track = None
if os.environ.get("REPLICA_TRACK_URL"):
    import redis.asyncio as aioredis

    _track = aioredis.from_url(os.environ["REPLICA_TRACK_URL"])
    _enter = _track.register_script(
        "local n = redis.call('INCR', KEYS[1]) "
        "if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end return n")


@app.post("/v1/chat/completions")
async def chat(request: Request) -> Any:
    body = await request.json()
    if _track is None:
        return JSONResponse(await provider.chat(body))
    await _enter(keys=["replica:inflight", "replica:max_inflight"])
    try:
        question = str(body["messages"][-1]["content"])
        runs = await _track.rpush(f"replica:runs:{question}", json.dumps({"pid": os.getpid(), "at": time.time()}))
        slow = re.search(r"\[slow=(\d+(?:\.\d+)?)\]", question)
        if slow and runs == 1:
            await asyncio.sleep(float(slow.group(1)))
        return JSONResponse(await provider.chat(body))
    finally:
        await _track.decr("replica:inflight")


@app.get("/health")
async def health() -> dict[str, Any]:
    return {"status": "ok", "pid": os.getpid()}


if os.environ.get("REPLICA_TIMINGS"):
    import replica_timings

    replica_timings.install(app)

if not os.environ.get("REPLICA_BARE"):
    runtime = Tokenlane()
    if os.environ.get("REPLICA_PAUSED"):
        runtime.pause()
    app.add_middleware(TokenlaneMiddleware, runtime=runtime)
