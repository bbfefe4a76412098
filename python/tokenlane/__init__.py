"""tokenlane: token-cost-aware scheduling for LLM-backed web services.

This release provides the exact tokenizer (tiktoken-compatible ids, C++ core), request counting,
pricing, output-token estimators, the scheduler and its trace simulator, the ledger and the ASGI middleware.
"""

from importlib import import_module as _import_module
from importlib.util import find_spec as _find_spec
from typing import TYPE_CHECKING

from ._core import InvalidArgumentError, StorageError, TokenlaneError, UnknownNameError, VocabularyError
from .chat import ApproximateCount, count_chat_tokens, count_tokens_approx
from .encoding import (
    Encoding,
    encoding_for_model,
    encoding_name_for_model,
    get_encoding,
    list_encoding_names,
)

# The rest loads on first use (PEP 562): the middleware's stack (Starlette, httpx, redis, psycopg,
# prometheus, OpenTelemetry) took `import tokenlane` from ~30 to ~350 ms and put ~60,000 objects in
# front of every garbage collection of a process that only counts tokens (`import tokenlane as
# tiktoken`).
_LAZY = {
    "TokenlaneMiddleware": ".asgi",
    "Estimate": ".estimators",
    "Estimator": ".estimators",
    "HeuristicEstimator": ".estimators",
    "HistoryEstimator": ".estimators",
    "LearnedEstimator": ".estimators",
    "evaluate": ".evaluation",
    "plot_predictions": ".evaluation",
    "LLMRequest": ".formats",
    "Ledger": ".ledger",
    "Cost": ".pricing",
    "Pricing": ".pricing",
    "report_usage": ".providers",
    "RequestError": ".errors",
    "Tokenlane": ".runtime",
    "Identity": ".stages",
    "Decision": ".scheduler",
    "Scheduler": ".scheduler",
    "SimulationResult": ".sim",
    "load_trace": ".sim",
    "simulate": ".sim",
    "trim_messages": ".trim",
}

if TYPE_CHECKING:  # what type checkers and IDEs see for the names above, which load at run time
    from .asgi import TokenlaneMiddleware
    from .errors import RequestError
    from .estimators import Estimate, Estimator, HeuristicEstimator, HistoryEstimator, LearnedEstimator
    from .evaluation import evaluate, plot_predictions
    from .formats import LLMRequest
    from .ledger import Ledger
    from .pricing import Cost, Pricing
    from .providers import report_usage
    from .runtime import Tokenlane
    from .scheduler import Decision, Scheduler
    from .sim import SimulationResult, load_trace, simulate
    from .stages import Identity
    from .trim import trim_messages


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(_import_module(module, __name__), name)
    elif name.isidentifier() and not name.startswith("__") and _find_spec(f"{__name__}.{name}") is not None:
        value = _import_module(f".{name}", __name__)  # a submodule: `tokenlane.evaluation.replay`
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # (later lookups skip this function)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "ApproximateCount",
    "Cost",
    "Decision",
    "Encoding",
    "Estimate",
    "Estimator",
    "HeuristicEstimator",
    "HistoryEstimator",
    "Identity",
    "InvalidArgumentError",
    "LLMRequest",
    "LearnedEstimator",
    "Ledger",
    "Pricing",
    "RequestError",
    "Scheduler",
    "SimulationResult",
    "StorageError",
    "Tokenlane",
    "TokenlaneError",
    "TokenlaneMiddleware",
    "UnknownNameError",
    "VocabularyError",
    "count_chat_tokens",
    "count_tokens_approx",
    "encoding_for_model",
    "encoding_name_for_model",
    "evaluate",
    "get_encoding",
    "list_encoding_names",
    "load_trace",
    "plot_predictions",
    "report_usage",
    "simulate",
    "trim_messages",
]
