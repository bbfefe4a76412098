"""Model routing: which model serves a request, chosen before the call (see docs/routing.md).

A request names a model, a model group (``"model": "auto"``) or an alias; :class:`Router` walks its
rules in order and the first rule whose conditions all hold picks the served model. A rule can look at
the principal's tier, the route, tags, the task type (:func:`classify_task`), the exact input
tokens, the estimated output tokens and cost, the deadline, the remaining budget (budget pressure:
downgrade instead of refusing) and, when a :class:`DifficultyModel` is loaded, the predicted chance
that a cheap model gets the answer wrong.

    router = Router.from_config(routes=[
        {"name": "low-budget", "model": "gpt-4o-mini", "budget_remaining_below": 0.2},
        {"name": "code", "model": "gpt-4.1", "tasks": ["code"], "models": ["auto"]},
    ], groups={"auto": ["gpt-4o-mini", "gpt-4o"]})
    choice = router.choose(RouteFacts(requested="auto", text=prompt, input_tokens=812))
    choice.model, choice.rule   # ("gpt-4.1", "code") for a coding prompt

Everything here is pure and synchronous: no I/O, no clock.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

TASKS = ("code", "math", "extraction", "chat")


class RoutingError(ValueError):
    """A routing rule, group or model file is invalid; the message says which and why."""


# --- task type ------------------------------------------------------------------------------------

_CODE = re.compile(
    r"```|^\s*(def|class|import|#include|SELECT|public static)\b|\w+\([^)]*\)\s*[{:;]|"
    r"(?i:\b(python|javascript|typescript|java|c\+\+|rust|golang|sql|regex|bash|html|css)\b)|"
    r"(?i:\b(code|function|compile|bug|stack ?trace|exception|refactor|unit test|script|api endpoint)\b)",
    re.MULTILINE)
_EXTRACT = re.compile(
    r"\b(extract|parse|pull out|list (all|every)|find all|identify (all|the)|fill (in|out)|as json|"
    r"in json|into json|structured|fields?|entities|key[- ]value|table of)\b", re.IGNORECASE)
_MATH_WORDS = re.compile(
    r"\b(how many|how much|calculate|compute|solve|sum|total|percent|percentage|average|ratio|"
    r"fraction|equation|multiply|divide|times|each|per|remaining|left|cost|price|profit|"
    r"integral|derivative|probability|prove)\b|[=+*/^%$]", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")


def classify_task(text: str) -> str:
    """The task type of a prompt: ``code``, ``math``, ``extraction`` or ``chat``.

    A cheap keyword classifier (microseconds, no model): code markers first, then extraction verbs,
    then arithmetic (numbers together with quantity words). Its accuracy is measured in
    benchmarks/routing.py; treat it as a hint for routing, not a label.
    """
    if _CODE.search(text):
        return "code"
    if _EXTRACT.search(text):
        return "extraction"
    numbers = len(_NUMBER.findall(text))
    if numbers >= 2 and len(_MATH_WORDS.findall(text)) >= 2 or numbers >= 1 and _MATH_WORDS.search(text) and \
            re.search(r"\b(how many|how much|calculate|compute|solve)\b", text, re.IGNORECASE):
        return "math"
    return "chat"


# --- a learned difficulty score -------------------------------------------------------------------

_WORD = re.compile(r"[a-z]+|\d+|[^\sa-z\d]", re.IGNORECASE)


def _features(text: str, buckets: int) -> dict[int, float]:
    """Hashed word unigrams and bigrams (crc32: stable across processes), plus length and numbers."""
    words = [w.lower() if not w.isdigit() else "<num>" for w in _WORD.findall(text)]
    feats: dict[int, float] = {}
    for gram in words + [a + " " + b for a, b in zip(words, words[1:])]:
        h = zlib.crc32(gram.encode("utf-8")) % buckets
        feats[h] = feats.get(h, 0.0) + 1.0
    norm = math.sqrt(sum(v * v for v in feats.values())) or 1.0
    out = {h: v / norm for h, v in feats.items()}
    # Dense features live past the hashed range.
    out[buckets] = math.log1p(len(words)) / 8.0
    out[buckets + 1] = math.log1p(len(_NUMBER.findall(text))) / 4.0
    out[buckets + 2] = 1.0  # bias
    return out


@dataclass
class DifficultyModel:
    """P(the cheap model answers wrong | prompt): logistic regression on hashed prompt features.

    Train it on your own labelled traffic (``fit(prompts, weak_was_wrong)``), save it with
    ``to_dict`` and load it with ``from_dict``; a rule then routes on ``difficulty_above``.
    """

    buckets: int = 1 << 15
    weights: dict[int, float] = field(default_factory=dict)

    def score(self, text: str) -> float:
        z = sum(self.weights.get(h, 0.0) * v for h, v in _features(text, self.buckets).items())
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

    def fit(self, texts: Sequence[str], labels: Sequence[bool], *, epochs: int = 30, lr: float = 0.5,
            l2: float = 1e-4, seed: int = 0) -> DifficultyModel:
        """Stochastic gradient descent on the log loss, in a seeded order (deterministic)."""
        if len(texts) != len(labels) or not texts:
            raise RoutingError("fit needs as many labels as prompts, and at least one")
        rows = [(_features(t, self.buckets), 1.0 if y else 0.0) for t, y in zip(texts, labels)]
        order = list(range(len(rows)))
        state = seed or 1
        w = self.weights
        for epoch in range(epochs):
            for i in range(len(order) - 1, 0, -1):  # Fisher-Yates with a tiny LCG: no global RNG
                state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
                j = state % (i + 1)
                order[i], order[j] = order[j], order[i]
            step = lr / (1.0 + epoch)
            for k in order:
                x, y = rows[k]
                z = sum(w.get(h, 0.0) * v for h, v in x.items())
                p = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))
                g = p - y
                for h, v in x.items():
                    w[h] = w.get(h, 0.0) - step * (g * v + l2 * w.get(h, 0.0))
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "tokenlane.difficulty/1", "buckets": self.buckets,
                "weights": {str(h): round(v, 6) for h, v in self.weights.items() if abs(v) > 1e-6}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DifficultyModel:
        if data.get("kind") != "tokenlane.difficulty/1":
            raise RoutingError("not a tokenlane difficulty model (kind tokenlane.difficulty/1)")
        return cls(buckets=int(data["buckets"]), weights={int(h): float(v) for h, v in data["weights"].items()})


# --- rules ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteFacts:
    """What the router may look at, all known before the call."""

    requested: str                          # the body's model: a model, a group ("auto") or an alias
    text: str = ""                          # the prompt's text (classified, scored; never stored)
    input_tokens: int = 0                   # exact
    output_tokens: int = 0                  # estimated (p50)
    cost_usd: float = 0.0                   # estimated cost at the requested (or group default) model
    tier: str | None = None
    route: str = ""                         # the request path
    tags: frozenset[str] = frozenset()
    deadline_s: float | None = None
    budget_remaining: float | None = None   # share of the tightest budget still free, 0..1


@dataclass(frozen=True)
class Rule:
    """One routing rule: when every set condition holds, ``model`` serves the request."""

    name: str
    model: str
    models: tuple[str, ...] = ()            # requested models/groups this rule applies to (empty: any)
    tiers: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()            # path prefixes
    tags: tuple[str, ...] = ()              # any of them: a tag's key, or "key=value"
    tasks: tuple[str, ...] = ()
    min_input_tokens: int | None = None
    max_input_tokens: int | None = None
    min_output_tokens: int | None = None
    max_output_tokens: int | None = None
    min_cost_usd: float | None = None
    max_cost_usd: float | None = None
    deadline_below_s: float | None = None   # the request's deadline is tighter than this
    budget_remaining_below: float | None = None
    difficulty_above: float | None = None
    difficulty_below: float | None = None

    def matches(self, facts: RouteFacts, task: str, difficulty: float | None) -> bool:
        def within(value: float, low: float | None, high: float | None) -> bool:
            return (low is None or value >= low) and (high is None or value <= high)

        if self.models and facts.requested not in self.models:
            return False
        if self.tiers and facts.tier not in self.tiers:
            return False
        if self.routes and not any(facts.route.startswith(p) for p in self.routes):
            return False
        if self.tags and not facts.tags.intersection(self.tags):
            return False
        if self.tasks and task not in self.tasks:
            return False
        if not within(facts.input_tokens, self.min_input_tokens, self.max_input_tokens):
            return False
        if not within(facts.output_tokens, self.min_output_tokens, self.max_output_tokens):
            return False
        if not within(facts.cost_usd, self.min_cost_usd, self.max_cost_usd):
            return False
        if self.deadline_below_s is not None and (facts.deadline_s is None or facts.deadline_s >= self.deadline_below_s):
            return False
        if self.budget_remaining_below is not None and (
                facts.budget_remaining is None or facts.budget_remaining >= self.budget_remaining_below):
            return False
        if self.difficulty_above is not None or self.difficulty_below is not None:
            if difficulty is None:
                return False
            above = -1.0 if self.difficulty_above is None else self.difficulty_above
            below = 2.0 if self.difficulty_below is None else self.difficulty_below
            if not above < difficulty < below:
                return False
        return True

    @property
    def needs_text(self) -> bool:
        return bool(self.tasks) or self.difficulty_above is not None or self.difficulty_below is not None

    @property
    def needs_estimate(self) -> bool:
        return any(getattr(self, k) is not None for k in (
            "min_input_tokens", "max_input_tokens", "min_output_tokens", "max_output_tokens", "min_cost_usd",
            "max_cost_usd", "deadline_below_s"))


_LISTS = {"models", "tiers", "routes", "tags", "tasks"}
_INTS = {"min_input_tokens", "max_input_tokens", "min_output_tokens", "max_output_tokens"}
_FLOATS = {"min_cost_usd", "max_cost_usd", "deadline_below_s", "budget_remaining_below", "difficulty_above",
           "difficulty_below"}


def parse_rule(data: Mapping[str, Any], index: int = 0) -> Rule:
    """A :class:`Rule` from a config table; RoutingError names the rule and the bad key."""
    if not isinstance(data, Mapping):
        raise RoutingError(f"routes[{index}] must be a table, got {data!r}")
    where = f"routes[{index}] ({data.get('name', 'unnamed')})"
    known = {f.name for f in fields(Rule)}
    unknown = set(data) - known
    if unknown:
        raise RoutingError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    if not isinstance(data.get("model"), str) or not data["model"]:
        raise RoutingError(f"{where}: 'model' (the model this rule serves) is required")
    values: dict[str, Any] = {"name": str(data.get("name") or f"rule-{index + 1}"), "model": data["model"]}
    for key, value in data.items():
        if key in ("name", "model"):
            continue
        if key in _LISTS:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) and v for v in items):
                raise RoutingError(f"{where}: {key} must be a list of names")
            if key == "tasks" and set(items) - set(TASKS):
                raise RoutingError(f"{where}: tasks must be among {', '.join(TASKS)}, got {items}")
            values[key] = tuple(items)
        elif key in _INTS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise RoutingError(f"{where}: {key} must be a whole number >= 0, got {value!r}")
            values[key] = value
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or math.isnan(value):
                raise RoutingError(f"{where}: {key} must be a number >= 0, got {value!r}")
            values[key] = float(value)
    return Rule(**values)


@dataclass(frozen=True)
class RouteChoice:
    """The served model, the rule that chose it (None: the request's own model) and the task seen."""

    model: str
    rule: str | None
    task: str | None = None
    difficulty: float | None = None


class Router:
    """Ordered rules plus model groups; immutable, so a new config swaps the whole object."""

    def __init__(self, rules: Iterable[Rule] = (), groups: Mapping[str, Sequence[str]] | None = None,
                 difficulty: DifficultyModel | None = None) -> None:
        self.rules = tuple(rules)
        self.groups = {name: tuple(models) for name, models in (groups or {}).items()}
        for name, models in self.groups.items():
            if not models:
                raise RoutingError(f"model group {name!r} lists no model")
        self.difficulty = difficulty
        # What the facts must hold; the stage computes only that.
        self.needs_text = any(r.needs_text for r in self.rules)
        self.needs_estimate = any(r.needs_estimate for r in self.rules)
        self.needs_budget = any(r.budget_remaining_below is not None for r in self.rules)

    @classmethod
    def from_config(cls, routes: Sequence[Mapping[str, Any]] = (), groups: Mapping[str, Sequence[str]] | None = None,
                    difficulty: DifficultyModel | None = None) -> Router:
        return cls([parse_rule(r, i) for i, r in enumerate(routes)], groups, difficulty)

    def __bool__(self) -> bool:
        return bool(self.rules or self.groups)

    def is_group(self, name: str) -> bool:
        return name in self.groups

    def default_model(self, requested: str) -> str:
        """The model a request for ``requested`` gets when no rule matches: a group's first model."""
        return self.groups[requested][0] if requested in self.groups else requested

    def choose(self, facts: RouteFacts) -> RouteChoice:
        task = classify_task(facts.text) if self.needs_text else None
        difficulty = self.difficulty.score(facts.text) if self.difficulty is not None and self.needs_text else None
        for rule in self.rules:
            if rule.matches(facts, task or "", difficulty):
                return RouteChoice(self.default_model(rule.model), rule.name, task, difficulty)
        return RouteChoice(self.default_model(facts.requested), None, task, difficulty)


__all__ = ["DifficultyModel", "RouteChoice", "RouteFacts", "Router", "RoutingError", "Rule", "TASKS",
           "classify_task", "parse_rule"]
