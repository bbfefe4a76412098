"""Routing rules, model groups, the task classifier and the learned difficulty score."""

from __future__ import annotations

import pytest

from tokenlane.routing import DifficultyModel, RouteFacts, Router, RoutingError, classify_task, parse_rule


def test_classify_task_kinds():
    assert classify_task("Write a Python function that reverses a list") == "code"
    assert classify_task("Why does this raise an exception?\n```\nx = [][0]\n```") == "code"
    assert classify_task("Extract every person's name and email from the text below as JSON") == "extraction"
    assert classify_task("Tom has 3 apples and buys 5 more. How many apples does he have?") == "math"
    assert classify_task("Tell me about your favourite season") == "chat"


ROUTES = [
    {"name": "budget-pressure", "model": "gpt-4o-mini", "budget_remaining_below": 0.2},
    {"name": "expensive", "model": "gpt-4o-mini", "min_cost_usd": 0.05},
    {"name": "code", "model": "gpt-4.1", "tasks": ["code"], "models": ["auto"]},
    {"name": "gold-tier", "model": "gpt-4o", "tiers": ["gold"], "models": ["auto"]},
]


def test_rules_pick_by_budget_cost_task_and_tier():
    router = Router.from_config(ROUTES, groups={"auto": ["gpt-4o-mini", "gpt-4o"]})
    facts = RouteFacts(requested="gpt-4o", text="hello", cost_usd=0.001, budget_remaining=0.9)
    assert router.choose(facts).model == "gpt-4o" and router.choose(facts).rule is None
    low = RouteFacts(requested="gpt-4o", text="hello", cost_usd=0.001, budget_remaining=0.1)
    assert (router.choose(low).model, router.choose(low).rule) == ("gpt-4o-mini", "budget-pressure")
    pricey = RouteFacts(requested="gpt-4o", text="hello", cost_usd=0.2, budget_remaining=0.9)
    assert router.choose(pricey).rule == "expensive"
    code = RouteFacts(requested="auto", text="Fix this bug in my function", cost_usd=0.001)
    choice = router.choose(code)
    assert (choice.model, choice.rule, choice.task) == ("gpt-4.1", "code", "code")
    # the same prompt naming a model directly is not re-routed by an "auto"-only rule
    assert router.choose(RouteFacts(requested="gpt-4o", text="Fix this bug in my function")).model == "gpt-4o"
    assert router.choose(RouteFacts(requested="auto", text="hi", tier="gold")).rule == "gold-tier"
    # no rule matched: a group's first model
    assert router.choose(RouteFacts(requested="auto", text="hi")) .model == "gpt-4o-mini"


def test_unknown_budget_does_not_trigger_budget_pressure():
    router = Router.from_config(ROUTES[:1])
    assert router.choose(RouteFacts(requested="gpt-4o", budget_remaining=None)).rule is None


def test_token_deadline_route_and_tag_conditions():
    router = Router.from_config([
        {"name": "long", "model": "gemini-2.5-flash", "min_input_tokens": 100_000},
        {"name": "urgent", "model": "gpt-4o-mini", "deadline_below_s": 2},
        {"name": "support", "model": "claude-haiku-4-5", "routes": ["/support"], "tags": ["triage"]},
    ])
    assert router.choose(RouteFacts(requested="gpt-4o", input_tokens=200_000)).rule == "long"
    assert router.choose(RouteFacts(requested="gpt-4o", deadline_s=1.0)).rule == "urgent"
    assert router.choose(RouteFacts(requested="gpt-4o", deadline_s=5.0)).rule is None
    assert router.choose(RouteFacts(requested="x", route="/support/chat", tags=frozenset({"triage"}))).rule == "support"
    assert router.choose(RouteFacts(requested="x", route="/support/chat")).rule is None


@pytest.mark.parametrize("bad, message", [
    ({"name": "x"}, "'model'"),
    ({"model": "m", "tasks": ["poetry"]}, "tasks must be among"),
    ({"model": "m", "min_cost_usd": -1}, "number >= 0"),
    ({"model": "m", "min_input_tokens": 1.5}, "whole number"),
    ({"model": "m", "colour": "red"}, "unknown key"),
])
def test_bad_rules_are_refused_with_a_reason(bad, message):
    with pytest.raises(RoutingError, match=message):
        parse_rule(bad)


def test_difficulty_model_learns_and_round_trips():
    hard = [f"Compute the compound interest on {i} dollars over {i % 7 + 2} years at {i % 5 + 1} percent, "
            f"then subtract the tax of {i % 3 + 1} percent" for i in range(40)]
    easy = [f"Sam has {i} apples. How many apples does Sam have?" for i in range(40)]
    model = DifficultyModel(buckets=1 << 12).fit(hard + easy, [True] * 40 + [False] * 40, epochs=10)
    assert model.score("Compute the compound interest on 50 dollars over 3 years at 2 percent") > 0.7
    assert model.score("Ann has 4 apples. How many apples does Ann have?") < 0.3
    again = DifficultyModel.from_dict(model.to_dict())
    assert abs(again.score(hard[0]) - model.score(hard[0])) < 1e-3
    router = Router.from_config([{"name": "hard", "model": "gpt-4o", "difficulty_above": 0.5}],
                                groups={"auto": ["gpt-4o-mini"]}, difficulty=model)
    assert router.choose(RouteFacts(requested="auto", text=hard[3])).model == "gpt-4o"
    assert router.choose(RouteFacts(requested="auto", text=easy[3])).model == "gpt-4o-mini"
    with pytest.raises(RoutingError):
        DifficultyModel.from_dict({"kind": "other"})
