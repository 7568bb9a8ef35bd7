"""The scoring path's cheap checks behave like the library calls they replace."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from dcwatch.detectors.features import _column_median
from dcwatch.detectors.models.numeric import finite, require_fitted
from dcwatch.detectors.models.residual import RobustResidualDetector


@pytest.mark.parametrize(
    "kwargs", [{}, {"nan": 0.0, "posinf": 1e6, "neginf": -1e6}, {"nan": -1.0, "posinf": 5.0}]
)
def test_finite_matches_nan_to_num(kwargs: dict[str, float]) -> None:
    x = np.array([[1.5, np.nan, np.inf], [-np.inf, -2.0, 0.0]])
    got = finite(x, **kwargs)
    assert np.array_equal(got, np.nan_to_num(x, **kwargs))
    assert np.isnan(x[0, 1])  # a copy: the input is left alone


def test_finite_copies_when_nothing_to_replace() -> None:
    x = np.arange(6.0).reshape(2, 3)
    got = finite(x)
    got[0, 0] = 99.0
    assert x[0, 0] == 0.0


def test_require_fitted_raises_like_check_is_fitted() -> None:
    det = RobustResidualDetector()
    with pytest.raises(NotFittedError):
        check_is_fitted(det, "grid_")
    with pytest.raises(NotFittedError, match="RobustResidualDetector"):
        require_fitted(det, "grid_")
    det.fit(np.random.default_rng(0).standard_normal((50, 3)))
    require_fitted(det, "grid_")


@pytest.mark.parametrize("rows", [1, 2, 3, 20, 41])
def test_column_median_matches_numpy(rows: int) -> None:
    block = np.random.default_rng(rows).standard_normal((rows, 5))
    block[:, 1] = 7.0  # a constant column
    assert np.array_equal(_column_median(block), np.median(block, axis=0))
    block[0, 2] = np.nan  # NaN propagate as in np.median
    assert np.array_equal(_column_median(block), np.median(block, axis=0), equal_nan=True)
