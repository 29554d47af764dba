"""AShare's local operations: shapes of sums and products with public values, dealer views included."""

import numpy as np
import pytest

from pysmpc.sharing.shares import AShare


@pytest.mark.parametrize("public_shape", [(), (3,), (2, 1), (2, 3)])
def test_public_operands_broadcast_like_numpy(public_shape):
    share = AShare(np.arange(6, dtype=np.uint64).reshape(2, 3), 0)
    public = np.ones(public_shape, np.uint64)
    for result in (share.add_public(public), share * public):
        assert result.shape == np.broadcast_shapes((2, 3), public_shape) == result.value.shape
    dealer_view = AShare(None, 2, (2, 3))
    assert (dealer_view * public).shape == (2, 3) and (dealer_view + dealer_view).shape == (2, 3)


def test_share_sum_broadcasts_and_refuses_mismatched_shapes():
    a = AShare(np.ones((2, 3), np.uint64), 1)
    assert (a + AShare(np.ones((1, 3), np.uint64), 1)).shape == (2, 3)
    with pytest.raises(ValueError):
        a + AShare(np.ones((4,), np.uint64), 1)
