"""Budget alerts: which thresholds are due, once per window across processes, signed webhook
delivery to a real local receiver with a retry after a failure."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tokenlane.alerts import SIGNATURE_HEADER, Alert, AlertMarks, Alerts, due, sign, verify_signature
from tokenlane.sidecar import Sidecar

USD = 10**12


def usage(spent_usd: float, limit_usd: float = 10.0, start: int = 0, resets: float | None = 86400.0) -> dict:
    return {"spent_pico_usd": int(spent_usd * USD), "limit_pico_usd": int(limit_usd * USD), "window": "day",
            "window_start": start, "resets_at": resets}


def test_due_thresholds_refusal_and_forecast():
    assert due(usage(4.9), (0.5, 0.8, 1.0), now=80_000) == []
    assert [t for _, t, _, _ in due(usage(8.0), (0.5, 0.8, 1.0), now=80_000)] == [0.5, 0.8]
    # The hard cap stopped spend short of the limit: the refusal is the 100 % moment.
    refused = due(usage(9.97), (0.5, 0.8, 1.0), now=80_000, refused=True)
    assert ("threshold", 1.0, "refused", None) in refused
    # 3 USD spent after 10 % of the day projects 30 USD: over the 10 USD budget.
    kind, threshold, reason, projected = due(usage(3.0), (0.5,), now=8640, forecast=True)[0]
    assert (kind, threshold, reason) == ("forecast", 1.0, "forecast") and projected == 30 * USD
    assert due(usage(3.0), (0.5,), now=8000) == []  # too early in the window to project
    assert due(usage(3.0), (0.5,), now=8640, forecast=False) == []
    assert due({"spent_pico_usd": 5, "limit_pico_usd": None}, (0.5,), now=0) == []  # no budget, no alert


def test_each_threshold_fires_once_per_window(tmp_path):
    alerts = Alerts(AlertMarks(Sidecar(str(tmp_path / "t.db"))), forecast=False)
    first = alerts.check("acme", usage(5.5), now=1000)
    assert [(a.kind, a.threshold) for a in first] == [("threshold", 0.5)]
    assert alerts.check("acme", usage(6.0), now=1001) == []
    assert [a.threshold for a in alerts.check("acme", usage(10.0), now=1002)] == [0.8, 1.0]
    assert alerts.check("acme", usage(10.0), now=1003, refused=True) == []  # 100 % already fired
    # The next window starts over; another principal has its own marks.
    assert [a.threshold for a in alerts.check("acme", usage(6.0, start=86400, resets=172800), now=90000)] == [0.5]
    assert [a.threshold for a in alerts.check("other", usage(6.0), now=1004)] == [0.5]
    listed = alerts.marks.list(principal="acme")
    assert len(listed) == 4 and {r["delivery"] for r in listed} == {"none"}
    assert listed[0]["payload"]["principal"] == "acme"


def _claim_in_process(path: str, results: multiprocessing.Queue) -> None:
    alerts = Alerts(AlertMarks(Sidecar(path)), forecast=False)
    fired = alerts.check("shared", usage(9.0), now=500)
    results.put(sorted(a.threshold for a in fired))


def test_marks_are_shared_by_worker_processes(tmp_path):
    path = str(tmp_path / "shared.db")
    Sidecar(path).close()  # the tables exist before the race
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    workers = [ctx.Process(target=_claim_in_process, args=(path, results)) for _ in range(4)]
    for w in workers:
        w.start()
    fired = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    # 0.5 and 0.8 are due in every worker; each is delivered by exactly one of them.
    assert sorted(t for f in fired for t in f) == [0.5, 0.8]
    assert len(AlertMarks(Sidecar(path)).list()) == 2


def test_signature_round_trip_and_tampering():
    body = b'{"threshold": 0.5}'
    header = sign("s3cret", body, 1_700_000_000)
    assert verify_signature("s3cret", body, header, now=1_700_000_010)
    assert not verify_signature("s3cret", body + b" ", header, now=1_700_000_010)
    assert not verify_signature("other", body, header, now=1_700_000_010)
    assert not verify_signature("s3cret", body, header, now=1_700_001_000)  # too old: a replay
    assert not verify_signature("s3cret", body, "garbage", now=1_700_000_010)


class Receiver:
    """A real local webhook receiver: answers the first ``fail_first`` posts with 503."""

    def __init__(self, fail_first: int = 0, status: int = 200) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.fail_first, self.status = fail_first, status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.posts.append((dict(self.headers), body))
                failing = len(receiver.posts) <= receiver.fail_first
                self.send_response(503 if failing else receiver.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_is_signed_retried_after_a_failure_and_recorded(tmp_path):
    seen: list[Alert] = []
    with Receiver(fail_first=1) as receiver:
        alerts = Alerts(AlertMarks(Sidecar(str(tmp_path / "w.db"))), forecast=False, webhook=receiver.url,
                        secret="whsec", backoff_s=0.01, on_alert=seen.append)
        [alert] = alerts.check("acme", usage(5.0), now=10)
        asyncio.run(alerts.deliver(alert))
    assert len(receiver.posts) == 2  # 503, then delivered
    headers, body = receiver.posts[-1]
    payload = json.loads(body)
    assert payload["principal"] == "acme" and payload["threshold"] == 0.5
    assert payload["spent_usd"] == 5.0 and payload["limit_usd"] == 10.0 and payload["window"] == "day"
    assert verify_signature("whsec", body, headers[SIGNATURE_HEADER])
    assert seen == [alert]
    [row] = alerts.marks.list()
    assert (row["delivery"], row["attempts"], row["last_error"]) == ("delivered", 2, None)


def test_webhook_gives_up_and_records_the_failure(tmp_path):
    with Receiver(fail_first=100) as receiver:
        alerts = Alerts(AlertMarks(Sidecar(str(tmp_path / "f.db"))), forecast=False, webhook=receiver.url,
                        attempts=3, backoff_s=0.01)
        [alert] = alerts.check("acme", usage(5.0), now=10)
        asyncio.run(alerts.deliver(alert))
    assert len(receiver.posts) == 3
    [row] = alerts.marks.list()
    assert (row["delivery"], row["attempts"], row["last_error"]) == ("failed", 3, "HTTP 503")


@pytest.mark.parametrize("status", [400, 410])
def test_webhook_client_error_is_not_retried(tmp_path, status):
    with Receiver(status=status) as receiver:
        alerts = Alerts(AlertMarks(Sidecar(str(tmp_path / "c.db"))), forecast=False, webhook=receiver.url,
                        backoff_s=0.01)
        [alert] = alerts.check("acme", usage(5.0), now=10)
        asyncio.run(alerts.deliver(alert))
    assert len(receiver.posts) == 1
    assert alerts.marks.list()[0]["delivery"] == "failed"


def test_a_failing_hook_does_not_stop_the_webhook(tmp_path):
    def broken(alert: Alert) -> None:
        raise RuntimeError("slack is down")

    with Receiver() as receiver:
        alerts = Alerts(AlertMarks(Sidecar(str(tmp_path / "h.db"))), forecast=False, webhook=receiver.url,
                        on_alert=broken)
        [alert] = alerts.check("acme", usage(5.0), now=10)
        asyncio.run(alerts.deliver(alert))
    assert len(receiver.posts) == 1


def test_alert_settings_from_env_kwargs_and_their_errors():
    from tokenlane.config import ConfigError, load_settings

    s = load_settings(environ={"TOKENLANE_ALERT_WEBHOOK": "https://hooks.example/x",
                               "TOKENLANE_ALERT_THRESHOLDS": "0.9, 0.25"})
    assert s.alert_webhook == "https://hooks.example/x" and s.alert_thresholds == [0.25, 0.9]
    assert load_settings(environ={}).alert_thresholds == [0.5, 0.8, 1.0]
    assert load_settings(environ={}, alert_thresholds=[]).alert_thresholds == []
    for bad in ({"alert_thresholds": [0.5, "x"]}, {"alert_thresholds": [0]}, {"alert_thresholds": 5},
                {"alert_webhook": "ftp://x"}):
        with pytest.raises(ConfigError, match="alert_"):
            load_settings(environ={}, **bad)


def test_replicas_on_two_hosts_fire_once_through_redis(tmp_path):
    """Two replicas with their own ledger files share a redis:// state: each threshold fires once."""
    from cache_support import redis_server

    from tokenlane.alerts import RedisAlertMarks, open_alert_marks

    with redis_server(tmp_path) as url:
        hosts = [Alerts(open_alert_marks(Sidecar(str(tmp_path / f"host{i}.db")), url), forecast=False)
                 for i in range(2)]
        assert all(isinstance(h.marks, RedisAlertMarks) for h in hosts)
        fired = [a.threshold for h in hosts for a in h.check("acme", usage(8.5), now=100)]
        fired += [a.threshold for h in hosts for a in h.check("acme", usage(10.0), now=101)]
        assert sorted(fired) == [0.5, 0.8, 1.0]
        # A new window starts over, on either host.
        assert [a.threshold for a in hosts[1].check("acme", usage(6.0, start=86400, resets=172800), now=90000)] == [0.5]
        # A fresh process of host 0 knows what fired (from Redis) and stays quiet.
        again = Alerts(open_alert_marks(Sidecar(str(tmp_path / "host0.db")), url), forecast=False)
        assert again.check("acme", usage(10.0), now=102) == []


def test_a_budgets_alerts_are_delivered_in_order_retries_included(tmp_path):
    """Alerts checked together (records applied in one batch: 50 % and 80 % at once) or one
    right after the other go out in the order the spend crossed them, even when the first post
    fails and is retried."""
    from tokenlane.stages.observe import Observe

    with Receiver(fail_first=1) as receiver:
        alerts = Alerts(AlertMarks(Sidecar(str(tmp_path / "o.db"))), forecast=False, webhook=receiver.url,
                        backoff_s=0.05)
        half, most = alerts.check("acme", usage(8.5), now=10)
        observe = Observe(None, None, lambda tenant: True, lambda: 10.0, alerts=alerts)  # type: ignore[arg-type]

        async def main() -> None:
            observe._loop = asyncio.get_running_loop()
            observe._spawn(half)
            observe._spawn(most)
            await observe.drain()

        asyncio.run(main())
    assert [json.loads(body)["threshold"] for _, body in receiver.posts] == [0.5, 0.5, 0.8]
