"""Variation operators: they turn parents into a child `Proposal` and never touch the archive.

`LLMOperator` is loaded on first use, because importing the Anthropic SDK takes seconds that
offline runs and the CLI's other commands should not pay.
"""

from evo.operators.base import ArchiveContext, Operator, ParentInfo, Proposal
from evo.operators.offline import OfflineOperator
from evo.operators.validate import validate_child

__all__ = [
    "ArchiveContext",
    "DEFAULT_MODEL",
    "LLMOperator",
    "OfflineOperator",
    "Operator",
    "ParentInfo",
    "Proposal",
    "validate_child",
]


def __getattr__(name: str):
    if name in ("LLMOperator", "DEFAULT_MODEL"):
        from evo.operators import llm

        return getattr(llm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
