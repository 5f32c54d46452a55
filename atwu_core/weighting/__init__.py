"""Token-weighting schemes, one file each: uniform, probability heuristics, ATWU's scorer, TokenUnlearn."""

from atwu_core.weighting.atwu import ATWUScorer
from atwu_core.weighting.base import PrepareContext, TokenWeights, WeightingScheme
from atwu_core.weighting.probability import ProbabilityWeighting
from atwu_core.weighting.span_mask import SpanMask
from atwu_core.weighting.token_unlearn import TokenUnlearnImportance
from atwu_core.weighting.uniform import Uniform

__all__ = [
    "ATWUScorer",
    "PrepareContext",
    "ProbabilityWeighting",
    "SpanMask",
    "TokenUnlearnImportance",
    "TokenWeights",
    "Uniform",
    "WeightingScheme",
]
