"""P2, the dealer of correlated randomness (Beaver triples and friends)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import numpy as np

from pysmpc.kernels.bits import unpack_bits
from pysmpc.parties.party import DEALER, P0, P1, Party
from pysmpc.sharing.dcf import DcfKey, cw_shapes, dcf_gen, pack_public, unpack_public

__all__ = ["Dealer", "Bundle", "MaterialMismatch", "INPUT_MASK_TAG"]

_U64 = np.uint64
# P2's message that gives an input's owner the mask of its first product.
INPUT_MASK_TAG = "dealer:input-mask"
_ONE = np.uint64(1)
# Elements per batch of DCF keys (Dealer.sign_keys): 2^16 keys on 31 levels are about 80 MB per evaluator.
KEY_CHUNK = 1 << 16


def fss_opening_bits(bits: int, domain_bits: int) -> int:
    """n: the one-round ReLU (protocols.relu_fss) opens x + r mod 2^n; sign_keys deals its truncation's masks mod 2^n.

    domain_bits + 1 with a truncation by `bits` (|x| < 2^(n-2)), else all 64.
    """
    return int(domain_bits) + 1 if bits else 64


class Dealer:
    """Correlated randomness dealt by P2 to the computing parties P0 and P1.

    Trust assumption: P2 is honest-but-curious and does not collude with P0
    or P1. It knows every mask it deals, so a coalition of P2 with a computing
    party learns everything; alone, P2 sees no data (it receives nothing that
    depends on inputs), and P0 or P1 alone see only masked values.

    Every value is dealt as two additive (or XOR) shares. P0's share is drawn
    from the AES stream P0 shares with P2; P1's share is either drawn from the
    stream P1 shares with P2 (for uniformly random values) or, for values
    that depend on others (c = a*b), sent by P2 as a correction: only those
    corrections travel, under tags "dealer:<op>" (offline traffic).

    All three parties call the same methods in the same order, so the
    streams stay aligned. On P0/P1 a method returns that party's shares; on
    P2 it returns the full values (which P2 alone knows).

    Material made ahead: inside `recording()`, P0/P1 keep every share they
    draw or receive, in order, in a Bundle (with party.preprocessing set,
    so the protocols make their dealer calls only); inside
    `replaying(bundle)` the same calls take those shares back, with no
    stream draw and no message. P2 then has nothing to do online.
    """

    def __init__(self, party: Party):
        self.party = party
        self.index = party.index
        self.channel = party.channel
        self.prgs = party.dealer_prgs
        self._recording: Bundle | None = None
        self._replaying: Bundle | None = None
        self._captures: list[Bundle] = []

    # -- material made ahead ---------------------------------------------------
    @contextmanager
    def recording(self):
        """Run the protocols' dealer calls only, keeping P0's/P1's shares in the yielded Bundle."""
        if self._recording is not None or self._replaying is not None:
            raise RuntimeError("the dealer is already recording or replaying material")
        bundle = Bundle()
        self._recording = bundle
        self.party.preprocessing = True
        try:
            yield bundle
        finally:
            self._recording = None
            self.party.preprocessing = False

    @contextmanager
    def replaying(self, bundle: "Bundle"):
        """Take every dealer share from `bundle` (recorded for the same calls) instead of P2.

        A bundle is used once: its masks hide one query's values, and a second
        query under the same masks would reveal the difference of the two.
        """
        if self._recording is not None or self._replaying is not None:
            raise RuntimeError("the dealer is already recording or replaying material")
        if bundle.used:
            raise MaterialMismatch("this prepared material was used already: reusing its masks would leak")
        bundle.used = True
        self._replaying = bundle
        try:
            yield
            bundle.check_used_up()
        finally:
            self._replaying = None

    @contextmanager
    def capturing(self):
        """Run the protocols' dealer calls only, also keeping P0's/P1's shares in the yielded Bundle.

        Unlike `recording`, this works inside a recording or a replay (the
        shares are then also kept, or taken, as those do): the secure
        executor captures each branch's material ahead of running the
        branches together (parties.lockstep), each replaying its own. On P2
        it only runs the calls (P2 deals as usual) and the bundle stays empty.
        """
        bundle = Bundle()
        if self.index == DEALER:
            yield bundle
            return
        was_preprocessing = self.party.preprocessing
        self._captures.append(bundle)
        self.party.preprocessing = True
        try:
            yield bundle
        finally:
            self._captures.remove(bundle)
            self.party.preprocessing = was_preprocessing

    def _material(self, shape, draw: Callable):
        """P0/P1: the next share: drawn (and kept while recording or capturing) or replayed."""
        if self._replaying is not None:
            item = self._replaying.take(shape)
        else:
            item = draw()
            if self._recording is not None:
                self._recording.keep(item)
        for bundle in self._captures:
            bundle.keep(item)
        return item

    # -- primitives ----------------------------------------------------------
    def rand(self, shape) -> np.ndarray:
        """A uniform shared value: each share from its own stream, no traffic."""
        if self.index == DEALER:
            return self.prgs[P0].random_u64(shape) + self.prgs[P1].random_u64(shape)
        return self._material(shape, lambda: self.prgs[DEALER].random_u64(shape))

    def give(self, value: np.ndarray | None, shape, tag: str) -> np.ndarray | None:
        """Share a value the dealer computed: P0 from its stream, P1 by a correction."""
        if self.index == DEALER:
            share_0 = self.prgs[P0].random_u64(shape)
            self.channel.send(P1, np.ascontiguousarray(value - share_0), tag=tag)
            return None
        if self.index == P0:
            return self._material(shape, lambda: self.prgs[DEALER].random_u64(shape))
        return self._material(shape, lambda: self.channel.recv(DEALER, tag=tag))

    def rand_bits(self, shape) -> np.ndarray:
        """Uniform XOR-shared words."""
        if self.index == DEALER:
            return self.prgs[P0].random_u64(shape) ^ self.prgs[P1].random_u64(shape)
        return self._material(shape, lambda: self.prgs[DEALER].random_u64(shape))

    def give_bits(self, value: np.ndarray | None, shape, tag: str) -> np.ndarray | None:
        if self.index == DEALER:
            share_0 = self.prgs[P0].random_u64(shape)
            self.channel.send(P1, value ^ share_0, tag=tag)
            return None
        if self.index == P0:
            return self._material(shape, lambda: self.prgs[DEALER].random_u64(shape))
        return self._material(shape, lambda: self.channel.recv(DEALER, tag=tag))

    def private(self, owner: int, shape) -> np.ndarray | None:
        """Words known to `owner` and the dealer only (the other party draws nothing)."""
        if self.index == DEALER:
            return self.prgs[owner].random_u64(shape)
        if self.index == owner:
            return self._material(shape, lambda: self.prgs[DEALER].random_u64(shape))
        return None

    def give_public(self, value: np.ndarray | None, shape, tag: str) -> np.ndarray | None:
        """Send the same array to P0 and P1 (e.g. a DCF's correction words, which both keys share)."""
        if self.index == DEALER:
            value = np.ascontiguousarray(value)
            self.channel.send(P0, value, tag=tag)
            self.channel.send(P1, value, tag=tag)
            return None
        return self._material(shape, lambda: self.channel.recv(DEALER, tag=tag))

    # -- arithmetic material -------------------------------------------------
    def triple(self, a_shape, b_shape, c_shape, product: Callable, tag: str):
        """[a], [b], [c] with c = product(a, b): elementwise, matmul or conv."""
        a = self.rand(a_shape)
        b = self.rand(b_shape)
        c = product(a, b) if self.index == DEALER else None
        return a, b, self.give(c, c_shape, tag)

    def square_pair(self, shape, tag: str):
        """[a] and [a*a] elementwise: squares a shared value with one opening (protocols.mul.square)."""
        a = self.rand(shape)
        c = (a * a) if self.index == DEALER else None
        return a, self.give(c, shape, tag)

    def weight_mask(self, key, w_shape) -> np.ndarray:
        """[b] for a fixed operand opened once as w - b; P2 keeps b under `key`."""
        b = self.rand(w_shape)
        if self.index == DEALER:
            self.party.store[("dealer_mask", key)] = b
        return b

    def fixed_triple(self, key, a_shape, c_shape, product: Callable, tag: str, fold: Callable | None = None,
                     reveal_mask_to: int | None = None):
        """[a], [c] with c = product(a, b) for the b dealt by `weight_mask(key)`.

        With `fold`, P0/P1 get fold([a], [c]) in place of [c]: a local step
        on material alone (e.g. [a] (x) F + [c] for an opened F), which so
        runs while the material is made ahead, not after the query comes.
        With `reveal_mask_to`, P2 also sends a itself to that party (the
        owner of the input x, tag "dealer:input-mask"), who can then send
        x - a in the clear: the opening of x - a costs no round.
        """
        a = self.rand(a_shape)
        if reveal_mask_to is not None and self.index == DEALER:
            self.channel.send(reveal_mask_to, a, tag=INPUT_MASK_TAG)
        c = product(a, self.party.store[("dealer_mask", key)]) if self.index == DEALER else None
        c = self.give(c, c_shape, tag)
        if fold is not None and self.index != DEALER and self._replaying is None:
            c = fold(a, c)
            if self._recording is not None:
                self._recording.replace_last(c)
            for bundle in self._captures:
                bundle.replace_last(c)
        return a, c

    def masks_product(self, key_a, key_b, c_shape, product: Callable, tag: str):
        """[c] with c = product(a, b) for the masks a, b dealt by `weight_mask(key_a)`, `weight_mask(key_b)`.

        Lets a shared tensor opened once as x - a (training: an activation, a
        weight, a gradient) take part in every product it enters with no
        second opening; each product gets its own [c].
        """
        if self.index == DEALER:
            store = self.party.store
            c = product(store[("dealer_mask", key_a)], store[("dealer_mask", key_b)])
        else:
            c = None
        return self.give(c, c_shape, tag)

    def forget_masks(self, keys) -> None:
        """P2 drops the masks kept under `keys` (once no product needs them)."""
        if self.index == DEALER:
            for key in keys:
                self.party.store.pop(("dealer_mask", key), None)

    def trunc_pair(self, shape, frac_bits: int, tag: str):
        """[r], [r >> F] (logical) and [r >> 63] for exact-enough truncation."""
        r = self.rand(shape)
        hi = (r >> _U64(frac_bits)) if self.index == DEALER else None
        msb = (r >> _U64(63)) if self.index == DEALER else None
        return r, self.give(hi, shape, tag), self.give(msb, shape, tag)

    def sign_keys(self, n: int, bits: int, domain_bits: int, tag: str):
        """A mask r, its arithmetic side material and DCF keys for the one-round ReLU (protocols.relu_fss).

        r is uniform mod 2^64. With m = domain_bits, k = bits, b = bit m-1 of
        r and r' = r mod 2^(m-1): the DCF (on m-1-k bits) shares
        beta * [z < r' >> k] with the payload beta = (1 - 2b) (1, rho_1, ...)
        where the rho are the masks the protocol multiplies by the sign:
        ((r mod 2^n) >> k, bit n-1 of r) with a truncation by k bits, the
        protocol opening x + r mod 2^n (n = fss_opening_bits), else (r). Arithmetic
        shares of the rho (but r itself), of b and of each rho * b come as
        one correction; each party's root seed comes from its stream with P2;
        the correction words go to both (tag "dealer:<op>", counted offline).

        Keys are made and sent for up to KEY_CHUNK elements at a time (one
        message each for its correction words and its tail), so an evaluator
        waits at most one chunk's key generation for its first message, and
        no message nears a frame's limit.

        Returns (r, side (count, n), [DcfKey per chunk of elements]) on
        P0/P1; (r, None, None) on P2.
        """
        levels = domain_bits - 1 - bits
        width = 3 if bits else 2
        count = 2 * width - 1 if bits else width  # the rho but r, b, each rho * b
        r = self.rand((n,))
        side = None
        if self.index == DEALER:
            b = (r >> _U64(domain_bits - 1)) & _ONE
            opened = fss_opening_bits(bits, domain_bits)
            rhos = [(r & _U64((1 << opened) - 1)) >> _U64(bits), (r >> _U64(opened - 1)) & _ONE] if bits else [r]
            sign = _ONE - _U64(2) * b
            side = np.stack((rhos if bits else []) + [b] + [rho * b for rho in rhos])
            alpha = (r & _U64((1 << (domain_bits - 1)) - 1)) >> _U64(bits)
            beta = np.stack([sign] + [rho * sign for rho in rhos], axis=1)
        side = self.give(side, (count, n), tag)
        roots = {p: self.private(p, (n, 2)) for p in (P0, P1)}
        keys: list[DcfKey] = []
        for start in range(0, n, KEY_CHUNK):
            end = min(n, start + KEY_CHUNK)
            cw_shape, tail_shape = cw_shapes(end - start, levels, width)
            if self.index == DEALER:
                cw, tail = pack_public(*dcf_gen(alpha[start:end], beta[start:end], levels, roots[P0][start:end],
                                                roots[P1][start:end]))
                self.give_public(cw, cw_shape, tag)
                self.give_public(tail, tail_shape, tag)
                continue
            cw = self.give_public(None, cw_shape, tag)
            tail = self.give_public(None, tail_shape, tag)
            keys.append(unpack_public(roots[self.index][start:end], cw, tail, width))
        return (r, None, None) if self.index == DEALER else (r, side, keys)

    # -- boolean material ----------------------------------------------------
    def private_and(self, shape, tag: str):
        """u for P0, v for P1, XOR shares of u & v: ANDs one party's bits with the other's."""
        u = self.private(P0, shape)
        v = self.private(P1, shape)
        w = (u & v) if self.index == DEALER else None
        mine = u if self.index == P0 else v
        return mine, self.give_bits(w, shape, tag)

    def and_pair(self, shape, tag: str):
        """XOR-shared u, v1, v2, u & v1, u & v2: two ANDs with a common left operand."""
        u = self.rand_bits(shape)
        v1 = self.rand_bits(shape)
        v2 = self.rand_bits(shape)
        w1 = (u & v1) if self.index == DEALER else None
        w2 = (u & v2) if self.index == DEALER else None
        return u, v1, v2, self.give_bits(w1, shape, tag), self.give_bits(w2, shape, tag)

    def and_single(self, shape, tag: str):
        """XOR-shared u, v and u & v."""
        u = self.rand_bits(shape)
        v = self.rand_bits(shape)
        w = (u & v) if self.index == DEALER else None
        return u, v, self.give_bits(w, shape, tag)

    def bit_injection(self, n: int, x_shape, tag: str):
        """A random bit rho per element (XOR-shared, packed), [rho], [a] and [a*rho].

        Turns an XOR-shared bit b into the product x*b in one opening of
        b ^ rho and x - a (protocols.select). x has shape (n, ...); rho
        broadcasts over the trailing axes.
        """
        nw = (n + 63) // 64
        rho = self.rand_bits((nw,))
        if self.index == DEALER:
            rho_arith = unpack_bits(rho, n)
        else:
            rho_arith = None
        rho_a = self.give(rho_arith, (n,), tag)
        a = self.rand(x_shape)
        if self.index == DEALER:
            a_rho = a * rho_arith.reshape((n,) + (1,) * (len(x_shape) - 1))
        else:
            a_rho = None
        return rho, rho_a, a, self.give(a_rho, x_shape, tag)

    def random_bit(self, n: int, tag: str):
        """A random bit per element as XOR shares (packed) and as additive shares."""
        rho = self.rand_bits(((n + 63) // 64,))
        rho_arith = unpack_bits(rho, n) if self.index == DEALER else None
        return rho, self.give(rho_arith, (n,), tag)


class MaterialMismatch(RuntimeError):
    """Replayed material does not fit the calls: it was made for another plan or batch size."""


class Bundle:
    """One party's dealer shares for one run of a plan, in call order (see Dealer.recording)."""

    def __init__(self):
        self.items: list = []
        self._next = 0
        self.used = False
        self.output = None  # what the recorded run returns besides shares (e.g. its output shape)

    @property
    def nbytes(self) -> int:
        return sum(item.nbytes for item in self.items)

    def keep(self, item) -> None:
        self.items.append(item)

    def replace_last(self, item) -> None:
        if self.items[-1].shape != item.shape:
            raise ValueError(f"replacing a share of shape {self.items[-1].shape} by one of shape {item.shape}")
        self.items[-1] = item

    def take(self, shape):
        i = self._next
        if i >= len(self.items):
            raise MaterialMismatch(f"the prepared material ran out after {len(self.items)} shares: "
                                   "it was made for a different plan or batch size")
        item = self.items[i]
        # Shapes come as tuples on the hot path: compare those directly.
        if item.shape != shape and item.shape != tuple(shape):
            raise MaterialMismatch(f"prepared share {i} has shape {item.shape}, the protocol asks for "
                                   f"{tuple(shape)}: it was made for a different plan or batch size")
        self._next = i + 1
        return item

    def check_used_up(self) -> None:
        if self._next != len(self.items):
            raise MaterialMismatch(f"{len(self.items) - self._next} prepared shares were left over: "
                                   "the material was made for a different plan or batch size")
