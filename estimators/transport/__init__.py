"""Transporting treatment effects from a collection of randomised trials to a target population.

Dahabreh, Petito, Robertson, Hernán, Steingrimsson, "Towards causally interpretable meta-analysis: transporting
inferences from multiple randomized trials to a new target population" (the paper in shared/papers). Every
estimator is a stack of estimating functions solved by :func:`mestim.fit`, with one joint sandwich covariance.

Main entry points: :func:`transport` (one call per analysis), :func:`simulate_trials` (seeded generator with a
known target effect) and :func:`load_transport_sim` (the bundled simulated data set).
"""

import mestim  # noqa: F401  (float64)

from .api import ESTIMATORS, TransportResult, transport
from .options import TransportOptions
from .simulate import SimulatedTrials, bundled_truth, load_transport_sim, simulate_trials

__all__ = ["transport", "TransportResult", "TransportOptions", "ESTIMATORS", "simulate_trials", "SimulatedTrials", "load_transport_sim",
           "bundled_truth"]
