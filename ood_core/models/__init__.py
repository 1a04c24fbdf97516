"""Models: the workbench's architectures, preprocessing, the body/head split, and loading users' files.

What lives where (docs/architecture.md, "Uploads are data, not code"):

- :mod:`.bundle`: :class:`ModelBundle` (``logits = head(body(x))``), :class:`Preprocess`, the split;
- :mod:`.archs`: named architectures a ``state_dict`` loads into, with default preprocessing;
  :mod:`.archs_cifar` / :mod:`.archs_published`: the published OOD checkpoints' networks, declared;
- :mod:`.setup_checks`: does a loaded model's setup match the published one?
- :mod:`.checkpoints`: the workbench's own checkpoints and the embedded default model;
- :mod:`.files`: :func:`load_model_file`, the one entry point for a user's model file, built on
  :mod:`.formats` (recognising a file), :mod:`.state_dicts`, :mod:`.pt2`, :mod:`.torchscript`
  and :mod:`.preprocess` (input guesses and the dry run);
- :mod:`.loaded`: the models this process holds in memory, by spec key (uploads among them).

This package re-exports the names most callers need; it runs nothing at import time.
"""
from __future__ import annotations

from . import archs_published  # noqa: F401 - registers the published OOD checkpoints' architectures
from .archs import ARCHITECTURES, SmallCNN, build_arch
from .bundle import ModelBundle, ModelError, Preprocess, find_head, state_fingerprint

__all__ = ["ARCHITECTURES", "ModelBundle", "ModelError", "Preprocess", "SmallCNN", "build_arch", "find_head",
           "state_fingerprint"]
