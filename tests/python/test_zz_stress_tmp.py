import pytest, time
from test_middleware import server, rows, test_official_openai_sdk_normal_streamed_and_refused as _t  # noqa

@pytest.mark.parametrize("i", range(int(__import__("os").environ.get("N", "30"))))
def test_stress(server, i):
    try:
        _t(server)
    except AssertionError:
        rt = server[1]
        for k in range(3):
            for r in rows(rt):
                print({x: r[x] for x in ("id", "status", "created_at", "started_at", "finished_at", "decision", "reason", "cost_pico_usd", "end_user")})
            print("spooled", rt.ledger.spooled(), time.time())
            time.sleep(3)
        raise
