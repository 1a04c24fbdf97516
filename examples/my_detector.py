"""A new post-hoc score as a plugin: energy plus the log feature norm, ``S = T·LSE(f/T) + α·log(‖h‖₂ / mean ‖h_train‖₂)``.

In-distribution inputs have both confident logits (high energy) and typical-sized features; far-OOD
inputs tend to fall short on one or both. α = 0 is plain Energy. Run it with
``python -m ood_core evaluate --plugin examples/my_detector.py --id mnist --ood gaussian,textures
--detectors energy_norm,energy,gradnorm --json`` and check it with
``python -m ood_core check-detector examples/my_detector.py:EnergyNorm``.
"""
import numpy as np

from ood_core.api import Detector, Knob, Paper, logsumexp, register_detector


@register_detector
class EnergyNorm(Detector):
    name = "energy_norm"
    title = "Energy × feature norm"
    paper = Paper("Energy-based out-of-distribution detection (Energy term)", "Liu, Wang, Owens, Li", "NeurIPS", 2020)
    needs = frozenset({"logits", "features", "training"})
    knobs = (Knob("T", 1.0, 0.1, 100.0, "log", help="energy temperature"),
             Knob("alpha", 0.5, 0.0, 4.0, help="weight of the feature-norm factor (0: plain Energy)"))
    grid = {"T": [1, 2, 4], "alpha": [0, 0.5, 1, 2]}

    def _fit(self, train):
        self.ref_norm = float(np.linalg.norm(np.asarray(train.features, np.float64), axis=1).mean())

    def _score(self, ext, T, alpha):
        e = T * logsumexp(ext.logits, T=T)
        norm = np.linalg.norm(np.asarray(ext.features, np.float64), axis=1) / self.ref_norm
        return e + alpha * np.log(norm + 1e-12)
