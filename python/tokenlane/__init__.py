"""tokenlane: token-cost-aware scheduling for LLM-backed web services.

This release provides the exact tokenizer (tiktoken-compatible ids, C++ core) and request counting.
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
from .ledger import Ledger
from .pricing import Cost, Pricing

__version__ = "0.1.0"

__all__ = [
    "ApproximateCount",
    "Cost",
    "Encoding",
    "InvalidArgumentError",
    "Ledger",
    "Pricing",
    "StorageError",
    "TokenlaneError",
    "UnknownNameError",
    "VocabularyError",
    "count_chat_tokens",
    "count_tokens_approx",
    "encoding_for_model",
    "encoding_name_for_model",
    "get_encoding",
    "list_encoding_names",
]
