"""ood_core/detectors/nac.py against independent computations (pytorch-ood where it has the method,
formulas written out on small arrays, autograd). Shared arrays and fixtures: tests/detectors/conftest.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from detector_arrays import RTOL, C, D, exact, fitted, head_grads, pood, synthetic, t64  # noqa: F401

from ood_core.detectors import get_detector
from ood_core.extract import Extraction


def _nac_reference(train_ext: Extraction, ext: Extraction, idx, O: int, M: int, alpha: float) -> np.ndarray:
    """The authors' KMNC written out (torch, broadcast comparisons), states from autograd of KL(u‖p)."""
    def states(e):
        h = t64(e.features).requires_grad_(True)
        logits = h @ t64(e.head_weight).T + t64(e.head_bias)
        loss = (-(1.0 / logits.shape[1]) * torch.log_softmax(logits, 1)).sum()
        (g,) = torch.autograd.grad(loss, h)
        return torch.sigmoid(alpha * h.detach() * g)

    half = M // 2
    x = np.linspace(1, np.sqrt(1e3), num=half)
    xl = np.emath.logn(1e3, x)
    th = np.concatenate([xl[:-1], (1 - xl)[::-1]])
    th[-1] += 1e-2
    thresh = torch.from_numpy(np.append(th, 1.2)).view(M, 1).repeat(1, train_ext.features.shape[1])

    def acts(s):
        return (s.unsqueeze(1) >= thresh[:M - 1].unsqueeze(0)) & (s.unsqueeze(1) < thresh[1:M].unsqueeze(0))

    t_act = acts(states(train_ext.subset(idx))).sum(0).double()
    cov = torch.minimum(t_act / O, torch.ones_like(t_act))
    return (acts(states(ext)) * cov.unsqueeze(0)).sum(1).mean(1).numpy()



@pytest.mark.parametrize("O,M,alpha", [(50, 50, 100.0), (10, 20, 1000.0), (5, 500, 1.0)])
def test_nac_matches_the_authors_coverage_code(train, test, O, M, alpha):
    from ood_core.detectors.nac import balanced_subset

    ex_tr, ex_te = exact(train), exact(test)
    det = get_detector("nac").fit(ex_tr)
    got = det.score(ex_te, O=O, M=M, alpha=alpha, n_fit=300)
    idx = balanced_subset(ex_tr.labels, 300)
    np.testing.assert_allclose(got, _nac_reference(ex_tr, ex_te, idx, O, M, alpha), rtol=RTOL, atol=1e-12)
    assert len(idx) <= 300 and len(np.unique(np.bincount(ex_tr.labels[idx]))) == 1  # balanced


def test_nac_bin_edges_are_the_references():
    from ood_core.detectors.nac import bin_edges

    e = bin_edges(50)
    assert len(e) == 50 and e[0] == 0.0 and abs(e[-2] - 1.01) < 1e-12 and e[-1] == 1.2
    assert np.all(np.diff(e) > 0) and abs(e[24] - 0.5) < 1e-12

