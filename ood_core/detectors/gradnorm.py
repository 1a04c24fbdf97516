"""The GradNorm family on cached arrays: GradNorm by its exact closed form on the last layer,
and RG (ReActivate GradNorm), which swaps GradNorm's factors: ``rg``, ``rg_add`` and ``uv``.

The last-layer GradNorm factorises into an output-space factor ``U`` and a feature-space
factor ``V``; RG takes energy for ``U`` and a clipped L1 norm for ``V`` (ReAct's clip, fitted
by :class:`.react.ClipFromTraining`). ``rg`` multiplies them, ``rg_add`` adds them (eq. 12)
and ``uv`` lets a user rebuild the paper's Table 2 ablation (U ∈ GradNorm / energy / 1,
V ∈ L1 / clipped L1 / 1) on their own model. GradNorm through autograd on any layer is
:mod:`.gradnorm_exact`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..extract import Extraction
from ..knobs import Knob, Paper
from .base import Detector, DetectorError, clipped_l1, energy, logsumexp, register, shifted_exp
from .react import ClipFromTraining

GRADNORM_PAPER = Paper("On the Importance of Gradients for Detecting Distributional Shifts in the Wild",
                       "Huang, Geng & Li", "NeurIPS", 2021, "https://arxiv.org/abs/2110.00218")


def gradnorm_u(logits: np.ndarray, T: float = 1.0) -> np.ndarray:
    """The output-space factor ``Σ_i |p_i − 1/C|`` with ``p = softmax(f/T)``."""
    # Σ|e_i/s − 1/C| = Σ|e_i − s/C| / s, computed in place on the exponentials (hot path).
    _, e, s = shifted_exp(logits, T, 1)
    np.subtract(e, s / e.shape[1], out=e)
    np.abs(e, out=e)
    return e.sum(axis=1) / s[:, 0]


def feature_l1(ext: Extraction) -> np.ndarray:
    """``‖h‖₁`` per sample: knob-independent, so memoised on the extraction."""
    return ext.memo("feature_l1", lambda: np.abs(ext.features.astype(np.float64)).sum(axis=1))


def gradnorm_closed_form(logits: np.ndarray, features: np.ndarray, T: float = 1.0, include_bias: bool = False,
                         feature_l1: np.ndarray | None = None) -> np.ndarray:
    """``‖∂L/∂W‖_1 (+ ‖∂L/∂b‖_1)`` for ``L = KL(u ‖ softmax(f/T))``.

    ``∂L/∂f = (p − u)/T`` so ``∂L/∂W = (p − u) hᵀ / T`` and its L1 norm factorises as
    ``(1/T)·Σ_i |p_i − 1/C| · Σ_j |h_j|``; the bias adds ``(1/T)·Σ_i |p_i − 1/C|``.
    """
    u = gradnorm_u(logits, T)
    v = feature_l1 if feature_l1 is not None else np.abs(np.asarray(features, np.float64)).sum(axis=1)
    if include_bias:
        v = v + 1.0
    return u * v / T


@register
class GradNorm(Detector):
    """GradNorm: L1 norm of the last layer's gradient of ``KL(u ‖ softmax(f/T))``.

    ``S = (1/T)·Σ_i |p_i − 1/C| · ‖h‖_1`` (exact closed form, no backward pass needed).
    Higher = more ID: ID samples are confident, so p is far from uniform.
    """

    name = "gradnorm"
    title = "GradNorm (closed form, last layer)"
    paper = GRADNORM_PAPER
    needs = frozenset({"logits", "features"})
    family = "gradient"
    knobs = (
        Knob("T", 1.0, 0.1, 100.0, "log", help="temperature of the softmax in the KL loss"),
        Knob("include_bias", False, kind="bool", help="add the bias gradient's L1 norm (the reference code uses the weight only)"),
    )
    grid = {"T": [0.5, 1, 2, 4, 8]}

    def _score(self, ext: Extraction, T: float, include_bias: bool) -> np.ndarray:
        return gradnorm_closed_form(ext.logits, ext.features, T, include_bias, feature_l1(ext))


# --- RG: ReActivate GradNorm -----------------------------------------------------------

RG_PAPER = Paper("ReActivate GradNorm: gradient-based OOD detection by decomposing the gradient",
                 "the ReAct-GradNorm authors", "preprint", 2024, "")
K_KNOBS = (
    Knob("k_mode", "percentile", kind="choice", choices=("percentile", "absolute"),
         help="give the clip k as a percentile of training feature values or as an absolute value"),
    Knob("q", 90.0, 1.0, 100.0, help="k as this percentile of all training feature values (k_mode=percentile)"),
    Knob("k", 1.0, 0.0, 1e6, help="k in feature units (k_mode=absolute); the paper's default is 1"),
)
ALPHA_SAMPLES = 1000
ALPHA_SEED = 0


class ClipK(ClipFromTraining):
    """RG's clip ``k``, given absolutely or as a percentile of all training feature values."""

    needs = frozenset({"logits", "features", "training"})
    family = "gradient"
    paper = RG_PAPER

    def clip_value(self, k_mode: str, q: float, k: float) -> float:
        return self.sorted_feats.percentile(q) if k_mode == "percentile" else float(k)

    def derived(self, k_mode: str = "percentile", q: float = 90.0, k: float = 1.0, **_: Any) -> dict[str, Any]:
        """Both forms of k, so a user sees the absolute clip and where it sits in the training values."""
        if not self.fitted:
            return {}
        kv = self.clip_value(k_mode, q, k)
        vals = self.sorted_feats.values
        pct = 100.0 * np.searchsorted(vals, kv, side="right") / max(1, vals.size)
        return {"k (absolute)": kv, "k (percentile of training features)": float(pct)}


def rg_score(logits: np.ndarray, features: np.ndarray, k: float, T: float = 1.0) -> np.ndarray:
    """RG, multiplicative (eq. 8): ``S = T·LSE(f/T) · Σ_j min(h_j, k)``."""
    return energy(logits, T) * clipped_l1(features, k)


def _n_negative_energy(logits: np.ndarray, T: float) -> dict[str, Any]:
    return {"samples with LSE(f/T) ≤ 0": int((logsumexp(logits, T=T) <= 0).sum())}


@register
class RG(ClipK):
    """RG (ReAct-GradNorm, multiplicative): ``S = T·LSE(f/T) · Σ_j min(h_j, k)``.

    The output-space factor (energy) times the clipped feature L1 norm. ``k`` is in the
    units of the model's features: give it absolutely (``k_mode=absolute``) or as the
    q-th percentile of training feature values (``k_mode=percentile``). Where
    ``LSE(f/T) ≤ 0`` the product's order reverses; :meth:`diagnostics` counts those.
    """

    name = "rg"
    title = "RG: ReActivate GradNorm (energy × clipped feature L1)"
    knobs = (
        *K_KNOBS,
        Knob("T", 1.0, 0.1, 100.0, "log", help="energy temperature"),
    )
    grid = {"k": [0.1, 0.3, 0.5, 0.7, 1, 2, 3, 5, 1e6], "T": [0.5, 1, 2, 4, 8, 16, 32, 64]}

    def _score(self, ext: Extraction, k_mode: str, q: float, k: float, T: float) -> np.ndarray:
        return rg_score(ext.logits, ext.features, self.clip_value(k_mode, q, k), T)

    def diagnostics(self, ext: Extraction, T: float = 1.0, **_: Any) -> dict[str, Any]:
        return _n_negative_energy(ext.logits, T)


@register
class RGAdditive(ClipK):
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
class UV(ClipK):
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
        return _n_negative_energy(ext.logits, T) if U == "energy" else {}
