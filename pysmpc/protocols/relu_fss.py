"""ReLU (of a truncation) in one online round, from function secret sharing in the dealer model."""

from __future__ import annotations

import numpy as np

from pysmpc.parties.dealer import KEY_CHUNK
from pysmpc.parties.dealer import fss_opening_bits as opening_bits
from pysmpc.parties.party import Party
from pysmpc.protocols.cost import WORD, Cost
from pysmpc.protocols.open import low_bits_bytes, open_low_bits
from pysmpc.protocols.truncate import MAX_ABS_LOG2
from pysmpc.sharing.dcf import dcf_eval, key_words
from pysmpc.sharing.shares import AShare

__all__ = ["relu_fss", "cost", "default_domain_bits", "bounded_domain_bits", "opening_bits", "FORMAT_BITS"]

_U64 = np.uint64
_ONE = _U64(1)
# Bits of the widest fixed-point format (FixedPoint(16, 15): magnitudes below
# 2^31 at scale 2^F). A value carrying `bits` more fractional bits (a product
# owing its truncation) is below 2^(31 + bits).
FORMAT_BITS = 31


def default_domain_bits(bits: int) -> int:
    """m for relu_fss: |x| < 2^(m-1) for a value of the format carrying `bits` owed fractional bits."""
    return FORMAT_BITS + 1 + bits


def bounded_domain_bits(bound_bits: int, frac_bits: int, bits: int) -> int:
    """m for relu_fss on values promised below 2^bound_bits in real units (scale 2^(frac_bits + bits)).

    The DCF then has bound_bits + frac_bits levels (m - 1 - bits); never
    more than the format's (default_domain_bits). The promise is the
    caller's: a value beyond it gets the sign of its wrap mod 2^m.
    """
    return min(default_domain_bits(bits), int(bound_bits) + int(frac_bits) + 1 + bits)


def relu_fss(party: Party, x: AShare, bits: int = 0, domain_bits: int | None = None, tag: str = "relu") -> AShare:
    """Return [relu(x / 2^bits)] (bits = 0: [relu(x)]) in one round: a masked opening and local DCF evaluations.

    Precondition: -2^(m-1) + 2^bits <= x < 2^(m-1) with m = domain_bits
    (default: 32 + bits, the whole fixed-point format carrying `bits` owed
    fractional bits). Outside it the sign is that of x wrapped mod 2^m:
    the output is garbage (as the bit-plane comparison's is for |x| >= 2^63).

    1. P2 deals r uniform mod 2^64, shares of (r mod 2^n) >> bits and
       r_(n-1) with n = m + 1 the opening's bits (the truncation's
       material, as protocols.truncate, in Z_2^n), of b = bit m-1 of r, of
       each mask times b, and DCF keys (sharing.dcf) for
       (1 - 2b)(1, masks) * [z < (r mod 2^(m-1)) >> bits] on m-1-bits bits
       (offline).
    2. Open c = x + 2^(n-2) + r mod 2^n (1 round; uniform mod 2^n): each
       party sends the low n bits of its share only, ceil(n / 8) bytes
       (open_low_bits). Without a truncation (bits = 0), n = 64.
    3. U = x + 2^(m-1) - 2^bits + r mod 2^m is public (from c). Its top bit
       is a = u_top ^ b ^ carry, u = x + 2^(m-1) - 2^bits, carry = [U' < r']
       on the low m-1 bits; so [x >= 2^bits] = a ^ b ^ carry. The DCF at
       z = U' >> bits gives shares of (1 - 2b) carry and of it times each
       mask, so e = b ^ carry = b + (1 - 2b) carry and e * mask are linear:
       local.
    4. The truncation t = x >> bits is (c >> bits) - 2^(n-2-bits) -
       [(r mod 2^n) >> bits] + 2^(n-bits)(1 - c_(n-1))[r_(n-1)] (as
       protocols.truncate, whose 64 bits become n: x + 2^(n-2) is below
       2^(n-1), so its wrap mod 2^n shows in the top bits of c and r), an
       integer, so its shares may live mod 2^64; also linear in the masks;
       bits = 0: t = c - 2^62 - [r]. Then relu = t (a ^ e) = a t + (1 - 2a)
       t e: local.

    Dropping the low `bits` of z ignores a borrow: the comparison decides
    [x >= 0] or [x >= 2^bits] for 0 <= x < 2^bits, where both give an output
    within the truncation's unit: relu(x / 2^bits) in {0, 1}. Error: the
    result is floor(relu(x) / 2^bits) + {0, 1} (exact for bits = 0).
    Cost: 1 round; ceil(n / 8) bytes per element per computing party (8
    without a truncation; 7 for the MNIST CNN's relus, 6 with relu
    bounds). Offline: P2
    sends 8 (2w - 1) bytes per element to P1 (w = 3 with a truncation, 2
    without) and the DCF's correction words, (m - 1 - bits)(16 + 8w) + 8w
    bytes + 2 bits per level, to both P0 and P1.
    Ref: Boyle et al., "Function Secret Sharing for Mixed-Mode and
    Fixed-Point Secure Computation", EUROCRYPT 2021 (DCF, Fig. 1; the
    sign from a DCF on the low bits, sec. 4); the 64-bit wrap correction of
    the truncation as Escudero et al., CRYPTO 2020 sec. 5.
    """
    m = default_domain_bits(bits) if domain_bits is None else int(domain_bits)
    _check(bits, m)
    n = x.size
    r, side, keys = party.dealer.sign_keys(n, bits, m, tag="dealer:" + tag)
    if not party.computes:
        return AShare(None, party.index, x.shape)
    first = party.index == 0  # public terms are added once, by P0
    opened_bits = opening_bits(bits, m)
    offset = _U64(1 << (opened_bits - 2))
    masked = np.ascontiguousarray(x.value).reshape(-1) + r
    if first:
        masked += offset
    c = open_low_bits(party, masked, opened_bits, tag=tag)
    u_open = (c + _U64((1 << (m - 1)) - (1 << bits if bits else 0)) - offset) & _U64((1 << m) - 1)
    a = u_open >> _U64(m - 1)
    z = (u_open & _U64((1 << (m - 1)) - 1)) >> _U64(bits)
    # (n, w): (1-2b) carry, times each mask; keys come in chunks of elements (Dealer.sign_keys).
    pieces = [dcf_eval(party.index, key, z[offset : offset + key.leaf.shape[0]])
              for key, offset in zip(keys, np.cumsum([0] + [k.leaf.shape[0] for k in keys]))]
    v = np.concatenate(pieces) if pieces else np.zeros((0, 3 if bits else 2), np.uint64)
    if bits:
        r_hi, r_msb, b, r_hi_b, r_msb_b = side
        scale = (_ONE - (c >> _U64(opened_bits - 1))) << _U64(opened_bits - bits)  # 2^(n-F)(1 - c_(n-1))
        public = (c >> _U64(bits)) - _U64(1 << (opened_bits - 2 - bits))
        e = b + v[:, 0]
        t = scale * r_msb - r_hi
        te = public * e - (r_hi_b + v[:, 1]) + scale * (r_msb_b + v[:, 2])
    else:
        b, r_b = side
        public = c - offset
        e = b + v[:, 0]
        t = _U64(0) - r
        te = public * e - (r_b + v[:, 1])
    if first:
        t += public
    out = np.where(a.astype(bool), t - te, te)  # a t + (1 - 2a) t e
    return AShare(out.reshape(x.shape), party.index)


def _check(bits: int, m: int) -> None:
    if not 0 <= bits < MAX_ABS_LOG2:
        raise ValueError(f"relu_fss: bits must be in 0..{MAX_ABS_LOG2 - 1}, got {bits}")
    if not bits + 2 <= m <= MAX_ABS_LOG2:
        raise ValueError(f"relu_fss: domain_bits must be in {bits + 2}..{MAX_ABS_LOG2} for bits={bits}, got {m}")


def cost(shape, bits: int = 0, domain_bits: int | None = None) -> Cost:
    """1 round, ceil(n / 8) bytes per element; dealer bytes: P2's corrections to P1 plus the keys' public part to both."""
    m = default_domain_bits(bits) if domain_bits is None else int(domain_bits)
    _check(bits, m)
    n = int(np.prod(shape))
    width = 3 if bits else 2
    count = 2 * width - 1 if bits else width
    chunks = [min(KEY_CHUNK, n - start) for start in range(0, n, KEY_CHUNK)]
    dealer = WORD * count * n + 2 * WORD * sum(key_words(c, m - 1 - bits, width) for c in chunks)
    return Cost(rounds=1, bytes_sent=low_bits_bytes(opening_bits(bits, m)) * n, dealer_bytes=dealer)
