"""Evaluating output-token estimators on real prompt/response data, from a notebook or a script.

    df = tokenlane.evaluate(tokenlane.Estimator.default(), "model_outputs.json", online=True)
    tokenlane.plot_predictions(tokenlane.LearnedEstimator(), data, model="gpt-4o")

Data: a pandas DataFrame with columns ``prompt`` (str or chat messages), ``model``,
``output_tokens`` and optional ``route``, ``tenant``, ``task``, ``max_tokens``, ``input_tokens``;
a list of such dicts; or paths to JSON / JSONL files (or a directory of them). Records without
``output_tokens`` but with the response text in ``output`` are counted with the exact o200k_base
tokenizer, which reads AlpacaEval's ``model_outputs.json`` (``instruction``, ``output``,
``generator``) as is. Needs the ``notebook`` extra (pandas, scipy; matplotlib for plots).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _core
from .estimators import Estimator, flatten_prompt, truncated

if TYPE_CHECKING:
    import pandas as pd

_OPTIONAL_TEXT = ("route", "tenant", "task")
_OPTIONAL_COUNTS = ("max_tokens", "input_tokens")


@dataclass
class Records:
    """Parallel columns, in the order given (the online replay order)."""

    prompts: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)
    routes: list[str] | None = None
    tenants: list[str] | None = None
    tasks: list[str] | None = None
    max_tokens: list[int | None] | None = None
    input_tokens: list[int | None] | None = None
    prompt_keys: list[str] = field(default_factory=list)  # the original prompt text, for grouping
    # Cut by max_tokens (finish_reason "length", or output_tokens >= max_tokens): a lower bound.
    truncated: list[bool] | None = None

    def __len__(self) -> int:
        return len(self.prompts)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _iter_path(path: Path) -> Iterable[Mapping[str, Any]]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl") and p.is_file())
        if not files:
            raise _core.InvalidArgumentError(f"no .json or .jsonl files under {path}")
        for f in files:
            yield from _iter_path(f)
        return
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _core.InvalidArgumentError(f"cannot read evaluation data {path}: {exc}") from exc
    if path.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise _core.InvalidArgumentError(f"{path}:{n}: not JSON: {exc}") from exc
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _core.InvalidArgumentError(f"{path}: not JSON: {exc}") from exc
    if isinstance(data, Mapping):
        data = data.get("records", data.get("data"))
    if not isinstance(data, list):
        raise _core.InvalidArgumentError(f"{path}: expected a JSON list of records")
    yield from data


def _rows(data: Any) -> Iterable[Mapping[str, Any]]:
    if isinstance(data, (str, os.PathLike)):
        return _iter_path(Path(data))
    if isinstance(data, (list, tuple)) and data and all(isinstance(d, (str, os.PathLike)) for d in data):
        return (row for d in data for row in _iter_path(Path(d)))
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is in the notebook and dev extras
        pd = None
    if pd is not None and isinstance(data, pd.DataFrame):
        return data.to_dict("records")
    if isinstance(data, Iterable) and not isinstance(data, Mapping):
        return data
    raise _core.InvalidArgumentError(
        "data must be a DataFrame, a list of records, or paths to JSON/JSONL files"
    )


def load_records(data: Any) -> Records:
    """Reads evaluation/training data into parallel columns (see the module docstring)."""
    if isinstance(data, Records):
        return data
    from .encoding import get_encoding

    enc = None
    r = Records()
    opt_text: dict[str, list[str]] = {k: [] for k in _OPTIONAL_TEXT}
    opt_count: dict[str, list[int | None]] = {k: [] for k in _OPTIONAL_COUNTS}
    seen_text = set()
    seen_count = set()
    reasons: list[Any] = []
    for i, row in enumerate(_rows(data)):
        if not isinstance(row, Mapping):
            raise _core.InvalidArgumentError(f"record {i} is not a dict")
        prompt = row.get("prompt", row.get("messages", row.get("instruction")))
        model = row.get("model", row.get("generator"))
        if _missing(prompt) or _missing(model):
            raise _core.InvalidArgumentError(
                f"record {i} needs a prompt (or messages / instruction) and a model (or generator)"
            )
        out = row.get("output_tokens")
        if _missing(out):
            text = row.get("output")
            if not isinstance(text, str):
                raise _core.InvalidArgumentError(f"record {i} needs output_tokens (or the response text in output)")
            if enc is None:
                enc = get_encoding("o200k_base")
            out = enc.count(text, disallowed_special=())
        if isinstance(out, float) and out.is_integer():
            out = int(out)
        if isinstance(out, bool) or not isinstance(out, int) or out < 0:
            raise _core.InvalidArgumentError(f"record {i}: output_tokens must be an int >= 0, got {out!r}")
        flat = flatten_prompt(prompt)
        r.prompts.append(flat)
        r.prompt_keys.append(flat)
        r.models.append(str(model))
        r.output_tokens.append(out)
        for k in _OPTIONAL_TEXT:
            v = row.get(k)
            if not _missing(v):
                seen_text.add(k)
            opt_text[k].append("" if _missing(v) else str(v))
        for k in _OPTIONAL_COUNTS:
            v = row.get(k)
            if not _missing(v):
                seen_count.add(k)
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                if isinstance(v, bool) or not isinstance(v, int) or v < (1 if k == "max_tokens" else 0):
                    raise _core.InvalidArgumentError(f"record {i}: {k} must be a positive int, got {v!r}")
            opt_count[k].append(None if _missing(v) else v)
        reasons.append(row.get("finish_reason"))
    if not r.prompts:
        raise _core.InvalidArgumentError("no records in the evaluation data")
    r.routes = opt_text["route"] if "route" in seen_text else None
    r.tenants = opt_text["tenant"] if "tenant" in seen_text else None
    r.tasks = opt_text["task"] if "task" in seen_text else None
    r.max_tokens = opt_count["max_tokens"] if "max_tokens" in seen_count else None
    r.input_tokens = opt_count["input_tokens"] if "input_tokens" in seen_count else None
    caps = r.max_tokens or [None] * len(r.prompts)
    cut = [truncated(o, m, f if isinstance(f, str) else None) for o, m, f in zip(r.output_tokens, caps, reasons)]
    r.truncated = cut if any(cut) else None
    return r


def replay(estimator: Estimator, data: Any, online: bool = False) -> pd.DataFrame:
    """One row per record: model, actual, p50, p90, source, us (microseconds spent estimating).

    ``online=False`` estimates every record with the estimator as it is. ``online=True`` replays
    the records in order on a copy of the estimator, estimating each before observing it (the
    caller's estimator is left unchanged); a record cut by its ``max_tokens`` (or with
    ``finish_reason`` "length") is observed as a lower bound."""
    import pandas as pd

    if not isinstance(estimator, Estimator):
        raise _core.InvalidArgumentError("estimator must be a tokenlane Estimator")
    r = load_records(data)
    caps = [estimator._caps(m) for m in r.models]
    args = (r.max_tokens, caps, r.input_tokens, r.routes, r.tenants, r.tasks)
    if online:
        work = estimator.copy()
        p50, p90, sources, ns = work._core.replay_batch(r.prompts, r.models, r.output_tokens, *args, r.truncated)
    else:
        p50, p90, sources, ns = estimator._core.estimate_batch(r.prompts, r.models, *args)
    return pd.DataFrame(
        {
            "model": r.models,
            "actual": r.output_tokens,
            "p50": p50,
            "p90": p90,
            "source": sources,
            "us": [n / 1000.0 for n in ns],
        }
    )


def _rank_metrics(pred: Any, actual: Any) -> tuple[float, float]:
    from scipy import stats

    if len(pred) < 2 or pred.nunique() < 2 or actual.nunique() < 2:
        return math.nan, math.nan  # ranks are undefined on constant input
    return float(stats.kendalltau(pred, actual).statistic), float(stats.spearmanr(pred, actual).statistic)


def summarize(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per-model metrics of a ``replay`` frame, plus an "(all)" row over every record."""
    import pandas as pd

    rows = []
    groups = [(m, g) for m, g in predictions.groupby("model", sort=True)] + [("(all)", predictions)]
    for model, g in groups:
        tau, rho = _rank_metrics(g["p50"], g["actual"])
        actual = g["actual"].clip(lower=1)
        rows.append(
            {
                "model": model,
                "n": len(g),
                "kendall_tau": tau,
                "spearman": rho,
                "mae": float((g["p50"] - g["actual"]).abs().mean()),
                "median_rel_error": float(((g["p50"] - g["actual"]).abs() / actual).median()),
                "p90_coverage": float((g["actual"] <= g["p90"]).mean()),
                "us_per_estimate": float(g["us"].mean()),
            }
        )
    return pd.DataFrame(rows).set_index("model")


def evaluate(estimator: Estimator, data: Any, online: bool = False) -> pd.DataFrame:
    """How good an estimator is on real data, per model: n, kendall_tau (rank quality, what
    scheduling needs), spearman, mae, median_rel_error, p90_coverage (share of actuals <= p90) and
    us_per_estimate (core time only), with an "(all)" row. See ``replay`` for ``online``."""
    return summarize(replay(estimator, data, online=online))


def plot_predictions(
    estimator: Estimator,
    data: Any,
    online: bool = False,
    model: str | None = None,
    ax: Any = None,
) -> Any:
    """Predicted p50 (and p90) against actual output tokens on log axes, one point per record
    (only ``model``'s when given). Returns the matplotlib Axes."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - matplotlib is in the notebook and dev extras
        raise ImportError("plot_predictions needs matplotlib: pip install 'tokenlane[notebook]'") from exc
    df = replay(estimator, data, online=online)
    if model is not None:
        df = df[df["model"] == model]
        if df.empty:
            raise _core.InvalidArgumentError(f"no records for model {model!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    ax.scatter(df["actual"].clip(lower=1), df["p90"], s=6, alpha=0.25, label="p90", color="tab:orange")
    ax.scatter(df["actual"].clip(lower=1), df["p50"], s=6, alpha=0.5, label="p50", color="tab:blue")
    hi = max(float(df["actual"].max()), float(df["p90"].max()), 2.0)
    ax.plot([1, hi], [1, hi], color="grey", linewidth=1, linestyle="--", label="perfect")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("actual output tokens")
    ax.set_ylabel("predicted output tokens")
    summary = summarize(df).loc["(all)"]
    ax.set_title(
        f"{type(estimator).__name__} ({'online' if online else 'cold'}): "
        f"tau {summary['kendall_tau']:.2f}, p90 cov {summary['p90_coverage']:.2f}"
    )
    ax.legend(loc="upper left")
    return ax
