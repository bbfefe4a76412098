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

import math
from typing import TYPE_CHECKING, Any

from . import _core
from .estimators import Estimator
from .records import Records, load_records

if TYPE_CHECKING:
    import pandas as pd

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


__all__ = ["Records", "evaluate", "load_records", "plot_predictions", "replay", "summarize"]
