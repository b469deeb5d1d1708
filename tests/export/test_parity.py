"""The margin printed with an agreement: a Wilson score interval, checked against
SciPy's, and the count the figures rest on in a failed check's message."""

import numpy as np
import pytest
from scipy.stats import binomtest

from kvision.export.parity import ParityError, check, compare, wilson_interval


@pytest.mark.parametrize("successes, n", [(13, 16), (16, 16), (0, 16), (1, 1), (1743, 1797),
                                          (4, 5)])
def test_wilson_interval_is_scipys(successes, n):
    expected = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(successes, n) == pytest.approx((expected.low, expected.high),
                                                          rel=1e-9, abs=1e-12)


def test_a_failed_check_names_its_count_and_margin():
    reference = np.eye(4)[[0, 1, 2, 3] * 4]          # 16 images, 4 classes
    candidate = reference.copy()
    candidate[:3] = np.roll(candidate[:3], 1, -1)    # 3 top-1 flips: 13 of 16 agree
    figures = compare(reference, candidate)
    assert figures["num_images"] == 16
    assert figures["top1_agreement"] == 13 / 16
    with pytest.raises(ParityError, match=r"top-1 agreement 81\.25% < 97\.00% on 16 images "
                                          r"\(agreement's 95% interval 57\.0%-93\.4%\)") as error:
        check(figures, min_top1_agreement=0.97)
    assert error.value.failed == ("top1_agreement",)
    assert isinstance(error.value, ValueError)
