"""GReg+ energy-based selection of auxiliary outliers (Sharifi et al., ECCV 2024; ``train_sea.py``).

Per iteration a candidate pool of auxiliary samples is scored by the current model (eval
mode, no grad: :func:`pool_features_energies`), sorted by energy ``E = -LSE(f)`` ascending,
and its ``drop`` lowest-energy (most ID-looking) candidates are left out. The kept ranks'
L2-normalised features are clustered with k-means (scikit-learn, k = B; GReg+ passes
min(max_clusters, B), ``train_sea.py``'s min(64, B)). Two selections:

- ``reference`` (:func:`select_reference`, the authors' code): from each cluster its lowest-energy
  member (with ``two_way``, also its highest-energy one), filled up to B (2B with ``two_way``)
  at random from the kept ranks; that one batch feeds both L_S and L_∇S.
- ``split`` (:func:`select_by_energy`, our earlier reading): per cluster the lowest-energy
  member for L_S and the highest-energy member for L_∇S, two batches.

Formulas and defaults: docs/methods.md, "Training methods".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans

from ..detectors.distance import l2_normalise
from .losses import free_energy

SELECTIONS = ("reference", "split")
N_INIT = 3  # k-means restarts (train_sea.py's n_init); split keeps the 1 it always ran with


@dataclass
class Selection:
    """Indices into the candidate pool, one per cluster, in cluster order."""

    low: np.ndarray  # lowest energy per cluster -> L_S
    high: np.ndarray  # highest energy per cluster -> L_∇S
    clusters: np.ndarray  # cluster label of every candidate (-1: dropped)


def _clusters(features: np.ndarray, energies: np.ndarray, k: int, drop: int, seed: int, n_init: int,
              need: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(energies as float64, kept pool indices by ascending energy, k-means label of every candidate or -1)."""
    features = np.asarray(features)
    energies = np.asarray(energies, np.float64).ravel()
    n = len(energies)
    if features.shape[0] != n:
        raise ValueError(f"{features.shape[0]} feature rows but {n} energies")
    kept = np.argsort(energies, kind="stable")[drop:]
    if not 1 <= k <= len(kept) or len(kept) < need:
        raise ValueError(f"k must be in [1, {len(kept)}] (the pool of {n} less the {drop} dropped) and the pool "
                         f"must keep at least {max(need, k)}; got k={k}")
    labels = np.full(n, -1, np.int64)
    labels[kept] = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(l2_normalise(features[kept]))
    return energies, kept, labels


def select_by_energy(features: np.ndarray, energies: np.ndarray, k: int, seed: int = 0, drop: int = 0) -> Selection:
    """``split``: cluster the kept candidates' normalised ``features`` into ``k`` groups; per group the
    minimum and the maximum energy."""
    energies, _, labels = _clusters(features, energies, k, drop, seed, n_init=1)
    low, high = [], []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if members.size == 0:  # k-means can leave a cluster empty on duplicate points
            continue
        low.append(members[np.argmin(energies[members])])
        high.append(members[np.argmax(energies[members])])
    return Selection(np.asarray(low, np.int64), np.asarray(high, np.int64), labels)


def select_reference(features: np.ndarray, energies: np.ndarray, b: int, drop: int = 16, two_way: bool = False,
                     seed: int = 0, clusters: int | None = None) -> np.ndarray:
    """``reference``: pool indices of the one selected batch, B of them (2B with ``two_way``).

    Clusters the candidates left after dropping the ``drop`` lowest energies into ``k = clusters``
    groups (default B; ``train_sea.py`` uses min(64, B)); from each of the first min(k, B) clusters its
    ``s`` lowest-energy members, ``s = ⌊B/k⌋`` (1 when k > B), with ``two_way`` also its ``s``
    highest-energy ones (distinct; a cluster of at most ``s`` members gives all of them); then fills
    up to the batch size with distinct kept candidates drawn at random
    (``numpy.random.default_rng(seed)``). Per-cluster picks come first, in cluster order.
    """
    size = b * (2 if two_way else 1)
    k = b if clusters is None else int(clusters)
    energies, kept, labels = _clusters(features, energies, k, drop, seed, N_INIT, need=size)
    per = 1 if k > b else b // k
    picked: list[int] = []
    for c in range(min(k, b)):
        members = np.flatnonzero(labels == c)
        if members.size <= per:
            picked.extend(int(m) for m in members)
            continue
        order = members[np.argsort(energies[members], kind="stable")]
        take = list(order[:per]) + ([m for m in order[-per:] if m not in order[:per]] if two_way else [])
        picked.extend(int(m) for m in take)
    if len(picked) < size:
        rest = np.setdiff1d(kept, picked)
        picked.extend(np.random.default_rng(seed).choice(rest, size - len(picked), replace=False).tolist())
    return np.asarray(picked[:size], np.int64)


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
