"""Output-token estimators: how long will the answer be? (C++ core; see docs/estimators.md)

    est = tokenlane.Estimator.default()            # the blend: usable cold, improves online
    e = est.estimate(messages, "gpt-4o", max_tokens=512, context={"route": "/chat"})
    e.p50, e.p90, e.source                         # 212, 530, "learned"
    est.observe(messages, "gpt-4o", response["usage"]["completion_tokens"], context={"route": "/chat"})
    est.save("estimator.json"); tokenlane.Estimator.load("estimator.json")

Every estimate is capped by ``max_tokens`` and by the model's maximum output tokens, which comes
from the price table (``pricing=``; unknown models get a generic ceiling). Estimators are
thread-safe; ``estimate`` and ``observe`` release the GIL.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from . import _core
from .pricing import Pricing
from .records import Prompt, flatten_prompt, load_records, truncated

_CONTEXT_KEYS = ("route", "tenant", "task")


@dataclass(frozen=True)
class Estimate:
    """Predicted output tokens: ``p50`` (expected) and ``p90`` (the ``quantile`` level, to reserve
    budget for), both >= 1 and capped; ``source`` names what produced them ("learned",
    "history:template", "history:template:xmodel", "history:route", "heuristic", ...)."""

    p50: int
    p90: int
    quantile: float
    source: str


def _context(context: Mapping[str, Any] | None) -> tuple[str, str, str]:
    if context is None:
        return "", "", ""
    if not isinstance(context, Mapping):
        raise _core.InvalidArgumentError("context must be a dict with optional keys route, tenant, task")
    unknown = set(context) - set(_CONTEXT_KEYS)
    if unknown:
        raise _core.InvalidArgumentError(
            f"unknown context keys {sorted(unknown)}: expected only route, tenant, task"
        )
    values = []
    for key in _CONTEXT_KEYS:
        v = context.get(key)
        if v is not None and not isinstance(v, str):
            raise _core.InvalidArgumentError(f"context[{key!r}] must be a str or None")
        values.append(v or "")
    return values[0], values[1], values[2]


def _count(name: str, value: Any, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _core.InvalidArgumentError(f"{name} must be an int >= {minimum} or None, got {value!r}")
    return value


class _ModelCaps:
    """Max output tokens per model from a price table, looked up once per model name."""

    def __init__(self, pricing: Pricing | str | None) -> None:
        if pricing == "default":
            pricing = Pricing.default()
        elif pricing is not None and not isinstance(pricing, Pricing):
            raise _core.InvalidArgumentError("pricing must be a tokenlane.Pricing, 'default' or None")
        self.pricing = pricing
        self._cache: dict[str, int | None] = {}
        self._lock = threading.Lock()

    def __call__(self, model: str) -> int | None:
        try:
            return self._cache[model]
        except KeyError:
            pass
        cap = None
        if self.pricing is not None and isinstance(model, str) and model:
            try:
                cap = self.pricing.max_output_tokens(model)
            except (KeyError, ValueError):
                cap = None  # not in the table: the generic prior's ceiling applies
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[model] = cap
        return cap


class Estimator:
    """Predicts output tokens (``estimate``) and learns from actual usage (``observe``).

    Use ``Estimator.default()`` (the blend of the three estimators below) or one of
    ``HeuristicEstimator``, ``LearnedEstimator``, ``HistoryEstimator``. ``pricing`` supplies each
    model's maximum output tokens for the cap ("default": the shipped table; None: no table).
    """

    _kind: ClassVar[str | None] = None  # the core kind this class wraps (None: any)

    def __init__(self, core: _core.Estimator, *, pricing: Pricing | str | None = "default") -> None:
        if not isinstance(core, _core.Estimator):
            raise TypeError("use Estimator.default(), Estimator.load(path) or a subclass constructor")
        self._core = core
        self._caps = _ModelCaps(pricing)

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def default(
        cls,
        *,
        learned: LearnedEstimator | None = None,
        history: HistoryEstimator | None = None,
        history_prior: float = 1.0,
        coverage_step: float = 0.03,
        pricing: Pricing | str | None = "default",
    ) -> Estimator:
        """The blend: history for templates seen before (on this model or others), else the learned
        model (shifted by the route's or tenant's observed bias), with p90 kept at 90% coverage
        online. ``learned`` (e.g. from ``train``) and ``history`` are copied, not shared; by default
        the learned part starts from the shipped hand-set priors and the history is empty."""
        base = learned._core if learned is not None else _core.Estimator.learned()
        hist = history._core if history is not None else None
        core = _core.Estimator.blend(base, hist, float(history_prior), float(coverage_step), 0.01)
        return Estimator(core, pricing=pricing)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, pricing: Pricing | str | None = "default") -> Estimator:
        """Reads a state written by ``save``. ``LearnedEstimator.load`` etc. insist on their kind;
        ``Estimator.load`` returns whatever kind the file holds. InvalidArgumentError for a file of
        another format or version."""
        return cls._wrap(_core.Estimator.load(os.fspath(path)), pricing)

    @classmethod
    def from_json(cls, text: str, *, pricing: Pricing | str | None = "default") -> Estimator:
        return cls._wrap(_core.Estimator.from_json(text), pricing)

    @classmethod
    def _wrap(cls, core: _core.Estimator, pricing: Pricing | str | None) -> Estimator:
        target = _CLASSES.get(core.kind, Estimator)
        if cls._kind is not None and core.kind != cls._kind:
            raise _core.InvalidArgumentError(
                f"this file holds a {core.kind} estimator, not a {cls._kind} one: use "
                f"{target.__name__}.load or Estimator.load"
            )
        obj = object.__new__(target)
        Estimator.__init__(obj, core, pricing=pricing)
        return obj

    def copy(self) -> Estimator:
        """An independent estimator with the same state."""
        return type(self)._wrap(_core.Estimator.from_json(self._core.to_json()), self._caps.pricing)

    # -- use -----------------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """"heuristic", "learned", "history" or "blend"."""
        return self._core.kind

    def estimate(
        self,
        prompt_or_messages: Prompt,
        model: str,
        max_tokens: int | None = None,
        context: Mapping[str, Any] | None = None,
        input_tokens: int | None = None,
        *,
        model_max_output: int | None = None,
    ) -> Estimate:
        """Predicted output tokens for one request. ``context``: optional route, tenant, task.
        ``input_tokens``: the exact prompt count when known (else approximated from the text).
        ``model_max_output`` overrides the price table's maximum for this model."""
        route, tenant, task = _context(context)
        cap = _count("model_max_output", model_max_output, 1)
        p50, p90, q, source = self._core.estimate(
            flatten_prompt(prompt_or_messages),
            _model(model),
            _count("max_tokens", max_tokens, 1),
            cap if cap is not None else self._caps(model),
            _count("input_tokens", input_tokens, 0),
            route,
            tenant,
            task,
        )
        return Estimate(p50, p90, q, source)

    def observe(
        self,
        prompt_or_messages: Prompt,
        model: str,
        output_tokens: int,
        context: Mapping[str, Any] | None = None,
        input_tokens: int | None = None,
        *,
        max_tokens: int | None = None,
        finish_reason: str | None = None,
    ) -> None:
        """Feeds back the actual output tokens of a finished request (online learning).

        A response cut by its cap (``finish_reason`` "length", Anthropic's "max_tokens", or
        ``output_tokens >= max_tokens``) is censored: its length is a lower bound of what the model
        wanted to write, so it can raise an estimate below it but never lowers one."""
        route, tenant, task = _context(context)
        out = _count("output_tokens", output_tokens, 0)
        if out is None:
            raise _core.InvalidArgumentError("output_tokens must be an int >= 0")
        cap = _count("max_tokens", max_tokens, 1)
        self._core.observe(
            flatten_prompt(prompt_or_messages), _model(model), out, _count("input_tokens", input_tokens, 0),
            route, tenant, task, truncated(out, cap, finish_reason),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the whole state as versioned JSON (atomically replacing ``path``)."""
        self._core.save(os.fspath(path))

    def to_json(self) -> str:
        return self._core.to_json()

    def __repr__(self) -> str:
        return f"<tokenlane {type(self).__name__} kind={self.kind}>"


def _model(model: Any) -> str:
    if not isinstance(model, str) or not model:
        raise _core.InvalidArgumentError(f"model must be a non-empty str, got {model!r}")
    return model


class HeuristicEstimator(Estimator):
    """The baseline: a prior per task type (``context["task"]``) scaled by the input length. It does
    not learn; every benchmark compares against it."""

    _kind = "heuristic"

    def __init__(self, *, pricing: Pricing | str | None = "default") -> None:
        super().__init__(_core.Estimator.heuristic(), pricing=pricing)


class LearnedEstimator(Estimator):
    """Hashed word n-grams and explicit length cues ("in 3 sentences", "one word", "essay", code,
    script) -> linear quantile regression of log(output tokens) for p50 and p90, plus a per-model
    verbosity offset. Starts from hand-set priors on the cues; ``fit`` trains it offline and
    ``observe`` keeps training it online."""

    _kind = "learned"

    def __init__(self, *, pricing: Pricing | str | None = "default") -> None:
        super().__init__(_core.Estimator.learned(), pricing=pricing)

    def fit(self, data: Any, *, epochs: int = 4, seed: int = 1) -> LearnedEstimator:
        """Trains on ``data`` (a DataFrame with columns prompt, model, output_tokens and optional
        route, tenant, task, input_tokens; a list of such dicts; or a JSON/JSONL path, see
        ``tokenlane.evaluate``). Deterministic for a given seed. Returns self."""
        _fit(self._core, load_records(data), epochs, seed)
        return self

    def verbosity(self, model: str) -> float:
        """How much longer than average this model answers (the learned per-model factor, 1.0 for
        models never seen)."""
        return self._core.verbosity(_model(model))


class HistoryEstimator(Estimator):
    """Online quantile sketches of what each prompt template (normalized first ``template_chars``
    characters of the first and last message), route, tenant and model produced, backing off to
    coarser keys until one has ``min_count`` observations; the heuristic before any data."""

    _kind = "history"

    def __init__(
        self,
        *,
        min_count: int = 3,
        max_keys: int = 200_000,
        template_chars: int = 96,
        pricing: Pricing | str | None = "default",
    ) -> None:
        super().__init__(_core.Estimator.history(min_count, max_keys, template_chars), pricing=pricing)


_CLASSES: dict[str, type[Estimator]] = {
    "heuristic": HeuristicEstimator,
    "learned": LearnedEstimator,
    "history": HistoryEstimator,
    "blend": Estimator,
}


def _fit(core: _core.Estimator, records: Any, epochs: int, seed: int) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise _core.InvalidArgumentError("epochs must be an int >= 1")
    core.fit(
        records.prompts, records.models, records.output_tokens, records.input_tokens,
        records.routes, records.tenants, records.tasks, epochs, seed,
    )


def train(data: Any, *, epochs: int = 4, seed: int = 1, pricing: Pricing | str | None = "default") -> LearnedEstimator:
    """The training recipe: a LearnedEstimator fitted on your own prompt/response data.

    ``data`` is what ``tokenlane.evaluate`` reads (a DataFrame, records, or JSON/JSONL files,
    including AlpacaEval's ``model_outputs.json``). Weights trained on data under a
    non-commercial licence (AlpacaEval is CC BY-NC 4.0) inherit its terms: use them to evaluate,
    do not ship them. Blend the result with ``Estimator.default(learned=...)``.
    """
    est = LearnedEstimator(pricing=pricing)
    return est.fit(data, epochs=epochs, seed=seed)


__all__ = [
    "Estimate",
    "Estimator",
    "HeuristicEstimator",
    "HistoryEstimator",
    "LearnedEstimator",
    "flatten_prompt",
    "train",
]
