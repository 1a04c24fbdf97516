"""GReg+ energy-based selection of auxiliary outliers (Sharifi et al., ECCV 2024).

Per iteration: draw a candidate pool of ``pool_factor·B`` auxiliary samples, compute
with the current model (eval mode, no grad) their L2-normalised features and their
energies ``E = -LSE(f)``, cluster the features with k-means (k = B, scikit-learn), and
from every cluster take the **lowest**-energy sample (the most ID-looking outlier: the
one the energy margin ``L_S`` has most to teach about) and the **highest**-energy
sample (the most clearly detected one: where the gradient penalty ``L_∇S`` applies).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans

from ..detectors.distance import l2_normalise
from .losses import free_energy


@dataclass
class Selection:
    """Indices into the candidate pool, one per cluster, in cluster order."""

    low: np.ndarray  # lowest energy per cluster -> L_S
    high: np.ndarray  # highest energy per cluster -> L_∇S
    clusters: np.ndarray  # cluster label of every candidate


def select_by_energy(features: np.ndarray, energies: np.ndarray, k: int, seed: int = 0) -> Selection:
    """Cluster normalised ``features`` into ``k`` groups; per group pick min and max energy."""
    features = np.asarray(features)
    energies = np.asarray(energies, np.float64).ravel()
    n = len(energies)
    if features.shape[0] != n:
        raise ValueError(f"{features.shape[0]} feature rows but {n} energies")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the pool size); got {k}")
    z = l2_normalise(features)
    labels = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(z)
    low = np.empty(k, np.int64)
    high = np.empty(k, np.int64)
    found = 0
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if members.size == 0:  # k-means can leave a cluster empty on duplicate points
            continue
        low[found] = members[np.argmin(energies[members])]
        high[found] = members[np.argmax(energies[members])]
        found += 1
    return Selection(low[:found], high[:found], labels)


@torch.no_grad()
def pool_features_energies(forward, model: torch.nn.Module, x: torch.Tensor,
                           batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Features and energies of a candidate pool with the model in eval mode, no grad.

    ``forward(x) -> (logits, features)`` (a :class:`ModelBundle`'s ``forward``); the
    model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        feats, ens = [], []
        for i in range(0, len(x), batch_size):
            logits, h = forward(x[i: i + batch_size])
            feats.append(h.float().cpu().numpy())
            ens.append(free_energy(logits).float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(feats), np.concatenate(ens)
