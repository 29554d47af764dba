"""Federated learning: secure aggregation of data owners' updates, with optional DP-SGD.

Data owners (``Owner``) share their updates straight to P0 and P1; the
aggregator (``Aggregator``) opens rounds and receives only their sums, under
rules the workers enforce (at least two owners, each counted once, one
reveal per round, DP noise and budget fixed per series). ``run_federated``
trains a model across owners with it (FedAvg, or DP-SGD with noise added
by the workers). See docs/FL.md.
"""

from pysmpc.fl.aggregate import Aggregator, RoundResult
from pysmpc.fl.data import load_mnist, non_iid_split
from pysmpc.fl.dp import PrivacyAccountant, clip_and_sum, dp_epsilon, noise_multiplier_for
from pysmpc.fl.owner import Owner, Receipt, SubmissionError
from pysmpc.fl.train import FederatedConfig, FederatedResult, accuracy, run_federated

__all__ = [
    "Aggregator",
    "FederatedConfig",
    "FederatedResult",
    "Owner",
    "PrivacyAccountant",
    "Receipt",
    "RoundResult",
    "SubmissionError",
    "accuracy",
    "clip_and_sum",
    "dp_epsilon",
    "load_mnist",
    "noise_multiplier_for",
    "non_iid_split",
    "run_federated",
]
