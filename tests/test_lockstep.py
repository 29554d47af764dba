"""parties.lockstep: programs of one party run together, their exchanges merged into shared rounds."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import FP, reconstruct_result, signed
from conftest import fixed_seeds
from pysmpc.parties.lockstep import run_in_lockstep, run_pipelined
from pysmpc.protocols.mul import mul
from pysmpc.protocols.relu import relu
from pysmpc.runtime.local import run_parties
from pysmpc.sharing.prg import PRG
from pysmpc.sharing.shares import AShare, share


def _shares(values, party):
    prg = PRG(bytes(16))
    pairs = [share(v, prg) for v in values]
    if party.is_dealer:
        return [AShare(None, party.index, v.shape) for v in values]
    return [AShare(pair[party.index], party.index) for pair in pairs]


def run_programs(steps, deps, inputs, pipelined=False, log=None):
    """steps[i](party, xs) -> AShare, with xs the shared inputs; on P0/P1 in lockstep after deps, or pipelined.

    `log` gets P0's channel sends and receives in order.
    """

    def program(party):
        xs = _shares(inputs, party)
        outs = [None] * len(steps)

        def make(i):
            def run(p):
                outs[i] = steps[i](p, xs)
            return run

        programs = [make(i) for i in range(len(steps))]
        bundles = []
        for run in programs:  # the material first, in program order (P2 deals as usual)
            with party.dealer.capturing() as bundle:
                run(party)
            bundles.append(bundle)
        if not party.computes:
            return outs, None
        if log is not None and party.index == 0:
            channel, send, recv = party.channel, party.channel.send, party.channel.recv
            channel.send = lambda to, data, tag: (log.append(("send", tag)), send(to, data, tag=tag))[1]
            channel.recv = lambda frm, tag, rounds=1: (log.append(("recv", tag)), recv(frm, tag=tag, rounds=rounds))[1]
        if pipelined:
            return outs, run_pipelined(party, programs, bundles)
        return outs, run_in_lockstep(party, programs, deps, bundles)

    results, parties = run_parties(program, seeds=fixed_seeds("pipelined" if pipelined else "lockstep"))
    outs = [reconstruct_result([r[0][i] for r in results]) for i in range(len(steps))]
    return outs, results[0][1], parties


def relu_mul_relu(seed):
    """Inputs a, b and three independent programs: relu(a) (4 rounds), b * b (1 round), relu(b) (4 rounds)."""
    rng = np.random.default_rng(seed)
    a, b = FP.encode(rng.uniform(-5, 5, (3, 7))), FP.encode(rng.uniform(-5, 5, (2, 4)))
    steps = [lambda p, xs: relu(p, xs[0], tag="relu:a"),
             lambda p, xs: mul(p, xs[1], xs[1], tag="mul:b"),
             lambda p, xs: relu(p, xs[1], tag="relu:b")]
    return a, b, steps


def assert_relu_mul_relu(outs, a, b):
    np.testing.assert_array_equal(signed(outs[0]), np.maximum(signed(a), 0))
    np.testing.assert_array_equal(outs[1], b * b)
    np.testing.assert_array_equal(signed(outs[2]), np.maximum(signed(b), 0))


def test_independent_programs_share_rounds_and_get_their_own_answers():
    a, b, steps = relu_mul_relu(0)
    outs, stats, parties = run_programs(steps, [[], [], []], [a, b])
    assert_relu_mul_relu(outs, a, b)
    p0 = parties[0].channel.totals(online=True)
    assert p0.rounds == 4  # not 9
    assert [s.rounds for s in stats] == [4, 0, 0]  # each shared round counts for the first program in it
    assert sum(s.bytes_sent for s in stats) == p0.bytes_sent
    assert any("relu:a" in t and "mul:b" in t for t in parties[1].channel.stats()), parties[1].channel.stats()


def test_a_program_starts_when_its_dependencies_end():
    rng = np.random.default_rng(1)
    a = FP.encode(rng.uniform(-5, 5, (4,)))
    got = {}

    def first(p, xs):
        got[p.index] = mul(p, xs[0], xs[0], tag="first")
        return got[p.index]

    def second(p, xs):  # reads what 'first' made (this party's): must run after it
        return mul(p, got[p.index], xs[0], tag="second")

    outs, stats, parties = run_programs([first, second, lambda p, xs: relu(p, xs[0], tag="other")],
                                        [[], [0], []], [a])
    np.testing.assert_array_equal(outs[1], a * a * a)
    assert parties[0].channel.totals(online=True).rounds == 4  # first, second inside relu's four
    assert [s.rounds for s in stats] == [1, 1, 2]


def test_an_error_in_one_program_is_raised_and_the_others_unwind():
    def broken(p, xs):
        mul(p, xs[0], xs[0], tag="ok")
        raise RuntimeError("boom in program 1")

    with pytest.raises(RuntimeError, match="boom in program 1"):
        run_programs([lambda p, xs: relu(p, xs[0], tag="long"), broken], [[], []],
                     [FP.encode(np.ones(3))])


def test_capturing_inside_a_recording_and_a_replay_keeps_the_same_material():
    """Material captured per program inside an outer recording replays to the same shares."""

    def program(party):
        x = _shares([FP.encode(np.arange(5.0))], party)[0]
        with party.dealer.recording() as outer:
            with party.dealer.capturing() as inner:
                relu(party, x, tag="r")
        if party.is_dealer:
            return None
        assert inner.items and len(inner.items) == len(outer.items)
        assert all(a is b for a, b in zip(inner.items, outer.items))
        with party.dealer.replaying(outer):
            with party.dealer.capturing() as again:
                relu(party, x, tag="r")
        assert all(a is b for a, b in zip(again.items, outer.items))
        return True

    results, _ = run_parties(program, seeds=fixed_seeds("capture"))
    assert results[0] and results[1]


def test_pipelined_programs_get_their_answers_and_count_the_first_programs_rounds():
    a, b, steps = relu_mul_relu(2)
    outs, stats, parties = run_programs(steps, None, [a, b], pipelined=True)
    assert_relu_mul_relu(outs, a, b)
    p0 = parties[0].channel.totals(online=True)
    assert p0.rounds == 4  # program 0's: the others' messages travel within them
    assert [s.rounds for s in stats] == [4, 1, 4]  # each program's own exchanges
    assert sum(s.bytes_sent for s in stats) == p0.bytes_sent
    assert not any("+" in tag for tag in parties[1].channel.stats())  # nothing merged: each sends its own


def test_pipelined_programs_send_before_they_wait():
    """The overlap itself: every program's first message leaves before the first reply is awaited."""
    x = FP.encode(np.linspace(-3, 3, 10))
    log: list = []
    steps = [lambda p, xs, k=k: mul(p, mul(p, xs[0], xs[0], tag=f"m{k}"), xs[0], tag=f"n{k}") for k in range(3)]
    outs, _, _ = run_programs(steps, None, [x], pipelined=True, log=log)
    for out in outs:
        np.testing.assert_array_equal(out, x * x * x)
    assert log[:4] == [("send", "m0"), ("send", "m1"), ("send", "m2"), ("recv", "m0")], log
    # Program 0 computes its second product as soon as its reply is in, while the others' replies travel.
    assert log[4] == ("send", "n0"), log
    assert [e for e in log if e[0] == "recv"] == [("recv", t) for t in ("m0", "m1", "m2", "n0", "n1", "n2")]


def test_an_error_in_a_pipelined_program_is_raised_and_the_others_unwind():
    def broken(p, xs):
        mul(p, xs[0], xs[0], tag="ok")
        raise RuntimeError("boom in program 1")

    with pytest.raises(RuntimeError, match="boom in program 1"):
        run_programs([lambda p, xs: relu(p, xs[0], tag="long"), broken], None, [FP.encode(np.ones(3))], pipelined=True)
