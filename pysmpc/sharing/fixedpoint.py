"""Fixed-point encoding of real numbers into the ring Z(2^64).

A real x is encoded as round(x * 2^F) mod 2^64 (two's complement for
negatives) and decoded by reading the word as int64 and dividing by 2^F.
Rounding is to nearest, ties to even (``numpy.rint``), so a round trip is
off by at most 2^-(F+1).

Encodable inputs satisfy |x| <= max_value = 2^I - 2^-F, so encoded
magnitudes stay below 2^(F+I) <= 2^62. The headroom above 2^(F+I) is what
the protocols rely on: a product of two encodings, before truncation,
carries 2F fractional bits, and probabilistic truncation needs the secret
well below 2^63 to fail only with small probability. Choosing F and I is
therefore a trade between precision, range and that failure probability;
the protocols document their own bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT", "FixedPoint"]

_MAX_TOTAL_BITS = 62


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point format with ``frac_bits`` (F) and ``int_bits`` (I) bits.

    ``encode`` maps float arrays to uint64 ring elements, ``decode`` maps
    them back to float64. F + I <= 62.
    """

    frac_bits: int = 16
    int_bits: int = 15

    def __post_init__(self) -> None:
        for name in ("frac_bits", "int_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"FixedPoint {name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"FixedPoint {name} must be >= 0, got {value}")
        if self.frac_bits + self.int_bits > _MAX_TOTAL_BITS:
            raise ValueError(
                f"FixedPoint needs frac_bits + int_bits <= {_MAX_TOTAL_BITS} so encoded "
                f"magnitudes stay below 2^62; got {self.frac_bits} + {self.int_bits} "
                f"= {self.frac_bits + self.int_bits}"
            )

    @property
    def scale(self) -> int:
        """Return 2^F, the factor between a real and its encoding."""
        return 1 << self.frac_bits

    @property
    def max_value(self) -> float:
        """Return the largest encodable magnitude, 2^I - 2^-F.

        When F + I > 53 that number has no float64 representation; the
        property then returns the largest float64 below 2^I, which is the
        largest float whose encoding stays below 2^(F+I).
        """
        if self.frac_bits + self.int_bits <= 53:
            return float(2.0**self.int_bits - 2.0**-self.frac_bits)
        return float(np.nextafter(2.0**self.int_bits, 0.0))

    def encode(self, x) -> np.ndarray:
        """Encode reals as uint64 ring elements: round(x * 2^F) mod 2^64.

        Args:
            x: real array-like (floats or ints, any shape; scalars give a
                0-d array).

        Returns:
            New uint64 array of the same shape.

        Raises:
            TypeError: for non-numeric input (strings, objects, complex, bool).
            ValueError: for NaN or infinity (says how many and where).
            OverflowError: if some ``|x|`` > max_value (names the largest).
        """
        arr = np.asarray(x)
        if arr.dtype.kind not in "iuf":
            raise TypeError(
                f"{self!r}.encode needs real numbers (int or float dtype), "
                f"got dtype {arr.dtype}"
            )
        arr = arr.astype(np.float64, copy=False)
        finite = np.isfinite(arr)
        if not finite.all():
            n_nan = int(np.isnan(arr).sum())
            n_inf = int((~finite).sum()) - n_nan
            first = _index_of_first(~finite)
            raise ValueError(
                f"{self!r}.encode got non-finite input: {n_nan} NaN and {n_inf} inf "
                f"of {arr.size} values, first at index {first}"
            )
        mag = np.abs(arr)
        limit = self.max_value
        over = mag > limit
        if over.any():
            worst = _index_of_first(mag == mag.max())
            raise OverflowError(
                f"{self!r}.encode: |x| = {float(mag.max())!r} at index {worst} exceeds the "
                f"largest encodable magnitude {limit!r} (about 2^{self.int_bits} - "
                f"2^-{self.frac_bits}); {int(over.sum())} of {arr.size} values are out "
                f"of range. Scale the input or use more int_bits."
            )
        # x * 2^F is exact in float64 (power-of-two scaling) and, with
        # |x * 2^F| < 2^62, rint then fits int64; the int64 -> uint64 view is
        # the two's-complement encoding mod 2^64.
        return np.asarray(np.rint(arr * float(self.scale))).astype(np.int64).view(np.uint64)

    def decode(self, u) -> np.ndarray:
        """Decode ring elements to float64: int64(u) / 2^F.

        Accepts uint64 arrays (any other integer dtype is first reduced
        mod 2^64). Values with more than 53 significant bits are rounded to
        the nearest float64.
        """
        arr = np.asarray(u)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{self!r}.decode needs integer ring elements, got dtype {arr.dtype}")
        if arr.dtype != np.uint64:
            arr = arr.astype(np.uint64)
        return np.asarray(arr.view(np.int64) / float(self.scale))


def _index_of_first(mask: np.ndarray) -> tuple[int, ...]:
    flat = int(np.argmax(mask.reshape(-1)))
    return tuple(int(i) for i in np.unravel_index(flat, mask.shape))


DEFAULT = FixedPoint()
