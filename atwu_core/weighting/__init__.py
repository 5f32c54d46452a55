"""Token-weighting schemes, one file each: uniform, probability heuristics, ATWU's scorer, TokenUnlearn."""

from atwu_core.weighting.atwu import ATWUScorer
from atwu_core.weighting.base import ForgetForward, PrepareContext, TokenWeights, WeightingScheme
from atwu_core.weighting.probability import ProbabilityWeighting
from atwu_core.weighting.token_unlearn import TokenUnlearnImportance
from atwu_core.weighting.uniform import Uniform

__all__ = ["ATWUScorer", "ForgetForward", "PrepareContext", "ProbabilityWeighting", "TokenUnlearnImportance",
           "TokenWeights", "Uniform", "WeightingScheme"]
