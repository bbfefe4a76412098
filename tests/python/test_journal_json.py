"""The ledger journal's JSON built by the core (issue 16): ``_core.json_text`` writes the bytes of
``json.dumps`` and ``_core.journal_record`` the line the reconcile stage wrote with bytes
formatting before, byte for byte, and the ledger applies those lines as it did."""

from __future__ import annotations

import enum
import json
import math
import sys
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from tokenlane import _core
from tokenlane.ledger import Ledger


class Level(enum.IntEnum):
    HIGH = 7


class Name(str):
    pass


TRICKY_STRINGS = [
    "", "plain", 'quote " and backslash \\', "\b\f\n\r\t", "\x00\x01\x1f\x7f", "é", "naïve café", "日本語のテキスト",
    "emoji 😀 and 𝄞", "\U0010ffff", "\ud800 lone high", "lone low \udc00", "\udbff\udfff", "Привет, мир", "/</script>",
    "~" * 3, "x" * 5000,
]
TRICKY_NUMBERS = [
    0, -1, 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**40, -(10**300), True, False,
    0.0, -0.0, 1.0, 0.1, 1e16, 1e-5, 1e-4, 123456789.125, 1.7976931348623157e308, 5e-324, 1 / 3,
    float("nan"), float("inf"), float("-inf"), Level.HIGH,
]

# Every JSON-able Python value json.dumps takes, nested: surrogates included in strings.
keys = st.one_of(st.text(alphabet=st.characters(blacklist_categories=())), st.integers(), st.floats(),
                 st.booleans(), st.none())
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**60), max_value=10**60),
                    st.floats(), st.text(alphabet=st.characters(blacklist_categories=())), st.text(),
                    st.sampled_from(TRICKY_STRINGS), st.sampled_from(TRICKY_NUMBERS))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.lists(inner, max_size=5).map(tuple),
    st.dictionaries(keys, inner, max_size=5)), max_leaves=30)


def _old_record(id: str, row_json: str, fields: dict[str, Any] | None = None, levels: tuple[str, ...] = (),
                reserved: int = 0, actual: int = 0, reserved_tokens: int = 0, tokens: int = 0) -> bytes:
    """The journal line as reconcile.py built it before the core did (the decided record without
    ``fields``, else the final one)."""
    if fields is None:
        return b'{"id":%s,"row":%s}\n' % (json.dumps(id).encode(), row_json.encode())
    settle = (b',"budgets":%s,"reserved":%d,"actual":%d,"reserved_tokens":%d,"tokens":%d,"now":%r' % (
        json.dumps(levels).encode(), reserved, actual, reserved_tokens, tokens, fields["finished_at"])
              ) if levels else b""
    return b'{"id":%s,"row":%s,"final":%s%s}\n' % (json.dumps(id).encode(), row_json.encode(),
                                                    json.dumps(fields).encode(), settle)


@pytest.mark.parametrize("value", TRICKY_STRINGS + TRICKY_NUMBERS, ids=repr)
def test_scalars_as_json_dumps(value: Any) -> None:
    assert _core.json_text(value) == json.dumps(value).encode()
    assert _core.json_text([value, {"k": value}]) == json.dumps([value, {"k": value}]).encode()


@settings(max_examples=600, deadline=None)
@given(values)
def test_values_as_json_dumps(value: Any) -> None:
    assert _core.json_text(value) == json.dumps(value).encode()
    assert _core.json_text(value, compact=True) == json.dumps(value, separators=(",", ":")).encode()


def test_keys_subclasses_and_containers() -> None:
    for value in [{}, [], (), {"a": {}}, [[], ()], {1: "int", 2.5: "float", True: "t", None: "n", "s": 1},
                  {float("nan"): 1, float("inf"): 2, -(2**70): 3}, OrderedDict([("b", 1), ("a", 2)]),
                  {Name("sub"): Name("class")}, {Level.HIGH: Level.HIGH}, [1, (2, [3, (4,)])]]:
        assert _core.json_text(value) == json.dumps(value).encode(), value


def test_refuses_what_json_dumps_refuses() -> None:
    for bad in [{1, 2}, object(), b"bytes", {(1, 2): "tuple key"}, [1, {"x": complex(1, 2)}]]:
        with pytest.raises(TypeError):
            json.dumps(bad)
        with pytest.raises(TypeError):
            _core.json_text(bad)
    cycle: list[Any] = [1]
    cycle.append({"again": cycle})
    with pytest.raises(ValueError, match="Circular reference"):
        _core.json_text(cycle)
    deep: list[Any] = []
    for _ in range(sys.getrecursionlimit() + 10):
        deep = [deep]
    with pytest.raises(RecursionError):
        _core.json_text(deep)
    if hasattr(sys, "get_int_max_str_digits") and sys.get_int_max_str_digits():
        with pytest.raises(ValueError):
            _core.json_text(10 ** (sys.get_int_max_str_digits() + 1))
    # The same object written again (not a cycle) is fine, as in json.dumps.
    shared = {"a": 1}
    assert _core.json_text([shared, shared]) == json.dumps([shared, shared]).encode()


def _ledger_row(i: int, text: str, extra: Any) -> dict[str, Any]:
    """A row shaped like Reconcile.ledger_row's, with values that stress the encoder."""
    return {
        "owner": "host:1:2", "id": f"req-{i}", "tenant": f"team-{text[:20]}", "user_id": None,
        "key_id": None, "end_user": text or None, "route": "/v1/chat/completions", "model": "gpt-4o-mini",
        "status": "running", "decision": "admit", "reason": None, "priority": "standard",
        "deadline_s": None if i % 2 else 1.5 * i, "created_at": 1765000000.123456 + i, "max_tokens": 2**40 + i,
        "est_input_tokens": 1008, "est_output_p50": 120, "est_output_p90": 400, "est_cost_pico_usd": 10**18 + i,
        "prompt_preview": (text * 3)[:2000], "requested_model": None, "route_rule": None, "batch": i % 2,
        "cache": None, "untrimmed_input_tokens": None, "extra": extra,
    }


rows = st.builds(_ledger_row, st.integers(0, 10**6), st.text(alphabet=st.characters(blacklist_categories=())), values)
finals = st.fixed_dictionaries({
    "status": st.sampled_from(["succeeded", "failed"]), "finished_at": st.floats(0, 2e9),
    "input_tokens": st.integers(0, 10**6), "output_tokens": st.integers(0, 2**70), "cost_pico_usd": st.integers(),
    "error": st.one_of(st.none(), st.text()), "queue_ms": st.floats(allow_nan=True),
    "response_preview": st.text(alphabet=st.characters(blacklist_categories=())), "nested": values,
})
levels = st.lists(st.text(min_size=1), max_size=4).map(tuple)
amounts = st.integers(0, 2**61)


@settings(max_examples=400, deadline=None)
@given(st.text(), rows, st.one_of(st.none(), finals), levels, amounts, amounts, amounts, amounts)
def test_journal_record_as_the_bytes_formatting_before(id: str, row: dict[str, Any], final: dict[str, Any] | None,
                                                       levels: tuple[str, ...], reserved: int, actual: int,
                                                       reserved_tokens: int, tokens: int) -> None:
    row_json = _core.json_text(row)
    assert row_json == json.dumps(row).encode()
    if final is None:
        expected = _old_record(id, row_json.decode())
        assert _core.journal_record(id, row_json) == expected
        assert _core.journal_record(id, row) == expected  # the row as a dict: rendered on the way
        return
    expected = _old_record(id, row_json.decode(), final, levels, reserved, actual, reserved_tokens, tokens)
    now = final["finished_at"]
    for r in (row_json, row):
        assert _core.journal_record(id, r, final, levels, reserved, actual, reserved_tokens, tokens, now) == expected
        assert _core.journal_record(id, r, final, list(levels), reserved=reserved, actual=actual,
                                    reserved_tokens=reserved_tokens, tokens=tokens, now=now) == expected


def test_journal_record_odd_inputs() -> None:
    # `now` written as `%r` wrote it (repr; an int clock stays an int), settle ints as `%d`.
    for now in (1765000000.5, 1765000000, 0.1 + 0.2, float("inf")):
        final = {"finished_at": now, "status": "succeeded"}
        assert _core.journal_record("a", b"{}", final, ["t"], True, 2**62, 0, 3, now) == \
            _old_record("a", "{}", final, ("t",), True, 2**62, 0, 3)
    with pytest.raises(ValueError):
        _core.journal_record("a", b"{}", None, ["t"])  # a settlement belongs to a final record
    with pytest.raises(TypeError):
        _core.journal_record("a", b"{}", {"finished_at": 1.0}, ["t"], 1.5)


def test_the_ledger_applies_core_built_records(tmp_path) -> None:
    """Decided then final records, built by the core as the reconcile stage builds them, land in
    SQLite with their fields, and the final record settles the budget once (replays change nothing)."""
    led = Ledger(str(tmp_path / "l.db"))
    led.set_budget("team-ü", 1_000_000_000_000, "total")  # $1
    texts = ["plain", "naïve 日本語 😀", 'quote " back \\ slash\nnewline', ""]
    lines = []
    for i, text in enumerate(texts):
        row = _ledger_row(i, text, None)
        row.pop("extra")
        row["tenant"] = "team-ü"
        assert led.reserve_all(["team-ü"], 5_000, now=row["created_at"], hold=row["id"], owner="host:1:2") == -1
        row_json = _core.json_text(row)
        lines.append(_core.journal_record(row["id"], row_json))
        final = {"status": "succeeded", "finished_at": row["created_at"] + 0.25, "input_tokens": 1008,
                 "output_tokens": 10 + i, "cost_pico_usd": 1_000 + i, "error": None, "started_at": row["created_at"],
                 "queue_ms": 0.5, "reserved_pico_usd": 5_000, "response_preview": text[::-1]}
        lines.append(_core.journal_record(row["id"], row_json, final, ("team-ü",), 5_000, 1_000 + i, 0,
                                          1018 + 2 * i, final["finished_at"]))
    batch = b"".join(lines)
    assert led.apply_journal(batch) == []
    assert led.apply_journal(batch) == []  # a replay: each record exactly once
    for i, text in enumerate(texts):
        got = led.get_request(f"req-{i}")
        assert got is not None
        assert got["status"] == "succeeded" and got["tenant"] == "team-ü"
        assert got["prompt_preview"] == (text * 3)[:2000] and got["response_preview"] == text[::-1]
        assert got["end_user"] == (text or None) and got["max_tokens"] == 2**40 + i
        assert got["est_cost_pico_usd"] == 10**18 + i and got["cost_pico_usd"] == 1_000 + i
        assert got["output_tokens"] == 10 + i
        assert math.isclose(got["finished_at"], 1765000000.123456 + i + 0.25)
    usage = led.usage("team-ü", now=1765000000.0 + 10)
    assert usage["spent_pico_usd"] == sum(1_000 + i for i in range(len(texts)))
    assert usage["reserved_pico_usd"] == 0
    led.close()
