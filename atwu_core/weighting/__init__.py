"""Token-weighting schemes, one file each: uniform, probability heuristics, ATWU's scorer, TokenUnlearn; their
typed parameters in `params` (torch-free). The schemes load on first use, so reading the parameters (the method
registry, `atwu methods`) does not import torch."""

import importlib

_MODULES = {
    "ATWUScorer": "atwu",
    "PrepareContext": "base",
    "ProbabilityWeighting": "probability",
    "SpanMask": "span_mask",
    "TokenUnlearnImportance": "token_unlearn",
    "TokenWeights": "base",
    "Uniform": "uniform",
    "WeightingScheme": "base",
}
__all__ = list(_MODULES)


def __getattr__(name: str) -> object:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
