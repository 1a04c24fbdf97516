"""RG's gradient decomposition beyond the product: the additive form and the U×V ablation.

The last-layer GradNorm factorises into an output-space factor ``U`` and a feature-space
factor ``V``; RG (ReAct-GradNorm) swaps GradNorm's factors for energy and a clipped L1 norm.
``rg_add`` adds the two (eq. 12) and ``uv`` lets a user rebuild the paper's Table 2
ablation (U ∈ GradNorm / energy / 1, V ∈ L1 / clipped L1 / 1) on their own model.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..extract import Extraction
from ..knobs import Knob
from .base import DetectorError, clipped_l1, energy, logsumexp, register
from .feature import K_KNOBS, RG_PAPER, ClipK
from .gradnorm import feature_l1, gradnorm_u

ALPHA_SAMPLES = 1000
ALPHA_SEED = 0

class _ClipK(ClipK):
    paper = RG_PAPER


@register
class RGAdditive(_ClipK):
    """RG, additive (eq. 12): ``S = LSE(f) + α·Σ_j min(h_j, k)``, ``α = c·α_s``.

    ``α_s = std(LSE(f)) / std(Σ_j min(h_j, k))`` over 1,000 training samples drawn once
    with a fixed seed (all of them when the split is smaller), recomputed for each ``k``.
    When the clipped sum does not vary (e.g. ``k = 0``) it cannot change the ranking and
    ``α_s`` is set to 0.
    """

    name = "rg_add"
    title = "RG additive (energy + α·clipped feature L1)"
    knobs = (Knob("c", 0.5, 0.1, 2.0, help="α = c·α_s; the paper sweeps 0.3 to 1.2"),) + K_KNOBS
    grid = {"c": [0.3, 0.5, 0.7, 0.9, 1.2], "q": [70, 80, 90, 95, 99]}

    def _fit(self, train: Extraction) -> None:
        super()._fit(train)
        n = len(train)
        idx = np.random.default_rng(ALPHA_SEED).choice(n, size=min(ALPHA_SAMPLES, n), replace=False)
        self._alpha_lse = logsumexp(np.asarray(train.logits, np.float64)[idx])
        self._alpha_feats = np.asarray(train.features, np.float64)[idx]
        self.train_info["alpha samples"] = int(idx.size)

    def alpha_s(self, kv: float) -> float:
        sd = float(np.std(clipped_l1(self._alpha_feats, kv)))
        return float(np.std(self._alpha_lse)) / sd if sd > 0 else 0.0

    def derived(self, c: float = 0.5, k_mode: str = "percentile", q: float = 90.0, k: float = 1.0,
                **kw: Any) -> dict[str, Any]:
        out = super().derived(k_mode=k_mode, q=q, k=k)
        if self.fitted:
            a_s = self.alpha_s(self.clip_value(k_mode, q, k))
            out.update({"alpha_s": a_s, "alpha = c·alpha_s": c * a_s})
        return out

    def _score(self, ext: Extraction, c: float, k_mode: str, q: float, k: float) -> np.ndarray:
        kv = self.clip_value(k_mode, q, k)
        return logsumexp(ext.logits) + c * self.alpha_s(kv) * clipped_l1(ext.features, kv)


U_HELP = "output-space factor: gradnorm Σ|p_i − 1/C| (p = softmax(f/T)), energy T·LSE(f/T), or 1"
V_HELP = "feature-space factor: l1 ‖h‖₁, clipped Σ min(h_j, k), or 1"


def u_factor(logits: np.ndarray, U: str, T: float = 1.0) -> np.ndarray:
    if U == "gradnorm":
        return gradnorm_u(logits, T)
    if U == "energy":
        return energy(logits, T)
    if U == "one":
        return np.ones(len(logits))
    raise DetectorError(f"uv.U must be gradnorm, energy or one; got {U!r}")


def v_factor(features: np.ndarray, V: str, k: float) -> np.ndarray:
    if V == "l1":
        return np.abs(np.asarray(features, np.float64)).sum(axis=1)
    if V == "clipped":
        return clipped_l1(features, k)
    if V == "one":
        return np.ones(len(features))
    raise DetectorError(f"uv.V must be l1, clipped or one; got {V!r}")


@register
class UV(_ClipK):
    """RG's ablation as one detector: ``S = U·V``.

    ``U`` ∈ {``gradnorm``: Σ|p_i − 1/C|, ``energy``: T·LSE(f/T), ``one``}, ``V`` ∈
    {``l1``: ‖h‖₁, ``clipped``: Σ min(h_j, k), ``one``}. ``energy × clipped`` is RG,
    ``gradnorm × l1`` is GradNorm (up to the constant 1/T), ``energy × l1`` the score RG's
    tables list as Igoe et al. 2022. Sweeping U and V on the Tuning page gives the table.
    With U = energy and a negative energy the product reverses order (as for ``rg``).
    """

    name = "uv"
    title = "RG ablation: U (output) × V (feature)"
    knobs = (
        Knob("U", "energy", kind="choice", choices=("gradnorm", "energy", "one"), help=U_HELP),
        Knob("V", "clipped", kind="choice", choices=("l1", "clipped", "one"), help=V_HELP),
        Knob("T", 1.0, 0.1, 100.0, "log", help="temperature of U"),
    ) + K_KNOBS
    grid = {"U": ["gradnorm", "energy", "one"], "V": ["l1", "clipped", "one"]}

    def _score(self, ext: Extraction, U: str, V: str, T: float, k_mode: str, q: float, k: float) -> np.ndarray:
        kv = self.clip_value(k_mode, q, k) if V == "clipped" else 0.0
        v = feature_l1(ext) if V == "l1" else v_factor(ext.features, V, kv)
        return u_factor(ext.logits, U, T) * v

    def diagnostics(self, ext: Extraction, T: float = 1.0, U: str = "energy", **_: Any) -> dict[str, Any]:
        if U != "energy":
            return {}
        return {"samples with LSE(f/T) ≤ 0": int((logsumexp(ext.logits, T=T) <= 0).sum())}
