"""GReg+ selection picks what the algorithm says on hand-made cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ood_core.training.sampling import l2_normalise, pool_features_energies, select_by_energy, select_reference


def test_clusters_by_direction_and_picks_min_and_max_energy():
    # Three directions; magnitudes differ wildly so clustering the raw features would split by
    # norm instead of direction: the sampler must normalise first.
    dirs = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    scales = np.array([0.5, 3.0, 40.0, 200.0])
    feats = np.concatenate([d[None] * scales[:, None] for d in dirs])  # 12 points, groups of 4
    feats += np.random.default_rng(0).normal(0, 1e-3, feats.shape) * np.linalg.norm(feats, axis=1, keepdims=True)
    energies = np.array([-3.0, -9.0, -1.0, -5.0,    # group 0: low idx 1, high idx 2
                         -2.0, -4.0, -6.0, -8.0,    # group 1: low idx 7, high idx 4
                         -7.0, -0.5, -3.0, -11.0])  # group 2: low idx 11, high idx 9
    sel = select_by_energy(feats, energies, k=3, seed=0)
    groups = [set(range(0, 4)), set(range(4, 8)), set(range(8, 12))]
    for g in groups:  # each direction is one cluster
        assert len({int(sel.clusters[i]) for i in g}) == 1
    assert sorted(sel.low.tolist()) == [1, 7, 11]
    assert sorted(sel.high.tolist()) == [2, 4, 9]
    # Pairs come from the same cluster.
    for lo, hi in zip(sel.low, sel.high):
        assert sel.clusters[lo] == sel.clusters[hi]


def test_singleton_clusters_pick_the_same_sample_twice():
    feats = np.eye(4)
    sel = select_by_energy(feats, np.array([-1.0, -2.0, -3.0, -4.0]), k=4, seed=0)
    assert sorted(sel.low.tolist()) == [0, 1, 2, 3]
    assert sel.low.tolist() == sel.high.tolist()


def test_k_bounds_and_normalise():
    with pytest.raises(ValueError, match="k must be"):
        select_by_energy(np.eye(3), np.zeros(3), k=4)
    z = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(z, [[0.6, 0.8], [0.0, 0.0]])


def test_pool_features_energies_eval_mode_no_grad_and_restores_mode():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Dropout(0.9), nn.ReLU())
    head = nn.Linear(3, 2)
    model = nn.Sequential(body, head)
    model.train()
    x = torch.randn(5, 1, 2, 2)

    def forward(t):
        h = body(t)
        return head(h), h

    feats, ens = pool_features_energies(forward, model, x, batch_size=2)
    assert model.training  # restored
    model.eval()
    with torch.no_grad():  # eval mode: dropout off, so the reference is deterministic
        h = body(x)
        e = -torch.logsumexp(head(h), 1)
    np.testing.assert_allclose(feats, h.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ens, e.numpy(), rtol=1e-6)


def _pool(sizes=(4, 4, 4)):
    """Points along orthogonal directions (one cluster each) at wildly different norms."""
    dirs = np.eye(len(sizes))
    scales = np.array([0.5, 3.0, 40.0, 200.0])
    feats = np.concatenate([d[None] * scales[:n, None] for d, n in zip(dirs, sizes)])
    return feats + np.random.default_rng(0).normal(0, 1e-3, feats.shape) * np.linalg.norm(feats, axis=1, keepdims=True)


# Group 0 = 0..3, group 1 = 4..7, group 2 = 8..11. The two lowest energies overall (-20 at 1, -19 at 6)
# are the ones drop=2 leaves out, although each is its own cluster's minimum.
ENERGIES = np.array([-3.0, -20.0, -1.0, -5.0,
                     -2.0, -4.0, -19.0, -8.0,
                     -7.0, -0.5, -3.0, -11.0])


def test_reference_drops_the_lowest_ranks_then_takes_each_clusters_minimum():
    sel = select_reference(_pool(), ENERGIES, b=3, drop=2, seed=0)
    assert sorted(sel.tolist()) == [3, 7, 11]  # not 1 and 6: dropped
    # Without the drop the global minima come back.
    assert sorted(select_reference(_pool(), ENERGIES, b=3, drop=0, seed=0).tolist()) == [1, 6, 11]


def test_reference_two_way_adds_each_clusters_maximum():
    sel = select_reference(_pool(), ENERGIES, b=3, drop=2, two_way=True, seed=0)
    assert len(sel) == 6 and sorted(sel.tolist()) == [2, 3, 4, 7, 9, 11]


def test_reference_fills_at_random_from_kept_ranks_seeded():
    # Group 2 is a single point: two_way gets one from it, so 5 picks and one random fill to reach 2B = 6.
    feats = _pool((4, 4, 1))
    energies = ENERGIES[:9]
    picks = {3, 2, 7, 4, 8}
    fills = set()
    for seed in range(12):
        sel = select_reference(feats, energies, b=3, drop=2, two_way=True, seed=seed)
        assert len(sel) == 6 and len(set(sel.tolist())) == 6
        assert set(sel[:5].tolist()) == picks  # per-cluster picks first
        assert sel[5] not in (1, 6) and sel[5] not in picks  # the fill: a kept rank not already taken
        np.testing.assert_array_equal(sel, select_reference(feats, energies, b=3, drop=2, two_way=True, seed=seed))
        fills.add(int(sel[5]))
    assert fills == {0, 5}  # the only kept candidates left; both drawn over the seeds


def test_reference_pool_too_small_after_the_drop():
    with pytest.raises(ValueError, match="must keep at least 6"):
        select_reference(_pool(), ENERGIES, b=3, drop=8, two_way=True)


def test_split_with_drop_never_takes_dropped_ranks():
    rng = np.random.default_rng(3)
    feats, energies = rng.normal(size=(60, 5)), rng.normal(size=60)
    dropped = set(np.argsort(energies)[:16].tolist())
    sel = select_by_energy(feats, energies, k=8, seed=0, drop=16)
    assert not dropped & set(sel.low.tolist()) and not dropped & set(sel.high.tolist())
    assert (sel.clusters[list(dropped)] == -1).all()
    ref = select_reference(feats, energies, 8, drop=16, two_way=True, seed=1)
    assert len(ref) == 16 and not dropped & set(ref.tolist())
