"""Regenerate the shipped default weights (``ood_core/assets/default_small_cnn.pt`` and its sidecar).

Trains the default model with ``train_default`` on a temporary cache and writes it as the shipped
copy (docs/architecture.md, "First launch"). Run it after changing ``train_default``, ``shift_augment``
or ``SmallCNN`` (and bump ``DEFAULT_TRAINING_VERSION`` when the weights change); then
``pytest -m slow tests/models/test_checkpoints.py`` checks that a retrain gives the same bytes.

    .venv/bin/python bench/regenerate_default_model.py [--check]

``--check`` trains and compares with the shipped copy without writing it (exit 1 when they differ).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

from ood_core.resources import configure_threads

configure_threads()  # before torch is imported (docs/architecture.md, "Threads")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare a retrain with the shipped copy; write nothing")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="default_model_") as tmp:
        os.environ["OOD_CACHE_DIR"] = tmp
        from ood_core.models import checkpoints as ck

        bundle = ck.train_default(lambda f, m: print(f"\r{m}", end="", file=sys.stderr))
        print(file=sys.stderr)
        path = ck.default_model_path()
        if a.check:
            same = path.read_bytes() == ck.SHIPPED_DEFAULT.read_bytes()
            print("retrained weights are byte-identical to the shipped copy" if same
                  else "retrained weights DIFFER from the shipped copy")
            return 0 if same else 1
        out = ck.write_shipped_default(path)
        print(f"wrote {out} ({out.stat().st_size:,} bytes), test accuracy {bundle.info['id_test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
