"""Two-sample drift detection on sentence embeddings, behind one small interface.

A detector is fitted on the reference embeddings saved with a model
(``drift/reference.npy``) and then asked whether a window of recent
embeddings comes from the same distribution: ``test(window)`` returns a
p-value and a flag (``p_value < threshold``). The server runs it on live
traffic; the promotion's drift gate runs it on a traffic sample against a
candidate's reference.

Backends (``FLIPSERVE_DRIFT_BACKEND``):

- ``ks``: the project's own — a Kolmogorov-Smirnov test per embedding
  dimension (scipy), Bonferroni-corrected. Open source (BSD), fast, no torch.
- ``frouros-mmd``: frouros' MMD with a permutation test (BSD).
- ``alibi-mmd`` / ``alibi-ks``: alibi-detect's MMDDrift (pytorch backend) and
  KSDrift. alibi-detect >= 0.12 is under the Business Source License.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from flipserve.errors import ConfigError

Embeddings = npt.NDArray[np.float32]
BACKENDS = ("ks", "frouros-mmd", "alibi-mmd", "alibi-ks")
_PERMUTATIONS = 100


@dataclass(frozen=True)
class DriftResult:
    """One test's verdict: ``drift`` is ``p_value < threshold``."""

    p_value: float
    drift: bool
    threshold: float
    n: int
    backend: str


class Detector(Protocol):
    """Fitted on reference embeddings; tests a window of new ones against them."""

    backend: str
    threshold: float

    def test(self, window: Embeddings) -> DriftResult: ...


def _check(window: Embeddings, reference: npt.NDArray[Any]) -> Embeddings:
    x = np.asarray(window, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != reference.shape[1] or len(x) < 2:
        raise ConfigError(
            f"drift window of shape {x.shape} does not match reference {reference.shape}"
        )
    return x


class KSDetector:
    """Per-dimension two-sample KS tests; the smallest p-value, Bonferroni-corrected."""

    backend = "ks"

    def __init__(self, reference: Embeddings, threshold: float) -> None:
        self.reference = np.asarray(reference, dtype=np.float32)
        self.threshold = threshold

    def test(self, window: Embeddings) -> DriftResult:
        from scipy.stats import ks_2samp

        x = _check(window, self.reference)
        p_values = np.atleast_1d(ks_2samp(self.reference, x, axis=0).pvalue)
        p = float(min(1.0, p_values.min() * len(p_values)))
        return DriftResult(p, p < self.threshold, self.threshold, len(x), self.backend)


def _median_sigma(reference: npt.NDArray[Any]) -> float:
    """The median heuristic for an RBF kernel's bandwidth."""
    from scipy.spatial.distance import pdist

    distances = pdist(reference[:500])
    return float(np.median(distances)) or 1.0


class FrourosMMDDetector:
    """frouros' MMD (RBF kernel, median bandwidth) with a permutation test."""

    backend = "frouros-mmd"

    def __init__(self, reference: Embeddings, threshold: float, seed: int = 13) -> None:
        from frouros.callbacks import PermutationTestDistanceBased
        from frouros.detectors.data_drift import MMD
        from frouros.utils.kernels import rbf_kernel

        self.reference = np.asarray(reference, dtype=np.float64)
        self.threshold = threshold
        # num_jobs=1: a server must not fork a process pool behind the event loop.
        callback = PermutationTestDistanceBased(
            num_permutations=_PERMUTATIONS, num_jobs=1, random_state=seed, name="perm"
        )
        kernel = partial(rbf_kernel, sigma=_median_sigma(self.reference))
        self._detector = MMD(kernel=kernel, callbacks=[callback])
        self._detector.fit(X=self.reference)

    def test(self, window: Embeddings) -> DriftResult:
        x = _check(window, self.reference).astype(np.float64)
        _, logs = self._detector.compare(X=x)
        p = float(logs["perm"]["p_value"])
        return DriftResult(p, p < self.threshold, self.threshold, len(x), self.backend)


class AlibiDetector:
    """alibi-detect's MMDDrift (pytorch backend) or KSDrift (Bonferroni)."""

    def __init__(self, reference: Embeddings, threshold: float, kind: str) -> None:
        self.backend = f"alibi-{kind}"
        self.threshold = threshold
        self.reference = np.asarray(reference, dtype=np.float32)
        self._detector = self._build(kind)

    def _build(self, kind: str) -> Any:
        if kind == "mmd":
            from alibi_detect.cd import MMDDrift

            return MMDDrift(
                self.reference,
                backend="pytorch",
                p_val=self.threshold,
                n_permutations=_PERMUTATIONS,
            )
        from alibi_detect.cd import KSDrift

        return KSDrift(self.reference, p_val=self.threshold, correction="bonferroni")

    def test(self, window: Embeddings) -> DriftResult:
        x = _check(window, self.reference)
        data = self._detector.predict(x)["data"]
        # KSDrift reports one p-value per feature: report the corrected minimum.
        p_values = np.atleast_1d(data["p_val"])
        p = float(min(1.0, p_values.min() * len(p_values)))
        return DriftResult(p, bool(data["is_drift"]), self.threshold, len(x), self.backend)


def make_detector(backend: str, reference: Embeddings, threshold: float) -> Detector:
    """Fit the ``backend`` detector on ``reference`` (n x hidden embeddings)."""
    ref = np.asarray(reference, dtype=np.float32)
    if ref.ndim != 2 or len(ref) < 2:
        raise ConfigError(f"drift reference must be n x hidden with n >= 2, got {ref.shape}")
    if backend == "ks":
        return KSDetector(ref, threshold)
    if backend == "frouros-mmd":
        return FrourosMMDDetector(ref, threshold)
    if backend in ("alibi-mmd", "alibi-ks"):
        return AlibiDetector(ref, threshold, backend.removeprefix("alibi-"))
    raise ConfigError(f"unknown drift backend {backend!r}; choose one of {', '.join(BACKENDS)}")
