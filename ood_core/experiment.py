"""docs/architecture.md, "Reproducible": an experiment serialises to a small JSON both app and CLI accept."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import cache
from .errors import UserError

SCHEMA = "ood-workbench/experiment@1"


class ExperimentError(UserError):
    pass


@dataclass
class Experiment:
    model: str = "default"
    id_dataset: str = "mnist"
    ood_datasets: list[str] = field(default_factory=lambda: ["letters", "textures", "faces", "gaussian", "uniform"])
    detectors: list[str] = field(default_factory=lambda: ["energy"])
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0
    # Subsampling by role (workbench.apply_subsample): {"id_train": 12811} or a fraction; seeded by ``seed``.
    subsample: dict[str, float] = field(default_factory=dict)
    preprocess: dict[str, Any] | None = None
    model_fingerprint: str = ""
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    def to_json(self) -> str:
        return cache.standard_json(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Experiment":
        if not isinstance(d, dict):
            raise ExperimentError("an experiment must be a JSON object")
        if d.get("schema", SCHEMA) != SCHEMA:
            raise ExperimentError(f"unsupported experiment schema {d.get('schema')!r}; expected {SCHEMA}")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known - {"schema"}
        if unknown:
            raise ExperimentError(f"unknown experiment fields: {', '.join(sorted(unknown))}")
        exp = cls(**{k: v for k, v in d.items() if k in known})
        if isinstance(exp.ood_datasets, str):
            exp.ood_datasets = [exp.ood_datasets]
        if isinstance(exp.detectors, str):
            exp.detectors = [exp.detectors]
        if not isinstance(exp.params, dict) or not all(isinstance(v, dict) for v in exp.params.values()):
            raise ExperimentError("params must map detector names to {knob: value} objects")
        if not isinstance(exp.subsample, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in exp.subsample.values()):
            raise ExperimentError("subsample must map roles (id_train, id_test, ood_test) to sample counts or fractions")
        return exp

    @classmethod
    def from_json(cls, text: str) -> "Experiment":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ExperimentError(f"not valid JSON: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> "Experiment":
        p = Path(path)
        if not p.exists():
            raise ExperimentError(f"no experiment file at {path}")
        return cls.from_json(p.read_text())

    def save(self, path: str | Path) -> Path:
        """Write the experiment atomically (docs/architecture.md, "Saved state"); no lock file is left
        beside a file the user named."""
        p = Path(path)
        cache.atomic_write_bytes(p, self.to_json().encode())
        return p
