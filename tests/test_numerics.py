"""The float32 tolerance the suite compares differently-ordered results with."""

import numpy as np
import pytest

from kvision.testing import EPS32, assert_float32_close, float32_atol


def test_tolerance_holds_other_summation_orders_and_scales_with_the_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 4608)).astype(np.float32)
    b = rng.normal(size=4608).astype(np.float32)
    products = a * b
    forward = products.sum(axis=1, dtype=np.float32)
    blocked = products.reshape(64, 72, 64).sum(axis=2, dtype=np.float32).sum(
        axis=1, dtype=np.float32)                       # another order, another rounding
    exact = (a.astype(np.float64) * b).sum(axis=1)
    assert not np.array_equal(forward, blocked)
    assert_float32_close(forward, exact, terms=4608)
    assert_float32_close(blocked, exact, terms=4608)
    assert_float32_close(1000 * forward, 1000 * exact, terms=4608)  # relative to size
    assert float32_atol(1000 * exact, terms=4608) == pytest.approx(
        1000 * float32_atol(exact, terms=4608))
    with pytest.raises(AssertionError):  # a real error, 1e-3 of the size, is caught
        assert_float32_close(forward + 1e-3 * np.abs(exact).max(), exact, terms=4608)


def test_tolerance_is_a_few_thousand_eps_at_most_for_deep_reductions():
    atol = float32_atol([1.0], terms=25088, depth=3)
    assert 100 * EPS32 < atol < 1e-2
