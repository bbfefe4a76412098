"""The soak benchmark (benchmarks/soak.py), short: a uvicorn app behind the middleware under a
steady mixed load (JSON, streamed, repeated, refused, invalid, abandoned streams), stopped with
SIGTERM. Every request gets the outcome its kind expects, and afterwards no row is left running
or queued and nothing stays reserved. The long run and its table are in the README."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import soak  # noqa: E402


@pytest.mark.skipif(sys.platform != "linux", reason="samples /proc")
def test_short_soak_every_outcome_as_expected_and_nothing_left_open():
    result = soak.run(minutes=0.2, rate=8, interval=4)
    s = result["summary"]
    assert s["requests"] > 50 and s["unexpected"] == 0, [x["unexpected_examples"] for x in result["samples"]]
    assert s["ledger"]["still_running"] == 0 and s["ledger"]["still_queued"] == 0, s["ledger"]
    assert s["ledger"]["reserved_pico_usd"] == 0
    assert {"succeeded", "rejected"} <= set(s["ledger"]["rows_by_status"])
