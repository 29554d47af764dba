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
