"""VRA: variational rectified activation (Xu et al., NeurIPS 2023).

Xu, Lian, Wang, Zhang, "VRA: Variational Rectified Activation for Out-of-distribution
Detection", NeurIPS 2023 (arXiv 2302.11716; OpenOOD ``vra_postprocessor.py``). Formula and
defaults: ``docs/methods.md`` ("Post-2023 baselines").

Activations are rectified between a low threshold ``α`` and a high threshold ``β`` taken
as percentiles of the ID training features, then scored by the energy ``LSE(W·g(h) + b)``
(higher = more ID):

- ``clip`` (OpenOOD's and pytorch-ood's implementation, our default): ``g(z) = min(max(z, α), β)``;
- ``vra`` (our reading of the paper's piecewise operator): ``g(z) = 0`` for ``z < α``,
  ``z + γ`` for ``α ≤ z ≤ β``, ``β`` for ``z > β``.

Thresholds are percentiles of all training feature values (``scope=global``, OpenOOD) or
of each feature unit separately (``scope=per_unit``, pytorch-ood).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..extract import Extraction
from ..knobs import Knob, Paper
from .base import Detector, DetectorError, SortedValues, head_logits, logsumexp, register


def _unit_percentile(sorted_cols: np.ndarray, q: float) -> np.ndarray:
    """Per-column ``np.percentile(x, q, axis=0)`` (linear interpolation) from column-sorted ``x``."""
    pos = (len(sorted_cols) - 1) * (q / 100.0)
    lo = int(np.floor(pos))
    hi = min(lo + 1, len(sorted_cols) - 1)
    return sorted_cols[lo] + (sorted_cols[hi] - sorted_cols[lo]) * (pos - lo)


@register
class VRA(Detector):
    """VRA: energy of the head on features rectified between the ``low``-th and ``high``-th training percentiles."""

    name = "vra"
    title = "VRA (variational rectified activation)"
    paper = Paper("VRA: Variational Rectified Activation for Out-of-distribution Detection",
                  "Xu, Lian, Wang & Zhang", "NeurIPS", 2023, "https://arxiv.org/abs/2302.11716")
    needs = frozenset({"logits", "features", "head", "training"})
    family = "feature"
    help = ("ReAct clipped from both sides: activations above a high and below a low training percentile are cut "
            "before the energy score, which suppresses the abnormally large and small activations of OOD inputs; "
            "helps mostly on far OOD, and the percentiles adapt to the feature scale.")
    knobs = (
        Knob("high", 90.0, 50.0, 100.0, help="β at this percentile of the training feature values"),
        Knob("low", 10.0, 0.0, 50.0, help="α at this percentile of the training feature values"),
        Knob("variant", "clip", kind="choice", choices=("clip", "vra"),
             help="clip: min(max(h, α), β) (OpenOOD, pytorch-ood); vra: 0 below α, h + γ between, β above"),
        Knob("gamma", 0.5, 0.0, 10.0, help="γ added between α and β (variant=vra), in feature units"),
        Knob("scope", "global", kind="choice", choices=("global", "per_unit"),
             help="percentiles of all training feature values (OpenOOD) or of each unit (pytorch-ood)"),
    )
    grid = {"high": [85, 90, 95, 99], "low": [1, 5, 10, 15]}  # OpenOOD's sweep

    def _fit(self, train: Extraction) -> None:
        self.sorted_all = SortedValues.of(train.features)
        self._train_features = np.asarray(train.features, np.float64)
        self._sorted_units: np.ndarray | None = None  # per-unit sorted training values, built on first use
        self.train_info = {"n_train": len(train)}

    def thresholds(self, low: float, high: float, scope: str) -> tuple[Any, Any]:
        if low > high:
            raise DetectorError(f"vra.low ({low:g}) must not exceed vra.high ({high:g})")
        if scope == "global":
            return self.sorted_all.percentile(low), self.sorted_all.percentile(high)
        if self._sorted_units is None:  # sorted once: every later percentile is an index lookup, not a sort
            self._sorted_units = np.sort(self._train_features, axis=0)
        return _unit_percentile(self._sorted_units, low), _unit_percentile(self._sorted_units, high)

    def derived(self, high: float = 90.0, low: float = 10.0, scope: str = "global", **_: Any) -> dict[str, Any]:
        if not self.fitted or scope != "global" or low > high:
            return {}
        a, b = self.thresholds(low, high, scope)
        return {"α (absolute)": a, "β (absolute)": b}

    def _score(self, ext: Extraction, high: float, low: float, variant: str, gamma: float,
               scope: str) -> np.ndarray:
        a, b = self.thresholds(low, high, scope)
        h = np.asarray(ext.features, np.float64)
        if variant == "clip":
            g = np.minimum(np.maximum(h, a), b)
        else:
            g = np.where(h < a, 0.0, np.where(h > b, b, h + gamma))
        return logsumexp(head_logits(g, ext.head_weight, ext.head_bias))
