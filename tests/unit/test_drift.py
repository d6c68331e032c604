"""Drift detectors on synthetic embeddings: same distribution passes, a shift is flagged."""

from __future__ import annotations

import numpy as np
import pytest

from flipserve.drift import make_detector
from flipserve.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _sample(n: int, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 16)) + shift).astype(np.float32)


@pytest.mark.parametrize("backend", ["ks", "frouros-mmd"])
def test_same_distribution_is_not_drift_and_a_shift_is(backend: str) -> None:
    detector = make_detector(backend, _sample(200, seed=1), threshold=0.05)
    same = detector.test(_sample(100, seed=2))
    shifted = detector.test(_sample(100, shift=0.8, seed=3))
    assert same.drift is False and same.p_value >= 0.05
    assert shifted.drift is True and shifted.p_value < 0.05
    assert shifted.backend == backend and shifted.n == 100


def test_ks_p_value_is_bonferroni_corrected_and_capped_at_one() -> None:
    detector = make_detector("ks", _sample(200, seed=1), threshold=0.05)
    result = detector.test(_sample(200, seed=1))
    assert result.p_value == 1.0


def test_unknown_backend_and_bad_shapes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown drift backend"):
        make_detector("nope", _sample(10), 0.05)
    with pytest.raises(ConfigError, match="n x hidden"):
        make_detector("ks", np.zeros(5, dtype=np.float32), 0.05)
    detector = make_detector("ks", _sample(10), 0.05)
    with pytest.raises(ConfigError, match="does not match reference"):
        detector.test(np.zeros((10, 3), dtype=np.float32))
