"""The one-round ReLU (of a truncation) from FSS: plaintext over the whole range and its edges, and its cost."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import FP, assert_cost, run_shared, signed
from pysmpc.protocols import relu_fss as relu_fss_protocol
from pysmpc.protocols.relu import relu_truncated
from pysmpc.protocols.relu_fss import default_domain_bits, relu_fss


def _edges(bits: int, m: int) -> list[int]:
    low, high = -(2 ** (m - 1)) + 2**bits, 2 ** (m - 1) - 1
    near = [0, 1, -1, 2, -2, 2**bits - 1, 2**bits, 2**bits + 1, -(2**bits), -(2**bits) - 1]
    return near + [low, low + 1, high, high - 1, 2 ** (m - 2), -(2 ** (m - 2))]


def _check(values, bits, m=None):
    x = np.array(values, dtype=np.int64)
    z, parties = run_shared(lambda p, a: relu_fss(p, a, bits, domain_bits=m), x.view(np.uint64))
    expected = np.maximum(x, 0) >> bits
    error = signed(z) - expected
    allowed = (error == 0) | ((error == 1) & (bits > 0))
    assert allowed.all(), f"bits={bits} m={m} x={x[~allowed][:5]} got={signed(z)[~allowed][:5]} want={expected[~allowed][:5]}"
    return parties


@pytest.mark.parametrize("bits", [0, 1, 16, 18, 30])
def test_plaintext_over_the_whole_range_and_at_the_edges(bits):
    m = default_domain_bits(bits)
    rng = np.random.default_rng(bits)
    low, high = -(2 ** (m - 1)) + 2**bits, 2 ** (m - 1) - 1
    values = _edges(bits, m) + list(rng.integers(low, high, 3000)) + list(rng.integers(-(2**bits), 2**bits, 500))
    parties = _check(values, bits)
    assert_cost(parties, relu_fss_protocol.cost((len(values),), bits))


def test_a_narrower_domain_and_the_same_answer_as_the_bitplane_relu():
    bits, m = 16, 40
    x = FP.encode(np.random.default_rng(1).uniform(-50, 50, size=(7, 9))) * np.uint64(1 << bits)
    fss, parties = run_shared(lambda p, a: relu_fss(p, a, bits, domain_bits=m), x)
    bitplane, _ = run_shared(lambda p, a: relu_truncated(p, a, bits), x)
    assert fss.shape == (7, 9)
    assert np.abs(signed(fss) - signed(bitplane)).max() <= 1
    assert_cost(parties, relu_fss_protocol.cost(x.shape, bits, m))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 24), st.data())
def test_property_any_bits_any_value_in_range(bits, data):
    m = data.draw(st.integers(bits + 2, min(62, bits + 40)))
    low, high = -(2 ** (m - 1)) + 2**bits, 2 ** (m - 1) - 1
    values = data.draw(st.lists(st.integers(low, high), min_size=1, max_size=40))
    _check(values, bits, m)


def test_outside_the_domain_the_sign_wraps():
    # The precondition is |x| < 2^(m-1): 2^(m-1) + 5 reads as negative mod 2^m.
    bits, m = 0, 20
    z, _ = run_shared(lambda p, a: relu_fss(p, a, bits, domain_bits=m), np.array([2**19 + 5], np.uint64))
    assert signed(z)[0] == 0


def test_bad_arguments_are_refused():
    x = np.zeros(4, np.uint64)
    with pytest.raises(ValueError, match="domain_bits"):
        run_shared(lambda p, a: relu_fss(p, a, 16, domain_bits=17), x)
    with pytest.raises(ValueError, match="domain_bits"):
        run_shared(lambda p, a: relu_fss(p, a, 0, domain_bits=63), x)
    with pytest.raises(ValueError, match="bits"):
        run_shared(lambda p, a: relu_fss(p, a, -1), x)


def test_more_elements_than_one_batch_of_keys():
    from pysmpc.parties.dealer import KEY_CHUNK

    n = KEY_CHUNK + 1000  # two batches of keys, two messages each
    values = np.random.default_rng(9).integers(-(2**40), 2**40, n)
    parties = _check(list(values), 16)
    assert_cost(parties, relu_fss_protocol.cost((n,), 16))


def test_an_empty_input():
    z, parties = run_shared(lambda p, a: relu_fss(p, a, 16), np.zeros((0, 3), np.uint64))
    assert z.shape == (0, 3)
    assert_cost(parties, relu_fss_protocol.cost((0, 3), 16))
