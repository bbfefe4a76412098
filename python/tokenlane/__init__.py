"""tokenlane: token-cost-aware scheduling for LLM-backed web services.

This release provides the exact tokenizer (tiktoken-compatible ids, C++ core), request counting,
pricing, output-token estimators, the scheduler and its trace simulator, the ledger and the ASGI middleware.
"""

from ._core import InvalidArgumentError, StorageError, TokenlaneError, UnknownNameError, VocabularyError
from .chat import ApproximateCount, count_chat_tokens, count_tokens_approx
from .encoding import (
    Encoding,
    encoding_for_model,
    encoding_name_for_model,
    get_encoding,
    list_encoding_names,
)
from .asgi import TokenlaneMiddleware
from .estimators import Estimate, Estimator, HeuristicEstimator, HistoryEstimator, LearnedEstimator
from .evaluation import evaluate, plot_predictions
from .formats import LLMRequest
from .ledger import Ledger
from .pricing import Cost, Pricing
from .providers import report_usage
from .errors import RequestError
from .runtime import Tokenlane
from .stages import Identity
from .scheduler import Decision, Scheduler
from .sim import SimulationResult, load_trace, simulate
from .trim import trim_messages

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
