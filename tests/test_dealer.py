"""The dealer's material made ahead: recorded shares replay in call order, and only for the same calls."""

import numpy as np
import pytest

from pysmpc.parties.dealer import MaterialMismatch
from pysmpc.protocols.relu import relu
from pysmpc.runtime.local import run_parties
from pysmpc.sharing.shares import AShare, reconstruct, share
from pysmpc.sharing.prg import PRG


def _relu_with_material(shape_prepared, shape_run, seeds):
    values = np.arange(-5, 5, dtype=np.int64).astype(np.uint64)[: int(np.prod(shape_run))].reshape(shape_run)
    shares = share(values, PRG(b"k" * 16))

    def program(party):
        with party.dealer.recording() as bundle:
            relu(party, AShare(None, party.index, shape_prepared))
        assert party.channel.totals(online=True).rounds == 0  # nothing online while preparing
        if not party.computes:
            return None, bundle
        with party.dealer.replaying(bundle):
            out = relu(party, AShare(shares[party.index], party.index))
        with pytest.raises(MaterialMismatch, match="used already"):
            with party.dealer.replaying(bundle):
                pass
        return out.value, bundle

    results, _ = run_parties(program, seeds=seeds)
    return values, results


def test_replayed_material_gives_the_same_result_with_no_dealer_traffic(seeds):
    values, results = _relu_with_material((10,), (10,), seeds)
    out = reconstruct(results[0][0], results[1][0])
    np.testing.assert_array_equal(out.view(np.int64), np.maximum(values.view(np.int64), 0))
    assert results[2][1].items == []  # P2 keeps nothing
    assert results[0][1].nbytes > 0 and results[1][1].nbytes > 0


def test_material_for_another_shape_is_refused(seeds):
    with pytest.raises(MaterialMismatch, match="different plan or batch size"):
        _relu_with_material((12,), (10,), seeds)


@pytest.mark.parametrize("name", ["exp", "reciprocal", "sigmoid", "softmax", "relu6"])
def test_nonlinearities_run_on_material_made_ahead(name, seeds):
    """The dealer calls do not depend on the data: replayed material gives the online run's result."""
    from helpers import FP
    from pysmpc.protocols.clip import relu6
    from pysmpc.protocols.exp import exp
    from pysmpc.protocols.reciprocal import reciprocal
    from pysmpc.protocols.sigmoid import sigmoid
    from pysmpc.protocols.softmax import softmax

    protocol = {"exp": exp, "reciprocal": lambda p, a: reciprocal(p, a, lo=0.5, hi=50.0), "sigmoid": sigmoid,
                "softmax": softmax, "relu6": relu6}[name]
    values = np.linspace(0.5, 9.5, 12).reshape(3, 4)
    shares = share(FP.encode(values), PRG(b"n" * 16))

    def program(party, prepared):
        x = AShare(shares[party.index], party.index) if party.computes else AShare(None, party.index, values.shape)
        if not prepared:
            return protocol(party, x).value
        with party.dealer.recording() as bundle:
            protocol(party, AShare(None, party.index, values.shape))
        assert party.channel.totals(online=True).rounds == 0
        if not party.computes:
            return None
        with party.dealer.replaying(bundle):
            return protocol(party, x).value

    online, _ = run_parties(lambda p: program(p, False), seeds=seeds)
    replayed, parties = run_parties(lambda p: program(p, True), seeds=seeds)
    np.testing.assert_array_equal(reconstruct(replayed[0], replayed[1]), reconstruct(online[0], online[1]))
    assert parties[2].channel.totals(online=True).bytes_sent == 0
