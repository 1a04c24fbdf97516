"""Linear-probe detectors on low-dimensional gradients (the reference preset).

As in the authors' ``github_main.py`` (``Linear_Probe``, ``train``, ``msp``, ``energy``,
``odin``, ``react``): a probe ``BatchNorm1d → Linear(C)`` is trained for 10 epochs with
cross-entropy on the training labels (SGD, lr 0.1, momentum 0.9, weight decay 5e-4,
batch 128, shuffled), on ``G_low`` alone (``lowdim_probe_<score>``) or on the
concatenation ``[h(x), G_low]`` of penultimate features and low-dimensional gradients
(``lowdim_probe_feat_<score>``), and an output score is computed **on the probe's
logits** ``z``:

* ``msp``: ``max_i softmax(z/T)_i``; ``energy``: ``T·LSE(z/T)``;
* ``odin``: ``x̃ = x − ε·sign(∇_x CE(z(x)/T, argmax z))`` on the probe's input, then
  ``max_i softmax(z(x̃)/T)_i`` (reference on CIFAR: T = 100, ε = 50, in G_low units);
* ``react``: the gradient part of the input clipped from above at the p-th percentile
  (90) of the **training** G_low values, then ``T·LSE(z/T)``. The reference takes this
  percentile on the ID test set, which leaks test data; we do not.

Training is seeded and deterministic (its own generator; the global RNG is untouched).
See ``docs/methods.md``, section "Low-dimensional gradients".
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..extract import Extraction
from .base import DetectorError, Knob, SortedValues, energy, max_softmax, register
from .lowdim import REFERENCE_KNOBS, _LowDim

PROBE_KNOBS = (
    Knob("epochs", 10, 1, 200, kind="int", help="probe training epochs (reference: 10)"),
    Knob("lr", 0.1, 1e-4, 1.0, "log", help="probe SGD learning rate (reference: 0.1, momentum 0.9, weight decay 5e-4)"),
    Knob("seed", 0, 0, 2**31 - 1, kind="int", help="seed of the probe's initialisation and shuffling"),
)
SCORE_KNOBS: dict[str, tuple[Knob, ...]] = {
    "msp": (Knob("T_probe", 1.0, 0.1, 1000.0, "log", help="softmax temperature on the probe's logits"),),
    "energy": (Knob("T_probe", 1.0, 0.1, 1000.0, "log", help="energy temperature on the probe's logits"),),
    "odin": (Knob("T_probe", 100.0, 1.0, 1000.0, "log", help="ODIN temperature (reference: 100 on the probe)"),
             Knob("eps", 50.0, 0.0, 1000.0, help="ODIN step on the probe's input, in its units (reference: 50 on CIFAR)")),
    "react": (Knob("T_probe", 1.0, 0.1, 1000.0, "log", help="energy temperature on the probe's logits"),
              Knob("p", 90.0, 50.0, 99.9, help="clip the gradient part at this percentile of TRAINING G_low values")),
}


def make_probe(d_in: int, C: int) -> nn.Module:
    return nn.Sequential(nn.BatchNorm1d(d_in), nn.Linear(d_in, C))


def train_probe(X: np.ndarray, y: np.ndarray, C: int, epochs: int = 10, lr: float = 0.1, seed: int = 0,
                batch: int = 128) -> nn.Module:
    """The reference's probe training, seeded: same inputs and seed give bit-identical weights."""
    g = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        probe = make_probe(X.shape[1], C)
    opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    Xt = torch.as_tensor(np.asarray(X, np.float32))
    yt = torch.as_tensor(np.asarray(y, np.int64))
    probe.train()
    for _ in range(int(epochs)):
        perm = torch.randperm(len(Xt), generator=g)
        for a in range(0, len(Xt), batch):
            idx = perm[a:a + batch]
            if len(idx) < 2:  # BatchNorm needs two rows in train mode
                continue
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(probe(Xt[idx]), yt[idx]).backward()
            opt.step()
    return probe.eval()


def probe_logits(probe: nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return probe(torch.from_numpy(np.array(X, np.float32))).double().numpy()  # a copy: cached arrays are read-only


def odin_probe(probe: nn.Module, X: np.ndarray, T: float, eps: float) -> np.ndarray:
    """ODIN on the probe: one signed-gradient step on its input, then the tempered MSP."""
    x = torch.as_tensor(np.asarray(X, np.float32)).requires_grad_(True)
    out = probe(x) / T
    loss = nn.functional.cross_entropy(out, out.detach().argmax(1), reduction="sum")
    (gx,) = torch.autograd.grad(loss, x)
    with torch.no_grad():
        z = probe(x - eps * torch.sign(gx)).double().numpy()
    return max_softmax(z, T)


class _Probe(_LowDim):
    """A probe on G_low (``feat = False``) or on ``[features, G_low]`` (``feat = True``), one output score."""

    score_name = ""
    feat = False
    grid = {"r": [10, 50, 100, 200]}

    def _inputs(self, g: np.ndarray, ext: Extraction) -> np.ndarray:
        if not self.feat:
            return np.asarray(g, np.float32)
        if not ext.has_features:
            raise DetectorError(f"{self.name} needs the model's features (input of the final linear layer)")
        return np.concatenate([np.asarray(ext.features, np.float32), np.asarray(g, np.float32)], axis=1)

    def _probe(self, st: dict[str, Any], epochs: int, lr: float, seed: int) -> nn.Module:
        key = ("probe", self.feat, int(epochs), float(lr), int(seed))
        if key not in st:
            labels = np.asarray(st["labels"])
            if (labels < 0).any():
                raise DetectorError(f"{self.name} trains a probe on the training labels; this training split has none")
            X = self._inputs(st["g"], self._train_ext)  # type: ignore[arg-type]
            C = max(int(labels.max()) + 1, int(self._train_ext.logits.shape[1]))  # type: ignore[union-attr]
            st[key] = train_probe(X, labels, C, epochs, lr, seed)
        return st[key]

    def _score_low(self, g: np.ndarray, ext: Extraction, st: dict[str, Any], epochs: int, lr: float, seed: int,
                   T_probe: float, **kn: Any) -> np.ndarray:
        probe = self._probe(st, epochs, lr, seed)
        X = self._inputs(g, ext)
        if self.score_name == "msp":
            return max_softmax(probe_logits(probe, X), T_probe)
        if self.score_name == "energy":
            return energy(probe_logits(probe, X), T_probe)
        if self.score_name == "odin":
            return odin_probe(probe, X, T_probe, kn["eps"])
        if "g_sorted" not in st:
            st["g_sorted"] = SortedValues.of(st["g"])
        c = st["g_sorted"].percentile(kn["p"])
        Xc = X.copy()
        d = g.shape[1]
        Xc[:, -d:] = np.minimum(Xc[:, -d:], c)  # only the gradient part, from above (reference: clip(max=threshold))
        return energy(probe_logits(probe, Xc), T_probe)


def _make(score: str, feat: bool) -> type[_Probe]:
    name = f"lowdim_probe_{'feat_' if feat else ''}{score}"
    on = "[features, G_low]" if feat else "G_low"
    doc = (f"{score.upper()} on the logits of a linear probe (BatchNorm1d + Linear) trained on {on}; "
           "the reference preset (github_main.py).")
    cls = type(f"LowDimProbe{'Feat' if feat else ''}{score.capitalize()}", (_Probe,), {
        "__doc__": doc, "name": name, "score_name": score, "feat": feat,
        "title": f"Low-dim gradient probe{' + features' if feat else ''}, {score}",
        "needs": frozenset({"logits", "model", "training", "features"}) if feat else _Probe.needs,
        "knobs": REFERENCE_KNOBS + PROBE_KNOBS + SCORE_KNOBS[score],
        "__module__": __name__,
    })
    return register(cls)  # type: ignore[return-value]


PROBES = {f"{'feat_' if feat else ''}{score}": _make(score, feat)
          for feat in (False, True) for score in ("msp", "energy", "odin", "react")}
