"""ood_core/detectors/base.py against independent computations (pytorch-ood where it has the method,
formulas written out on small arrays, autograd). Shared arrays and fixtures: tests/detectors/conftest.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from detector_arrays import RTOL, C, D, exact, fitted, head_grads, pood, synthetic, t64  # noqa: F401

from ood_core.detectors import DetectorError, get_detector


@pytest.mark.parametrize("name", ["klm", "mahalanobis", "rmd", "knn", "vim", "dice", "rg_add", "uv"])
def test_training_detectors_refuse_to_run_without_training_statistics(name, test):
    with pytest.raises(DetectorError, match="training"):
        get_detector(name).fit(None)
    with pytest.raises(DetectorError, match="training statistics"):
        get_detector(name).score(test)


def test_no_training_split_is_a_clear_message(default_bundle):
    from ood_core import workbench as wb

    with pytest.raises(DetectorError, match="no training split"):
        wb.fitted_detector("knn", default_bundle, "letters")


def test_model_time_hooks_act_only_in_their_own_thread(default_bundle, small_sets):
    """The model is shared: a forward on another thread during a GAIA or RankFeat hook is unmodified."""
    import threading

    from ood_core.concurrency import call_hooks
    from ood_core.detectors.rankfeat import remove_rank1

    x = default_bundle.preprocess(small_sets[0].images)
    with torch.no_grad():
        plain = default_bundle.model(x).numpy()
    seen = {}
    with call_hooks([default_bundle.model.features[10]], lambda _m, _i, o: remove_rank1(o)):
        t = threading.Thread(target=lambda: seen.setdefault("other", default_bundle.model(x).detach().numpy()))
        t.start()
        t.join()
        with torch.no_grad():
            mine = default_bundle.model(x).numpy()
    np.testing.assert_array_equal(seen["other"], plain)
    assert not np.allclose(mine, plain)


def test_model_time_estimate_is_a_dry_run(default_bundle, monkeypatch):
    from ood_core import gradients as G
    from ood_core import workbench as wb

    est = wb.model_time_estimate(default_bundle, "odin", "mnist", ["faces", "letters"], {"T": 3.3, "eps": 0.0001})
    assert est["pending"] == ["faces", "letters"] and est["n_images"] == 400 + 1000
    assert est["seconds"] > 0 and est["bytes"] > 0 and "ms per image" in est["detail"]
    det = wb.fitted_detector("odin", default_bundle, "mnist")
    assert not wb.is_cached(default_bundle, det, "faces", {"T": 3.3, "eps": 0.0001})  # estimating scored nothing
    assert wb.model_time_estimate(default_bundle, "energy", "mnist", ["faces"])["seconds"] == 0  # no model needed

    # the low-dimensional gradients: blocks and products timed, the subspace never fitted
    monkeypatch.setattr(G.subspace, "_fit", lambda *a, **k: (_ for _ in ()).throw(AssertionError("fitted")))
    est = wb.model_time_estimate(default_bundle, "lowdim_knn", "mnist", ["faces"], {"r": 37})
    assert est["fit_seconds"] > 0 and not est["fit_cached"] and est["seconds"] > est["fit_seconds"]
    assert "subspace fit over" in est["detail"] and est["bytes"] >= 4 * 140_138 * 47

