"""The public extension API: write a detector or a training method outside the workbench.

Import from here, not from the internal modules (docs/architecture.md, "Plugins")::

    from ood_core.api import Detector, Knob, Paper, register_detector

    @register_detector
    class MyScore(Detector):
        name, title = "my_score", "My score"
        knobs = (Knob("T", 1.0, 0.01, 100.0, "log", help="temperature"),)
        def _score(self, ext, T):          # ext.logits (N, C), ext.features (N, D), ext.labels
            return T * np.log(np.exp(ext.logits / T).sum(1))   # higher = more in-distribution

Versioning (``API_VERSION``, semantic): within a major version the names exported here, the
class attributes the registries read (``name``, ``title``, ``paper``, ``needs``, ``knobs``,
``grid``, ``family``, ``help``; for methods also ``terms``, ``uses_aux``), the signatures of
``Detector._score(ext, **knobs)``, ``Detector._fit(train_ext)``, ``ModelDetector.fit_model`` /
``score_model`` and ``TrainingMethod.loss(trainer, x, y)``, the :class:`Extraction` fields
(``logits``, ``features``, ``labels``, ``W``, ``b``, ``name``) and the ``TrainerView`` members
stay. Anything else (helpers in ``ood_core.detectors.base``, the Trainer itself, cache layouts)
may change in any release; a minor version adds names only. Run ``python -m ood_core
check-detector`` / ``check-method`` on your class: it is the battery the built-ins pass.
"""
from __future__ import annotations

from .detectors.base import Detector, DetectorError, ModelDetector, energy, logsumexp, softmax
from .detectors.base import register as register_detector
from .extract import Extraction
from .knobs import Knob, Paper
from .training.methods.base import TrainerView, TrainingError, TrainingMethod
from .training.methods.base import register as register_method

API_VERSION = "1.0"

__all__ = ["API_VERSION", "Detector", "DetectorError", "Extraction", "Knob", "ModelDetector", "Paper",
           "TrainerView", "TrainingError", "TrainingMethod", "energy", "logsumexp", "register_detector",
           "register_method", "softmax"]
