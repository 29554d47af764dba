"""Tests for pysmpc.sharing.prg: AES-128-CTR PRG."""

import numpy as np
import pytest

from pysmpc.kernels.bits import popcount
from pysmpc.sharing.prg import PRG, SEED_BYTES, new_seed
from helpers import in_forked_children

SEED_A = bytes(range(16))
SEED_B = bytes(range(1, 17))
CHUNK_WORDS = (1 << 20) // 8  # one internal keystream chunk


def chi_square_bytes(data: np.ndarray) -> float:
    """Return Pearson's chi-square of byte counts against uniform (255 dof)."""
    counts = np.bincount(data.view(np.uint8).reshape(-1), minlength=256)
    expected = counts.sum() / 256
    return float(((counts - expected) ** 2 / expected).sum())


# 255 degrees of freedom: mean 255, sd sqrt(510) ~ 22.6. Accepting
# [150, 400] fails a uniform source with probability ~1e-8 (upper) and far
# less (lower), while a constant, counter-like or biased stream fails badly.
CHI2_LO, CHI2_HI = 150.0, 400.0


def test_known_answer_aes128_zero_key():
    # FIPS-197 style vector: AES-128 under the all-zero key maps the zero
    # block (counter 0) to 66e94bd4ef8a2c3b884cfa59ca342b2e.
    words = PRG(bytes(16)).random_u64(2)
    assert words.tobytes() == bytes.fromhex("66e94bd4ef8a2c3b884cfa59ca342b2e")


def test_seed_validation():
    for bad in (b"", bytes(15), bytes(17), bytes(32)):
        with pytest.raises(ValueError, match="exactly 16 bytes"):
            PRG(bad)
    with pytest.raises(TypeError, match="bytes"):
        PRG("0123456789abcdef")
    PRG(bytearray(16))


def test_equal_seeds_equal_streams():
    a, b = PRG(SEED_A), PRG(SEED_A)
    assert np.array_equal(a.random_u64((5, 7)), b.random_u64((5, 7)))
    assert np.array_equal(a.random_bits(1000), b.random_bits(1000))


@pytest.mark.parametrize(
    "sizes",
    [[1, 1], [3, 5, 1], [CHUNK_WORDS - 1, 3, CHUNK_WORDS + 2], [0, 2, 0, 1]],
)
def test_stream_continues_across_calls(sizes):
    total = sum(sizes)
    whole = PRG(SEED_A).random_u64(total)
    prg = PRG(SEED_A)
    parts = [prg.random_u64(n) for n in sizes]
    assert np.array_equal(np.concatenate(parts), whole), f"sizes={sizes}"


def test_two_calls_of_n_equal_one_call_of_2n():
    n = 4099
    prg = PRG(SEED_B)
    two = np.concatenate([prg.random_u64(n), prg.random_u64(n)])
    assert np.array_equal(two, PRG(SEED_B).random_u64(2 * n))


def test_fill_random_u64_random_bits_share_one_stream():
    ref = PRG(SEED_A).random_u64(1 + 2 + 3)
    prg = PRG(SEED_A)
    out = np.empty(1, np.uint64)
    assert prg.fill(out) is out
    bits = prg.random_bits(128)  # two words
    rest = prg.random_u64((3,))
    assert np.array_equal(np.concatenate([out, bits, rest]), ref)


def test_random_u64_shape_and_layout():
    x = PRG(SEED_A).random_u64((2, 3, 4))
    assert x.shape == (2, 3, 4) and x.dtype == np.uint64 and x.flags.c_contiguous
    assert PRG(SEED_A).random_u64(0).shape == (0,)


def test_distinct_seeds_give_uncorrelated_streams():
    a = PRG(SEED_A).random_u64(1 << 17)
    b = PRG(SEED_B).random_u64(1 << 17)
    assert not np.array_equal(a[:4], b[:4])
    top = ((a ^ b) >> np.uint64(56)).astype(np.uint8)
    chi2 = chi_square_bytes(top)
    assert CHI2_LO < chi2 < CHI2_HI, f"chi2={chi2:.1f} on the XOR of two streams"


def test_bytes_are_uniform():
    data = PRG(new_seed()).random_u64(1 << 17)
    chi2 = chi_square_bytes(data)
    assert CHI2_LO < chi2 < CHI2_HI, f"chi2={chi2:.1f}"
    # Each of the 64 bit positions is set about half the time.
    ones = [int(((data >> np.uint64(j)) & np.uint64(1)).sum()) for j in range(64)]
    n = data.size
    assert all(abs(c - n / 2) < 6 * np.sqrt(n / 4) for c in ones), ones


def test_chi_square_rejects_a_counter():
    # Guard on the test itself: a non-random stream fails the bounds.
    counter = np.arange(1 << 17, dtype=np.uint64)
    assert not CHI2_LO < chi_square_bytes(counter) < CHI2_HI


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 100, 1000, 4097])
def test_random_bits_padding_is_zero(n):
    words = PRG(SEED_A).random_bits(n)
    assert words.shape == ((n + 63) // 64,) and words.dtype == np.uint64
    if n % 64:
        assert int(words[-1]) >> (n % 64) == 0, f"n={n}: padding bits set"
    # Padded bits come from the same stream words, just masked.
    full = PRG(SEED_A).random_u64(words.size)
    mask = np.full(words.size, 2**64 - 1, dtype=np.uint64)
    if n % 64:
        mask[-1] = (1 << (n % 64)) - 1
    assert np.array_equal(words, full & mask)


def test_random_bits_are_balanced():
    n = 1 << 20
    ones = popcount(PRG(SEED_B).random_bits(n))
    assert abs(ones - n / 2) < 6 * np.sqrt(n / 4), ones


def test_random_bits_rejects_negative():
    with pytest.raises(ValueError, match="non-negative"):
        PRG(SEED_A).random_bits(-1)


def test_derive_is_deterministic_and_independent():
    parent = PRG(SEED_A)
    a1 = parent.derive(b"mul").random_u64(1 << 15)
    parent.random_u64(1000)  # parent position must not matter
    a2 = parent.derive(b"mul").random_u64(1 << 15)
    b = parent.derive(b"relu").random_u64(1 << 15)
    own = PRG(SEED_A).random_u64(1 << 15)
    other = PRG(SEED_B).derive(b"mul").random_u64(1 << 15)
    assert np.array_equal(a1, a2)
    for name, s in (("other label", b), ("parent stream", own), ("other seed", other)):
        assert not np.array_equal(a1[:4], s[:4]), name
        chi2 = chi_square_bytes(((a1 ^ s) >> np.uint64(56)).astype(np.uint8))
        assert CHI2_LO / 2 < chi2 < CHI2_HI, f"{name}: chi2={chi2:.1f}"
    # Nested derivation is its own stream too.
    nested = parent.derive(b"mul").derive(b"mul").random_u64(4)
    assert not np.array_equal(nested, a1[:4])


def test_derive_rejects_str_label():
    with pytest.raises(TypeError, match="bytes"):
        PRG(SEED_A).derive("mul")


def test_fill_checks_buffer():
    prg = PRG(SEED_A)
    with pytest.raises(TypeError, match="uint64"):
        prg.fill(np.empty(4, np.int64))
    with pytest.raises(ValueError, match="C-contiguous"):
        prg.fill(np.empty(8, np.uint64)[::2])


def test_fill_multidimensional_matches_flat_stream():
    out = np.empty((3, 5), np.uint64)
    PRG(SEED_A).fill(out)
    assert np.array_equal(out.reshape(-1), PRG(SEED_A).random_u64(15))


def test_new_seed_and_repr_hide_nothing_secret():
    s1, s2 = new_seed(), new_seed()
    assert len(s1) == SEED_BYTES and isinstance(s1, bytes) and s1 != s2
    assert SEED_A.hex() not in repr(PRG(SEED_A)) and str(SEED_A) not in repr(PRG(SEED_A))


def test_numpy_random_never_used(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("PRG used numpy.random")

    for name in ("default_rng", "random", "randint", "bytes", "Generator", "RandomState"):
        monkeypatch.setattr(np.random, name, forbidden)
    prg = PRG(SEED_A)
    prg.random_u64(10)
    prg.random_bits(70)
    prg.fill(np.empty(3, np.uint64))
    prg.derive(b"x").random_u64(2)


def test_fresh_prgs_are_reseeded_in_forked_children_and_agreed_ones_are_not():
    fresh = PRG.fresh()
    agreed = PRG(SEED_A)  # a pairwise stream: the parties must keep drawing the same words

    def draw():
        return fresh.random_u64(4).tobytes() + agreed.random_u64(4).tobytes()

    first, second = (np.frombuffer(r, np.uint64) for r in in_forked_children(draw))
    assert not np.array_equal(first[:4], second[:4]), "two forked children drew the same words from a fresh PRG"
    np.testing.assert_array_equal(first[4:], second[4:])  # reseeding it would break the parties' alignment
    np.testing.assert_array_equal(first[4:], PRG(SEED_A).random_u64(4))
    # The parent's own stream goes on where it was, unlike either child's.
    parent = fresh.random_u64(4)
    assert not np.array_equal(parent, first[:4]) and not np.array_equal(parent, second[:4])


def test_a_cluster_made_before_a_fork_deals_different_shares_in_each_child():
    from pysmpc.runtime.local import LocalCluster
    from pysmpc.sharing.shares import share

    cluster = LocalCluster()  # not started: the client-side handle a process holds when it forks
    value = np.full(8, 7, np.uint64)

    def draw():
        share_0, share_1 = share(value, cluster._client_prg)
        return share_0.tobytes() + share_1.tobytes()

    first, second = (np.frombuffer(r, np.uint64).reshape(2, 8) for r in in_forked_children(draw))
    for shares in (first, second):
        np.testing.assert_array_equal(shares[0] + shares[1], value)
    # Equal shares to P0 of two values would hand P1 their difference.
    assert not np.array_equal(first[0], second[0]), "two forked children dealt the same share to P0"
