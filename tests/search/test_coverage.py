"""pass@k against exact binomial ratios, and the coverage-law fit on exact law values."""

import math
from fractions import Fraction

import numpy as np
import pytest

from itscale import search


def _exact_pass_at_k(n, c, k):
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def test_pass_at_k_by_hand():
    assert search.pass_at_k(5, 2, 2) == pytest.approx(0.7)           # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert search.pass_at_k(10, 3, 1) == pytest.approx(0.3)          # pass@1 = c / n
    assert search.pass_at_k(10, 0, 4) == 0.0
    assert search.pass_at_k(10, 7, 4) == 1.0                         # n - c < k
    np.testing.assert_allclose(search.pass_at_k(np.array([5, 10]), np.array([2, 3]), 2),
                               [0.7, _exact_pass_at_k(10, 3, 2)])


def test_pass_at_k_is_stable_where_binomials_overflow():
    for n, c, k in [(10_000, 5, 1_000), (10_000, 9_000, 10), (2_000, 1, 1_999), (50_000, 3, 7)]:
        assert search.pass_at_k(n, c, k) == pytest.approx(_exact_pass_at_k(n, c, k), rel=1e-10, abs=1e-15)


def test_pass_at_k_errors():
    with pytest.raises(ValueError, match="num_correct"):
        search.pass_at_k(5, 6, 1)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        search.pass_at_k(5, 1, 0)
    with pytest.raises(ValueError, match="num_samples >= k"):
        search.pass_at_k(3, 1, 4)
    with pytest.raises(TypeError, match="integer counts"):
        search.pass_at_k(5.0, 1, 1)


def test_coverage_law_fit_recovers_exact_parameters():
    k = np.array([1, 2, 4, 8, 16, 32, 64, 128])
    law = search.CoverageLaw(a=-2.0, b=-0.4)
    fit = search.fit_coverage_law(k, law(k))
    assert fit.a == pytest.approx(-2.0, rel=1e-9) and fit.b == pytest.approx(-0.4, rel=1e-9)
    assert law(1) == pytest.approx(np.exp(-2.0))
    with_edges = np.concatenate([law(k), [0.0, 1.0]])
    assert search.fit_coverage_law(np.concatenate([k, [1, 1000]]), with_edges).b == pytest.approx(-0.4)
    with pytest.raises(ValueError, match="at least two points"):
        search.fit_coverage_law([1, 2], [1.0, 0.5])
