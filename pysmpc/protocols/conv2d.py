"""2-D convolution of shared tensors (Beaver convolution triples)."""

from __future__ import annotations

from functools import partial

import numpy as np

from pysmpc import ring
from pysmpc.kernels.finish import conv2d_finish
from pysmpc.parties.party import CLIENT, Party
from pysmpc.protocols.cost import WORD, Cost
from pysmpc.protocols.matmul import _beaver_finish, _fixed_finish
from pysmpc.protocols.open import open_arith
from pysmpc.sharing.shares import AShare

__all__ = ["conv2d", "conv2d_fixed", "depthwise_conv2d_fixed", "output_shape", "depthwise_output_shape", "cost",
           "cost_fixed", "cost_depthwise_fixed"]

# Up to this many products (batch 1 of the MNIST CNN: 33k-205k) a direct
# convolution beats im2col + GEMM, whose packing and tiling dominate there;
# beyond it (batch 16 of the same layers) the GEMM's blocking wins.
_DIRECT_MAX_PRODUCTS = 1 << 18


def output_shape(x_shape, w_shape, stride=1, padding="valid") -> tuple:
    """NHWC output shape of x (N,H,W,C) convolved with w (KH,KW,C,O)."""
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise ValueError(f"conv2d takes x in NHWC and w in HWIO, got {x_shape} and {w_shape}")
    if x_shape[3] != w_shape[2]:
        raise ValueError(f"conv2d: x has {x_shape[3]} channels, w expects {w_shape[2]} (x {x_shape}, w {w_shape})")
    oh, ow, _, _ = ring.conv_output_shape(x_shape[1:3], w_shape[:2], stride, padding)
    return (x_shape[0], oh, ow, w_shape[3])


def conv2d(party: Party, x: AShare, w: AShare, stride=1, padding="valid", tag: str = "conv2d") -> AShare:
    """Convolve shared x (NHWC) with shared w (HWIO) using a Beaver triple.

    1. Take [A], [B], [C] with C = conv(A, B) from the dealer (offline).
    2. Open E = X - A and F = W - B (1 round).
    3. [Z] = [C] + conv(E, [B] (+F on party 0)) + conv([A], F): local.

    Convolution is bilinear, so the Beaver identity holds as for products.
    Cost: 1 round; 8*(x.size + w.size) bytes per computing party online;
    P2 sends 8*z.size bytes to P1 and does one convolution.
    Ref: Beaver, CRYPTO 1991; SecureNN (Wagh et al., PETS 2019).
    """
    out_shape = output_shape(x.shape, w.shape, stride, padding)
    conv = partial(ring.conv2d, stride=stride, padding=padding)
    a, b, c = party.dealer.triple(x.shape, w.shape, out_shape, conv, tag="dealer:" + tag)
    if not party.computes:
        return AShare(None, party.index, out_shape)
    e_open, f_open = open_arith(party, [x.value - a, w.value - b], tag=tag)
    return AShare(_beaver_finish(party.index, e_open, f_open, a, b, c, conv), party.index)


def conv2d_fixed(party: Party, x: AShare, key, stride=1, padding="valid", tag: str = "conv2d",
                 input_open: bool = False) -> AShare:
    """conv(x, W) for weights shared with `matmul.share_fixed_operand(key)`.

    Only E = X - A is opened: 1 round, 8*x.size bytes per computing party.
    [A] (x) F + [C] needs no input, so it is folded into the material (made
    ahead with it when the dealer's material is prepared): online, each
    party does one convolution, E (x) ([B] + F on P0).
    input_open: x.value already is E on both P0 and P1, sent by the input's
    owner, to whom P2 revealed A (the client; see Dealer.fixed_triple):
    no round.
    """
    f_open, b_term, w_shape = party.store[("fixed", key)]
    out_shape = output_shape(x.shape, w_shape, stride, padding)
    conv = partial(ring.conv2d, stride=stride, padding=padding)
    a, ac = party.dealer.fixed_triple(key, x.shape, out_shape, conv, tag="dealer:" + tag,
                                      fold=lambda a, c: c + conv(a, f_open),
                                      reveal_mask_to=CLIENT if input_open else None)
    if not party.computes:
        return AShare(None, party.index, out_shape)
    if input_open:
        e_open = x.value
    else:
        (e_open,) = open_arith(party, [x.value - a], tag=tag)
    if padding == "valid" and _size(out_shape) * w_shape[0] * w_shape[1] * w_shape[2] <= _DIRECT_MAX_PRODUCTS:
        z = np.empty(out_shape, np.uint64)
        sh, sw = ring.int_pair("stride", stride)
        conv2d_finish(np.ascontiguousarray(e_open), b_term, sh, sw, np.ascontiguousarray(ac), z)
        return AShare(z, party.index)
    return AShare(_fixed_finish(e_open, b_term, ac, conv), party.index)


def depthwise_output_shape(x_shape, w_shape, stride=1) -> tuple:
    """NHWC output shape of x (N,H,W,C) convolved depthwise ('valid') with w (KH,KW,C,M)."""
    if len(x_shape) != 4 or len(w_shape) != 4 or x_shape[3] != w_shape[2]:
        raise ValueError(f"depthwise conv2d takes x in NHWC and w (KH, KW, C, M) with C = x's channels, "
                         f"got {x_shape} and {w_shape}")
    oh, ow, _, _ = ring.conv_output_shape(x_shape[1:3], w_shape[:2], stride, "valid")
    return (x_shape[0], oh, ow, w_shape[2] * w_shape[3])


def depthwise_conv2d_fixed(party: Party, x: AShare, key, stride=1, tag: str = "depthwise") -> AShare:
    """Depthwise conv(x, W) ('valid'; pad x first) for W shared with `matmul.share_fixed_operand(key)`.

    The fixed-operand Beaver product of conv2d_fixed with the depthwise
    product (ring.depthwise_conv2d: channel c*M + m of the output is input
    channel c convolved with W[:, :, c, m]), which is bilinear as well.
    1. Take [A] and [C] = dw(A, B) (offline); [A] dw F + [C] is folded in.
    2. Open E = X - A (1 round).
    3. [Z] = dw(E, [B] + F on P0, [B] on P1) + ([A] dw F + [C]): local.

    Cost: 1 round; 8*x.size bytes per computing party online; P2 sends
    8*z.size bytes to P1.
    Ref: Beaver, CRYPTO 1991; depthwise convolutions as in MobileNet
    (Howard et al., 2017).
    """
    f_open, b_term, w_shape = party.store[("fixed", key)]
    out_shape = depthwise_output_shape(x.shape, w_shape, stride)
    product = partial(ring.depthwise_conv2d, stride=stride)
    a, ac = party.dealer.fixed_triple(key, x.shape, out_shape, product, tag="dealer:" + tag,
                                      fold=lambda a, c: c + product(a, f_open))
    if not party.computes:
        return AShare(None, party.index, out_shape)
    (e_open,) = open_arith(party, [x.value - a], tag=tag)
    return AShare(_fixed_finish(e_open, b_term, ac, product), party.index)


def _size(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def cost(x_shape, w_shape, stride=1, padding="valid") -> Cost:
    out = output_shape(x_shape, w_shape, stride, padding)
    return Cost(rounds=1, bytes_sent=WORD * (_size(x_shape) + _size(w_shape)), dealer_bytes=WORD * _size(out))


def cost_fixed(x_shape, w_shape, stride=1, padding="valid", input_open: bool = False) -> Cost:
    out = output_shape(x_shape, w_shape, stride, padding)
    if input_open:  # P2 sends A to the input's owner instead of an opening
        return Cost(rounds=0, bytes_sent=0, dealer_bytes=WORD * (_size(out) + _size(x_shape)))
    return Cost(rounds=1, bytes_sent=WORD * _size(x_shape), dealer_bytes=WORD * _size(out))


def cost_depthwise_fixed(x_shape, w_shape, stride=1) -> Cost:
    out = depthwise_output_shape(x_shape, w_shape, stride)
    return Cost(rounds=1, bytes_sent=WORD * _size(x_shape), dealer_bytes=WORD * _size(out))
