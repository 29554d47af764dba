"""Gaussian noise for differential privacy, drawn from the AES-CTR PRG.

``numpy.random`` is not a cryptographic generator: its state can be
recovered from its outputs, and whoever recovers it can subtract the noise.
So DP noise starts from ``PRG`` words (AES-128-CTR keyed by a fresh
``secrets`` seed) and is shaped in float64 by the Box-Muller transform:

    u1 = (k1 + 1) / 2^53 in (0, 1],  u2 = k2 / 2^53 in [0, 1)
    z  = sqrt(-2 ln u1) * cos(2 pi u2)

with k1, k2 the top 53 bits of two PRG words (one normal per word pair;
the sine branch is dropped so every output uses fresh words).

Known caveat (floating point). A floating-point Gaussian sample is not an
exact draw from N(0, 1): its values lie on a non-uniform float grid and
its tails are cut at |z| <= sqrt(2 * 53 ln 2) ~ 8.57 (u1 >= 2^-53). Mironov
(CCS 2012, "On significance of the least significant bits for differential
privacy") showed that such artefacts of naive floating-point Laplace
samplers can break the DP guarantee outright; the same concern applies to
Box-Muller. Here the noise is rounded to the fixed-point grid 2^-F before
it is added (so the low-order float bits that Mironov's attack reads are
discarded), which mitigates but does not prove away the issue; the exact
remedy is a discrete Gaussian sampler (Canonne, Kamath, Steinke, NeurIPS
2020). The cut tail changes the mechanism's probability mass by under
1e-17 per coordinate.
"""

from __future__ import annotations

import numpy as np

from pysmpc.sharing.prg import PRG

__all__ = ["standard_normal"]

_TWO_POW_MINUS_53 = 2.0**-53


def standard_normal(prg: PRG, shape) -> np.ndarray:
    """Return float64 N(0, 1) samples of ``shape`` from ``prg`` (Box-Muller).

    Consumes 16 bytes of the stream per sample. See the module docstring for
    the floating-point caveat.
    """
    n = int(np.prod(shape, dtype=np.int64))
    words = prg.random_u64((2, n)) >> np.uint64(11)  # 53 uniform bits each
    u1 = (words[0].astype(np.float64) + 1.0) * _TWO_POW_MINUS_53
    u2 = words[1].astype(np.float64) * _TWO_POW_MINUS_53
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).reshape(shape)
