"""tokenlane: token-cost-aware scheduling for LLM-backed web services.

This release provides the exact tokenizer (tiktoken-compatible ids, C++ core), request counting,
pricing, the scheduler and the trace simulator.
"""

from ._core import InvalidArgumentError, TokenlaneError, UnknownNameError, VocabularyError
from .chat import ApproximateCount, count_chat_tokens, count_tokens_approx
from .encoding import (
    Encoding,
    encoding_for_model,
    encoding_name_for_model,
    get_encoding,
    list_encoding_names,
)
from .pricing import Cost, Pricing
from .scheduler import Decision, Scheduler
from .sim import SimulationResult, load_trace, simulate

__version__ = "0.1.0"

__all__ = [
    "ApproximateCount",
    "Cost",
    "Decision",
    "Encoding",
    "InvalidArgumentError",
    "Pricing",
    "Scheduler",
    "SimulationResult",
    "TokenlaneError",
    "UnknownNameError",
    "VocabularyError",
    "count_chat_tokens",
    "count_tokens_approx",
    "encoding_for_model",
    "encoding_name_for_model",
    "get_encoding",
    "list_encoding_names",
    "load_trace",
    "simulate",
]
