"""What a request costs, exactly, from a real price table (C++ core; see docs/pricing.md).

    pricing = tokenlane.Pricing.default()
    pricing.cost("gpt-4o", input_tokens=1_000_000).usd              # 2.5
    pricing.cost_of_usage("claude-sonnet-4-5", response["usage"])     # Anthropic's convention applied

Money is integer pico-dollars (1e-12 USD) inside: ``Cost.total_pico_usd`` is exact, ``Cost.decimal``
is an exact ``Decimal``, and ``sum(costs)`` never drifts. ``Cost.usd`` is a float for display.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import Any

from . import _core

PICO_PER_USD = 10**12
DEFAULT_TABLE = Path(__file__).resolve().parent / "data" / "prices.json"

_MONEY_FIELDS = ("input", "cached_input", "cache_write", "output", "reasoning", "total")


@functools.lru_cache(maxsize=None)
def _cost_fields(cls: type) -> tuple[str, ...]:
    """A dataclass's field names, looked up once (dataclasses.fields builds them on every call)."""
    return tuple(f.name for f in fields(cls))
@functools.lru_cache(maxsize=None)
def _core_keys(cls: type) -> tuple[str, ...]:
    """The core's cost dict keys, in the order of the dataclass's fields ("input_pico_usd" is "input")."""
    return tuple(name.removesuffix("_pico_usd") for name in _cost_fields(cls))


_COUNT_FIELDS = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens")


def usd_text(pico: int) -> str:
    """Plain decimal USD (no exponent), as the cost headers carry it."""
    if type(pico) is not int:
        return format(Decimal(pico).scaleb(-12).normalize(), "f") if pico else "0"
    whole, frac = divmod(-pico if pico < 0 else pico, PICO_PER_USD)  # integers: no Decimal per header
    text = f"{whole}.{frac:012d}".rstrip("0") if frac else str(whole)
    return "-" + text if pico < 0 else text


def _usd(pico: int) -> Decimal:
    return Decimal(pico).scaleb(-12).normalize() if pico else Decimal(0)


@dataclass(frozen=True)
class Cost:
    """The price of one request (or, after ``+``, of several), in exact pico-dollars.

    ``input_tokens`` counts every prompt token; ``cached_input_tokens`` and ``cache_write_tokens``
    of them were cache reads and writes. ``output_tokens`` counts every completion token, of which
    ``reasoning_tokens`` were reasoning. ``model`` is the table key that priced the request ("" if
    the fallback price did, or if costs of different models were added).
    """

    model: str
    provider: str
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    batch: bool
    input_pico_usd: int
    cached_input_pico_usd: int
    cache_write_pico_usd: int
    output_pico_usd: int
    reasoning_pico_usd: int
    total_pico_usd: int
    long_context_above: int = 0  # the long-context tier threshold that applied, 0 if none
    batch_discounted: bool = False
    fallback: bool = False

    @classmethod
    def _from_core(cls, d: Mapping[str, Any]) -> Cost:
        return cls(*[d[key] for key in _core_keys(cls)])  # positionally: once per priced request

    @classmethod
    def _from_fields(cls, values: tuple[Any, ...]) -> Cost:
        """From the core's values in field order, without the frozen ``__init__``'s per-field
        ``object.__setattr__`` (a Cost is built on every answered request)."""
        cost = object.__new__(cls)
        cost.__dict__.update(zip(_cost_fields(cls), values))
        return cost

    @property
    def usd(self) -> float:
        """Total in USD as a float (display only; sum ``Cost`` objects or ``total_pico_usd``)."""
        return self.total_pico_usd / PICO_PER_USD

    @property
    def decimal(self) -> Decimal:
        """Total in USD, exact."""
        return _usd(self.total_pico_usd)

    @property
    def total_micro_usd(self) -> Decimal:
        """Total in micro-dollars (1e-6 USD), exact."""
        return Decimal(self.total_pico_usd).scaleb(-6)

    @property
    def usd_str(self) -> str:
        """Total in USD as an exact decimal string, e.g. ``"0.0025"``."""
        return format(self.decimal, "f")

    def breakdown(self) -> dict[str, Decimal]:
        """Exact USD per part: input, cached_input, cache_write, output, reasoning, total."""
        return {k: _usd(getattr(self, f"{k}_pico_usd")) for k in _MONEY_FIELDS}

    def __str__(self) -> str:
        return f"${self.usd_str}"

    def __add__(self, other: Cost) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        same = self.model == other.model
        return Cost(
            model=self.model if same else "",
            provider=self.provider if self.provider == other.provider else "",
            batch=self.batch and other.batch,
            long_context_above=max(self.long_context_above, other.long_context_above),
            batch_discounted=self.batch_discounted or other.batch_discounted,
            fallback=self.fallback or other.fallback,
            **{k: getattr(self, k) + getattr(other, k) for k in _COUNT_FIELDS},
            **{f"{k}_pico_usd": getattr(self, f"{k}_pico_usd") + getattr(other, f"{k}_pico_usd") for k in _MONEY_FIELDS},
        )

    def __radd__(self, other: object) -> Cost:
        if other == 0:  # sum() starts from 0
            return self
        return NotImplemented  # type: ignore[return-value]


def _read_config(path: str | os.PathLike[str]) -> tuple[str, str]:
    """The JSON text of a price file (JSON, or TOML converted to JSON) and its directory."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise _core.UnknownNameError(f"cannot read price table '{p}': {exc.strerror}") from exc
    if p.suffix.lower() == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError as exc:  # Python 3.10
            raise _core.InvalidArgumentError("TOML price configs need Python 3.11+ (tomllib); use JSON") from exc
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise _core.InvalidArgumentError(f"{p} is not valid TOML: {exc}") from exc
        return json.dumps(data), str(p.parent)
    return raw.decode("utf-8"), str(p.parent)


def _to_json(obj: Any, what: str) -> str:
    if isinstance(obj, (str, bytes)):
        return obj.decode("utf-8") if isinstance(obj, bytes) else obj
    if hasattr(obj, "model_dump"):  # pydantic objects, e.g. the openai / anthropic SDK usage types
        obj = obj.model_dump()
    try:
        return json.dumps(obj)
    except (TypeError, ValueError) as exc:
        raise _core.InvalidArgumentError(f"{what} is not JSON-serialisable: {exc}") from exc


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _core.InvalidArgumentError(f"{name} must be a non-negative int, got {value!r}")
    return value


def _per_mtok(pico: int | None) -> Decimal | None:
    # pico-dollars per token == micro-dollars per million tokens
    return None if pico is None else Decimal(pico).scaleb(-6).normalize()


class Pricing:
    """An immutable price table: LiteLLM's schema, tokenlane configs, exact costs. Thread-safe."""

    def __init__(self, core: _core.Pricing) -> None:
        self._core = core

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def default(cls) -> Pricing:
        """The table shipped with tokenlane (python/tokenlane/data/prices.json), loaded once."""
        return _default()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Pricing:
        """Reads a LiteLLM ``model_prices_and_context_window.json`` or a tokenlane config (JSON, or
        TOML on Python 3.11+); the shape decides. A config extends the default table unless it says
        ``"extends": "none"`` or names another file."""
        text, base_dir = _read_config(path)
        return cls(_core.Pricing.from_json(text, str(DEFAULT_TABLE), base_dir))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: str | os.PathLike[str] = ".") -> Pricing:
        """Like ``load`` from an in-memory LiteLLM table or tokenlane config."""
        return cls(_core.Pricing.from_json(_to_json(data, "price table"), str(DEFAULT_TABLE), str(base_dir)))

    def with_overrides(self, config: Mapping[str, Any] | str | os.PathLike[str]) -> Pricing:
        """A new table: this one with a tokenlane config (a dict or a file) applied on top.

        ``{"models": {"gpt-4o": {"input_per_mtok": 2.0}}}`` patches one price of a known model;
        unknown names are added; ``"aliases"`` and ``"fallback"`` are set."""
        if isinstance(config, Mapping):
            text = _to_json(config, "pricing config")
        else:
            text, _ = _read_config(config)
        return Pricing(self._core.with_config(text))

    # -- prices ------------------------------------------------------------------------------------

    def cost(
        self,
        model: str,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        batch: bool = False,
    ) -> Cost:
        """The cost of a request. ``input_tokens`` counts every prompt token, of which
        ``cached_input_tokens`` were cache reads and ``cache_write_tokens`` cache writes;
        ``output_tokens`` counts every completion token, reasoning included.

        UnknownNameError for a model not in the table (unless a fallback is configured),
        InvalidArgumentError when the counts contradict each other."""
        counts = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cached_input_tokens": cached_input_tokens,
            "cache_write_tokens": cache_write_tokens,
            "reasoning_tokens": reasoning_tokens,
        }
        for name, value in counts.items():
            _check_count(name, value)
        return Cost._from_core(
            self._core.cost(
                model, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens, bool(batch)
            )
        )

    def total_pico_usd(self, model: str, input_tokens: int = 0, output_tokens: int = 0,
                       cached_input_tokens: int = 0) -> int:
        """``cost(...).total_pico_usd`` without building the :class:`Cost` (the pricing stage
        prices every request this way: it needs totals only)."""
        for name, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens),
                            ("cached_input_tokens", cached_input_tokens)):
            _check_count(name, value)
        return self._core.cost(model, input_tokens, output_tokens, cached_input_tokens, 0, 0, False)["total"]

    def cost_of_usage(self, model: str, usage: Any, batch: bool = False) -> Cost:
        """The cost of a finished request from the provider's raw ``usage`` object (a dict, a JSON
        string, an SDK object with ``model_dump()``, or a whole response holding ``usage``).

        OpenAI's ``prompt_tokens`` include ``prompt_tokens_details.cached_tokens``; Anthropic's
        ``input_tokens`` exclude ``cache_read_input_tokens`` and ``cache_creation_input_tokens``;
        Gemini's ``usageMetadata`` is read too. The keys present decide the convention."""
        if type(usage) is dict:  # the usual case (a response's parsed usage): no json.dumps, no dict back
            fields = self._core.cost_of_usage_fields(model, usage, bool(batch))
            if fields is not None:
                return Cost._from_fields(fields)
        return Cost._from_core(self._core.cost_of_usage(model, _to_json(usage, "usage"), bool(batch)))

    # -- the table ---------------------------------------------------------------------------------

    def resolve(self, model: str) -> str | None:
        """The table key ``model`` resolves to (prefixes and snapshot dates handled), or None."""
        return self._core.resolve(model)

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self._core.resolve(model) is not None

    def entry(self, model: str) -> dict[str, Any]:
        """The prices of a model, as exact ``Decimal`` USD per million tokens, plus its limits and
        the source of the price."""
        e = self._core.entry(model)

        def per_mtok(prices: Mapping[str, int | None]) -> dict[str, Decimal | None]:
            return {k: _per_mtok(v) for k, v in prices.items()}

        return {
            "key": e["key"],
            "provider": e["provider"],
            "mode": e["mode"],
            "per_mtok": per_mtok(e["base"]),
            "long_context": [
                {"above_tokens": t["above_tokens"], **per_mtok({k: v for k, v in t.items() if k != "above_tokens"})}
                for t in e["tiers"]
            ],
            "batch_per_mtok": per_mtok(e["batch"]),
            "batch_discount_percent": e["batch_discount_percent"],
            "max_input_tokens": e["max_input_tokens"],
            "max_output_tokens": e["max_output_tokens"],
            "source": e["source"],
            "as_of": e["as_of"],
        }

    def max_input_tokens(self, model: str) -> int | None:
        return self._core.max_input_tokens(model)

    def max_output_tokens(self, model: str) -> int | None:
        return self._core.max_output_tokens(model)

    def provider(self, model: str) -> str:
        return self._core.provider(model)

    def models(self) -> list[str]:
        """Every table key, sorted."""
        return self._core.models()

    @property
    def has_fallback(self) -> bool:
        return self._core.has_fallback

    @property
    def skipped_entries(self) -> int:
        """Entries of a loaded LiteLLM file without a per-token price (images, audio, ...)."""
        return self._core.skipped_entries

    def __repr__(self) -> str:
        extra = ", with fallback" if self._core.has_fallback else ""
        return f"<Pricing {len(self._core.models())} models{extra}>"


def batch_discount_percent(provider: str) -> int | None:
    """The batch discount tokenlane applies for a provider (50 for openai, anthropic, gemini,
    vertex_ai, mistral), or None when it knows none."""
    return _core.batch_discount_percent(provider)


@functools.lru_cache(maxsize=1)
def _default() -> Pricing:
    return Pricing(_core.Pricing.from_file(str(DEFAULT_TABLE), ""))
