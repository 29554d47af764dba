"""Tests for pysmpc.sharing.fixedpoint."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pysmpc.sharing.fixedpoint import DEFAULT, FixedPoint

CONFIGS = [FixedPoint(), FixedPoint(8, 7), FixedPoint(20, 20), FixedPoint(0, 10), FixedPoint(40, 22)]


def formats():
    return st.integers(0, 40).flatmap(
        lambda f: st.integers(0, min(40, 62 - f)).map(lambda i: FixedPoint(f, i))
    )


def test_default_config():
    assert DEFAULT == FixedPoint(frac_bits=16, int_bits=15)
    assert DEFAULT.scale == 2**16
    assert DEFAULT.max_value == 2.0**15 - 2.0**-16


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT.frac_bits = 3


@settings(max_examples=150, deadline=None)
@given(fmt=formats(), data=st.data())
def test_round_trip_within_half_ulp(fmt, data):
    limit = fmt.max_value
    x = data.draw(
        hnp.arrays(
            np.float64,
            hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=6),
            elements=st.one_of(
                st.floats(-limit, limit, allow_nan=False),
                st.sampled_from([0.0, -0.0, limit, -limit, 1.0, -1.0]).filter(
                    lambda v: abs(v) <= limit
                ),
            ),
        )
    )
    enc = fmt.encode(x)
    assert enc.dtype == np.uint64 and enc.shape == x.shape
    # Encoded magnitudes stay below 2^(F+I) <= 2^62.
    assert np.all(np.abs(enc.view(np.int64)) < 2 ** (fmt.frac_bits + fmt.int_bits))
    back = fmt.decode(enc)
    err = np.abs(back - x)
    assert np.all(err <= 2.0 ** -(fmt.frac_bits + 1)), f"{fmt}: x={x!r}, back={back!r}"


@settings(max_examples=50, deadline=None)
@given(fmt=formats(), data=st.data())
def test_encoding_is_linear_on_grid_values(fmt, data):
    # Values on the 2^-F grid encode exactly, so ring addition of encodings
    # is addition of the reals (what additive sharing relies on).
    # Stay within float64's 53-bit mantissa so a / 2^F is exact.
    bound = min(2 ** (fmt.frac_bits + fmt.int_bits) - 1, 2**52)
    a = data.draw(st.integers(-(bound // 2), bound // 2))
    b = data.draw(st.integers(-(bound // 2), bound // 2))
    fa, fb = a / fmt.scale, b / fmt.scale
    assert fmt.encode(fa) + fmt.encode(fb) == fmt.encode((a + b) / fmt.scale)


def test_negative_values_are_twos_complement():
    assert int(DEFAULT.encode(-1.0)) == 2**64 - 2**16
    assert int(DEFAULT.encode(-2.0**-16)) == 2**64 - 1
    assert DEFAULT.decode(np.uint64(2**64 - 2**16)) == -1.0
    assert np.array_equal(DEFAULT.decode(DEFAULT.encode([-3.5, 3.5])), [-3.5, 3.5])


@pytest.mark.parametrize("fmt", CONFIGS)
def test_limit_values(fmt):
    total = fmt.frac_bits + fmt.int_bits
    # Beyond 53 bits float64 cannot hold 2^I - 2^-F: max_value is then the
    # largest float below 2^I, whose encoding drops the low total-53 bits.
    top = 2**total - 1 if total <= 53 else 2**total - 2 ** (total - 53)
    assert int(fmt.encode(fmt.max_value)) == top
    assert int(fmt.encode(-fmt.max_value)) == 2**64 - top
    assert fmt.decode(fmt.encode(fmt.max_value)) == fmt.max_value
    with pytest.raises(OverflowError):
        fmt.encode(np.nextafter(fmt.max_value, np.inf))


def test_decode_ring_edges():
    f = 2.0**16
    cases = {0: 0.0, 1: 1 / f, 2**63 - 1: (2**63 - 1) / f, 2**63: -(2**63) / f, 2**64 - 1: -1 / f}
    for ring, want in cases.items():
        assert DEFAULT.decode(np.uint64(ring)) == want, ring
    assert np.array_equal(DEFAULT.decode(np.array([-65536, 65536], np.int64)), [-1.0, 1.0])


def test_rounds_to_nearest_ties_to_even():
    ulp = 2.0**-16
    assert int(DEFAULT.encode(0.4 * ulp)) == 0
    assert int(DEFAULT.encode(0.6 * ulp)) == 1
    assert int(DEFAULT.encode(0.5 * ulp)) == 0
    assert int(DEFAULT.encode(1.5 * ulp)) == 2
    assert int(DEFAULT.encode(-0.6 * ulp)) == 2**64 - 1


def test_integer_input_and_scalars():
    enc = DEFAULT.encode(np.array([[1, -2], [3, 0]], dtype=np.int32))
    assert enc.shape == (2, 2)
    assert np.array_equal(DEFAULT.decode(enc), [[1, -2], [3, 0]])
    assert isinstance(DEFAULT.encode(2.5), np.ndarray) and DEFAULT.encode(2.5).shape == ()
    assert DEFAULT.encode([]).shape == (0,)


def test_overflow_message_names_value_limit_and_config():
    x = np.array([1.0, -40000.5, 33000.0])
    with pytest.raises(OverflowError, match=r"40000\.5.*index \(1,\).*32767\.99998.*2 of 3") as info:
        DEFAULT.encode(x)
    assert "frac_bits=16" in str(info.value) and "int_bits=15" in str(info.value)


def test_non_finite_message_counts():
    x = np.array([[1.0, np.nan], [np.inf, -np.inf]])
    with pytest.raises(ValueError, match=r"1 NaN and 2 inf of 4 values, first at index \(0, 1\)"):
        DEFAULT.encode(x)


@pytest.mark.parametrize(
    "bad",
    [["a", "b"], "1.0", np.array([1 + 2j]), np.array([True, False]), [object()], [None]],
)
def test_non_numeric_raises_type_error(bad):
    with pytest.raises(TypeError, match="real numbers"):
        DEFAULT.encode(bad)


def test_decode_rejects_floats():
    with pytest.raises(TypeError, match="integer ring elements"):
        DEFAULT.decode(np.array([1.5]))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"frac_bits": 32, "int_bits": 31}, ValueError, "<= 62"),
        ({"frac_bits": -1}, ValueError, ">= 0"),
        ({"int_bits": -3}, ValueError, ">= 0"),
        ({"frac_bits": 1.5}, TypeError, "must be an int"),
        ({"frac_bits": True}, TypeError, "must be an int"),
    ],
)
def test_bad_config(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        FixedPoint(**kwargs)


def test_input_not_modified():
    x = np.array([1.25, -2.5])
    before = x.copy()
    DEFAULT.encode(x)
    assert np.array_equal(x, before)
