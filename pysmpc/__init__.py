"""pysmpc: secure multi-party computation for private machine learning.

Three parties compute on secret-shared fixed-point tensors; see
docs/PROTOCOL.md for the protocols and their costs.
"""

from pysmpc import ring
from pysmpc.runtime.cluster import ClusterError
from pysmpc.runtime.local import LocalCluster
from pysmpc.runtime.tensor import SharedTensor, conv2d, relu
from pysmpc.sharing.fixedpoint import FixedPoint

__version__ = "0.1.0"
__all__ = ["ClusterError", "FixedPoint", "LocalCluster", "SharedTensor", "conv2d", "relu", "ring", "__version__"]
