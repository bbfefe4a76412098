"""tokenlane.trim_messages: exact budgets, system prompt and newest turns kept, tool calls whole."""

from __future__ import annotations

import pytest

import tokenlane
from tokenlane.trim import TRUNCATION_MARK, TrimError

MODEL = "gpt-4o"


def turns(n: int) -> list[dict]:
    out: list[dict] = [{"role": "system", "content": "You are terse."}]
    for i in range(n):
        out.append({"role": "user", "content": f"question {i}: " + "lorem ipsum dolor " * 20})
        out.append({"role": "assistant", "content": f"answer {i}: " + "sit amet " * 15})
    out.append({"role": "user", "content": "and the last question?"})
    return out


def test_fits_already_unchanged() -> None:
    msgs = turns(2)
    assert tokenlane.trim_messages(msgs, MODEL, 10_000) == msgs


@pytest.mark.parametrize("budget", [120, 200, 333, 500, 700])
def test_largest_newest_suffix_within_budget(budget: int) -> None:
    msgs = turns(8)
    assert tokenlane.count_chat_tokens(msgs, MODEL) > budget
    out = tokenlane.trim_messages(msgs, MODEL, budget)
    assert tokenlane.count_chat_tokens(out, MODEL) <= budget
    assert out[0] == msgs[0] and out[-1] == msgs[-1]
    assert out[1:] == msgs[len(msgs) - len(out) + 1:]  # a suffix: the newest turns
    # one more (older) message would not fit: the trim is exact, not conservative
    longer = [msgs[0], *msgs[len(msgs) - len(out):]]
    assert tokenlane.count_chat_tokens(longer, MODEL) > budget


def test_tool_call_never_split_from_its_results() -> None:
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": '{"y": 2}'}}]}
    results = [{"role": "tool", "tool_call_id": "c1", "content": "one " * 40},
               {"role": "tool", "tool_call_id": "c2", "content": "two " * 40}]
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "old " * 50},
            {"role": "user", "content": "use tools"}, call, *results, {"role": "user", "content": "thanks"}]
    for budget in range(40, tokenlane.count_chat_tokens(msgs, MODEL) + 1, 7):
        try:
            out = tokenlane.trim_messages(msgs, MODEL, budget)
        except TrimError:
            continue
        assert tokenlane.count_chat_tokens(out, MODEL) <= budget
        has_call = call in out
        assert has_call == all(r in out for r in results) == any(r in out for r in results)


def test_truncates_oldest_kept_turn_instead_of_dropping() -> None:
    msgs = turns(3)
    budget = tokenlane.count_chat_tokens([msgs[0], *msgs[-4:]], MODEL) + 40  # q1 (~70 tokens) half fits
    out = tokenlane.trim_messages(msgs, MODEL, budget, truncate=True)
    assert tokenlane.count_chat_tokens(out, MODEL) <= budget
    assert out[1]["content"].endswith(TRUNCATION_MARK)
    assert msgs[-5]["content"].startswith(out[1]["content"][: -len(TRUNCATION_MARK)])
    assert out[2:] == msgs[-4:]


def test_too_small_budget_raises_with_the_count() -> None:
    msgs = turns(1)
    need = tokenlane.count_chat_tokens([msgs[0], msgs[-1]], MODEL)
    with pytest.raises(TrimError) as info:
        tokenlane.trim_messages(msgs, MODEL, need - 1)
    assert info.value.tokens == need and info.value.budget == need - 1
    with pytest.raises(ValueError):
        tokenlane.trim_messages(msgs, MODEL, 0)


def test_input_not_modified_and_other_families_approximate() -> None:
    msgs = turns(5)
    before = [dict(m) for m in msgs]
    out = tokenlane.trim_messages(msgs, "claude-3-5-sonnet-20240620", 300)
    assert msgs == before and len(out) < len(msgs) and out[-1] == msgs[-1]
