"""Synthetic THA cohort ("phantom") with a known risk model: the embedded default data set."""

from hipdisloc.phantom.cohort import PhantomSummary, generate
from hipdisloc.phantom.population import CohortSettings
from hipdisloc.phantom.risk import RiskCoefficients

__all__ = ["CohortSettings", "PhantomSummary", "RiskCoefficients", "generate"]
