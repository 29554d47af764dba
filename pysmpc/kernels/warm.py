"""Load every Numba kernel before any protocol runs (a worker does this before it reports ready)."""

from __future__ import annotations

import threading
import time

import numpy as np
from numba.core.registry import CPUDispatcher

from pysmpc.kernels import bits, carries, dcf, finish, pool

__all__ = ["kernel_dispatchers", "warm_up"]

_U64, _I64 = np.uint64, np.int64


def kernel_dispatchers() -> dict:
    """Return every Numba kernel of pysmpc.kernels by qualified name ("pool._sum_pool2d_serial": dispatcher)."""
    found = {}
    for module in (bits, carries, dcf, finish, pool):
        for name, value in vars(module).items():
            if isinstance(value, CPUDispatcher):
                found[f"{module.__name__.rsplit('.', 1)[-1]}.{name}"] = value
    return found


def warm_up(on_compile=None) -> float:
    """Call each Numba kernel once on a tiny input, with every argument type a protocol passes; return seconds.

    The first call of a Numba kernel in a process compiles it (first run
    after an install: 10-30 s in all) or loads it from Numba's cache, and
    starts the thread pool (well under a second). A party doing that in
    the middle of a protocol keeps its peers waiting for as long, so the
    peer timeout would have to cover it, and a timed prediction would count
    it as online time; warmed up, the longest wait in a batch-256 inference
    is a fraction of a second.

    Numba compiles once per argument type, and whether an array is
    read-only is part of its type: in-process parties receive read-only
    views (parties/local.py), socket parties writable arrays. So each kernel
    is called with the writable arguments and with each read-only mix the
    protocols produce (tests/test_warm.py checks that a private prediction
    then compiles nothing).

    on_compile: called once, from this thread, as soon as some kernel is
    found missing from the cache (so it is being compiled); None: nothing
    is reported. Caller-owned buffers only: no randomness, no party.
    """
    start = time.perf_counter()
    if on_compile is None:
        _call_every_kernel()
        return time.perf_counter() - start
    failure: list[BaseException] = []

    def run():
        try:
            _call_every_kernel()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)

    dispatchers = list(kernel_dispatchers().values())

    def misses() -> int:  # Numba's counts are per process: only new ones mean a compile now
        return sum(sum(d.stats.cache_misses.values()) for d in dispatchers)

    before = misses()
    worker = threading.Thread(target=run, name="pysmpc-warm-up", daemon=True)
    worker.start()
    reported = False
    while worker.is_alive():
        worker.join(0.05)
        # Numba counts a cache miss before it starts compiling the kernel.
        if not reported and misses() > before:
            on_compile()
            reported = True
    if failure:
        raise failure[0]
    return time.perf_counter() - start


def _read_only(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.setflags(write=False)
    return view


def _call(kernel, args, *read_only_sets) -> None:
    """Call kernel(*args) with all arrays writable, then once per set of argument positions made read-only."""
    kernel(*args)
    for positions in read_only_sets:
        kernel(*(_read_only(a) if i in positions else a for i, a in enumerate(args)))


def _call_every_kernel() -> None:
    x = np.arange(130, dtype=_U64) * _U64(0x9E3779B97F4A7C15)
    for parallel in (False, True):
        for planes in (1, bits._TRANSPOSE_MIN_PLANES):  # the per-bit and the transposing packers
            bits.pack_bitplanes(x, 0, planes, parallel=parallel)
        pool.sum_pool2d(x[:128].reshape(2, 4, 4, 4), 2, parallel=parallel)
    packed = bits.pack_bits(x & _U64(1) == 1)
    bits.unpack_bits(packed, len(x))
    bits.and_finish(packed, packed, packed, packed, packed, True)
    bits.popcount(packed)

    # protocols/compare.py. Read-only sets: what P0 and P1 receive in-process
    # (from the peer, or from the dealer for P1), by argument position.
    nw, k = 1, 2
    count = (1 << k) - 1
    mono = np.zeros((count, 1, nw), _U64)
    carries.group_monomials(np.zeros((64, nw), _U64), np.zeros(1, _I64), carries.low_bit_index(1 << k),
                            mono, mono.copy(), mono.copy())
    pairs, pair_count = np.zeros((2, 1, 2), _I64), np.ones(2, _I64)
    index, index_count, constant = np.zeros((2, 1), _I64), np.ones(2, _I64), np.zeros(2, _U64)
    # The dealer's forms (no linear part, a fresh output), then a party's (into a slice of the carries).
    carries.bilinear_xor(mono, mono, pairs, pair_count, None, index, index_count, constant, None,
                         np.empty((2, 1, nw), _U64))
    out_slice = np.empty((2, 2, nw), _U64)[:, :1]
    _call(carries.bilinear_xor, (mono, mono, pairs, pair_count, mono, index, index_count, constant,
                                 np.zeros((2, 1, nw), _U64), out_slice), {1}, {0, 8})
    variables, nodes = 2, 1
    g = np.zeros((4 * nodes, nw), _U64)
    mine = np.zeros((variables, nodes, nw), _U64)
    carries.tree_gather(g, g.copy(), np.array([False, True]), np.zeros(variables, _I64), 4, mine, mine.copy())
    needed = np.array([1, 2, 3], _I64)
    terms = np.array([[0, 1, -1], [1, 3, 0], [0, 2, 2]], _I64)
    _call(carries.tree_combine, (mine, mine.copy(), mine.copy(), np.zeros((1, nodes, nw), _U64), g, 4,
                                 carries.low_bit_index(1 << variables), needed, terms, True,
                                 np.empty((2, nodes, nw), _U64)), {1}, {1, 3})

    # protocols/select.py: P0 receives the peer's (beta, e); P1 also the dealer's [rho] and [a rho].
    rows = np.zeros((3, 2), _U64)
    _call(finish.select_finish, (packed[:1].copy(), packed[:1].copy(), rows, rows.copy(), np.zeros(3, _U64),
                                 rows.copy(), rows.copy(), np.empty_like(rows)), {1, 3}, {1, 3, 4, 5})
    # protocols/truncate.py: P1 receives r's pieces from the dealer; 4-d after a convolution, 2-d after a dense layer.
    for shape in ((1, 2, 2, 1), (1, 2)):
        c = np.zeros(shape, _U64)
        _call(finish.truncate_finish, (c, c.copy(), c.copy(), 16, True, _U64(1), np.empty_like(c)), {1, 2})
    # sharing/dcf.py (protocols.relu_fss): the correction words come from the dealer (read-only in-process).
    n, w, nb = 3, 3, 3
    seeds, blocks = np.zeros((n, 2), _U64), np.zeros((n, nb, 2), _U64)
    tweaks = np.zeros((3, 8, 2), _U64)
    dcf.eval_inputs(seeds, x[:n].copy(), 1, tweaks, -1, blocks)
    _call(dcf.eval_level, (blocks.copy(), blocks, np.zeros((n, 2 + w), _U64), np.zeros((2, n), np.uint8),
                           x[:n].copy(), 1, seeds, np.zeros(n, _U64), np.zeros((n, w), _U64), 0, tweaks), {2})
    _call(dcf.eval_leaf, (blocks.copy(), blocks, np.zeros(n, _U64), np.zeros((n, w), _U64), np.zeros((n, w), _U64)),
          {3})
    for width in (2, 3):
        gen_blocks = np.zeros((2, n, 2, 1 + (width + 1) // 2, 2), _U64)
        dcf.gen_level(gen_blocks.copy(), gen_blocks, x[:n].copy(), 1, np.zeros((n, width), _U64),
                      np.zeros((2, n, 2), _U64), np.zeros((2, n), _U64), np.zeros((n, width), _U64),
                      np.zeros((n, 2 + width), _U64), np.zeros((2, n), np.uint8), tweaks)
    # protocols/conv2d.py: the opened input is received when the client masked it (prepared material).
    image = np.zeros((1, 3, 3, 1), _U64)
    _call(finish.conv2d_finish, (image, np.zeros((2, 2, 1, 1), _U64), 1, 1, np.zeros((1, 2, 2, 1), _U64),
                                 np.empty((1, 2, 2, 1), _U64)), {0})
