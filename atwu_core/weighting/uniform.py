"""Uniform token weights: the sample-level methods (GA, GradDiff, NPO, SimNPO) weigh every answer token 1."""

from atwu_core.weighting.base import WeightingScheme


class Uniform(WeightingScheme):
    pass
