"""Federated learning: secure aggregation of data owners' updates, with optional DP-SGD.

``secure_aggregate(updates, cluster)`` sums one update per data owner (a
list of float arrays, or None for an owner that dropped out) inside a
three-party cluster and reveals only the sum. ``run_federated`` trains a
model across owners with it (FedAvg, or DP-SGD with noise added inside the
cluster). See docs/FL.md.
"""

from pysmpc.fl.aggregate import AggregationReport, secure_aggregate
from pysmpc.fl.data import load_mnist, non_iid_split
from pysmpc.fl.dp import PrivacyAccountant, clip_and_sum, dp_epsilon, noise_multiplier_for
from pysmpc.fl.train import FederatedConfig, FederatedResult, accuracy, run_federated

__all__ = [
    "AggregationReport",
    "FederatedConfig",
    "FederatedResult",
    "PrivacyAccountant",
    "accuracy",
    "clip_and_sum",
    "dp_epsilon",
    "load_mnist",
    "noise_multiplier_for",
    "non_iid_split",
    "run_federated",
    "secure_aggregate",
]
