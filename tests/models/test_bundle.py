"""``ood_core/models/bundle.py``: moving a shared model only when it is not where it is asked to be."""
from __future__ import annotations

import torch
from fixtures_models import tiny_bundle

from ood_core.models.bundle import same_device


def test_same_device_reads_cuda_as_the_current_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert same_device(torch.device("cpu"), "cpu")
    assert same_device(torch.device("cuda", 0), "cuda")  # torch.device("cuda") != torch.device("cuda:0")
    assert same_device(torch.device("cuda", 0), "cuda:0")
    assert not same_device(torch.device("cuda", 1), "cuda")
    assert not same_device(torch.device("cuda", 0), "cpu")
    assert not same_device(torch.device("cpu"), "cuda:0")


def test_to_where_it_is_does_not_touch_the_model(monkeypatch):
    """``nn.Module.to`` reassigns every parameter even on the same device, under other threads' feet."""
    b = tiny_bundle()
    calls = []
    monkeypatch.setattr(b.model, "to", lambda *a, **k: calls.append(a))
    b.to("cpu")
    b.to(torch.device("cpu"))
    assert calls == []
