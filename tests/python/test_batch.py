"""The batch lane: OpenAI's /v1/files + /v1/batches round trip against the simulated provider."""

from __future__ import annotations

import asyncio

from loopback import serve
from tokenlane import Pricing
from tokenlane.batch import BatchLane
from tokenlane.providers import OpenAICompatibleProvider, SimulatedProvider
from tokenlane.upstream_server import upstream_app


def body(i: int) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Question {i}: list three fruits"}],
            "max_tokens": 30, "stream": True}


async def three_through(provider) -> tuple[list[dict], BatchLane]:
    lane = BatchLane(provider, flush_after_s=0.05, poll_s=0.02)
    results = await asyncio.gather(*(lane.run(body(i)) for i in range(3)))
    await lane.aclose()
    return results, lane


def test_batch_round_trip_over_http_and_batch_price():
    sim = SimulatedProvider(time_scale=0)
    with serve(upstream_app(sim)) as base:
        provider = OpenAICompatibleProvider(base + "/v1")

        async def go():
            try:
                return await three_through(provider)
            finally:
                await provider.aclose()

        results, lane = asyncio.run(go())
    assert len(lane.batches) == 1 and lane.batches[0]["status"] == "completed"
    assert lane.batches[0]["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    # each result went back to the request that asked for it
    direct = [sim._completion({k: v for k, v in body(i).items() if k != "stream"}) for i in range(3)]
    assert [r["choices"][0]["message"]["content"] for r in results] == \
        [d["choices"][0]["message"]["content"] for d in direct]
    pricing = Pricing.default()
    usage = results[0]["usage"]
    assert pricing.cost_of_usage("gpt-4o-mini", usage, batch=True).total_pico_usd * 2 == \
        pricing.cost_of_usage("gpt-4o-mini", usage).total_pico_usd


def test_bad_lines_fail_only_their_own_request():
    sim = SimulatedProvider(time_scale=0)

    async def go():
        lane = BatchLane(sim, flush_after_s=0.05, poll_s=0.02)
        good = lane.run(body(1))
        bad = lane.run({"model": "gpt-4o-mini", "messages": "not a list"})
        results = await asyncio.gather(good, bad, return_exceptions=True)
        await lane.aclose()
        return results

    good, bad = asyncio.run(go())
    assert good["choices"][0]["message"]["content"]
    assert getattr(bad, "status", None) == 400


class NoBatchAPI:
    """An upstream with chat only: the off-peak executor runs the lane when live traffic is idle."""

    def __init__(self):
        self.sim = SimulatedProvider(time_scale=0)
        self.calls = 0

    async def chat(self, b):
        self.calls += 1
        return await self.sim.chat(b)


def test_off_peak_executor_waits_for_idle():
    upstream = NoBatchAPI()
    idle = [False]

    async def go():
        lane = BatchLane(upstream, poll_s=0.01, idle=lambda: idle[0])
        task = asyncio.ensure_future(lane.run(body(1)))
        await asyncio.sleep(0.05)
        assert upstream.calls == 0 and not task.done()
        idle[0] = True
        return await task

    assert asyncio.run(go())["choices"][0]["message"]["content"] and upstream.calls == 1
