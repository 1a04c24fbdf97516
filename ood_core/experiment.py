"""docs/architecture.md, "Reproducible": an experiment serialises to a small JSON both app and CLI accept."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import stores
from .errors import UserError, first_line

SCHEMA = "ood-workbench/experiment@1"
MAX_BYTES = 1 << 20  # an experiment is a few KB; anything far larger is not one
MAX_SEED = 2**63 - 1


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
        return stores.standard_json(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Experiment":
        """An experiment from a parsed JSON object; every field is checked for its type and range,
        so a hand-edited file fails here with one line, never later in the middle of a pass."""
        if not isinstance(d, dict):
            raise ExperimentError("an experiment must be a JSON object")
        if d.get("schema", SCHEMA) != SCHEMA:
            raise ExperimentError(f"unsupported experiment schema {d.get('schema')!r}; expected {SCHEMA}")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known - {"schema"}
        if unknown:
            raise ExperimentError(f"unknown experiment fields: {', '.join(sorted(map(str, unknown)))}")
        exp = cls(**{k: v for k, v in d.items() if k in known})
        for name in ("model", "id_dataset"):
            if not isinstance(getattr(exp, name), str) or not getattr(exp, name).strip():
                raise ExperimentError(f"{name} must be a non-empty string; got {_show(getattr(exp, name))}")
        exp.ood_datasets = _names("ood_datasets", exp.ood_datasets)
        exp.detectors = _names("detectors", exp.detectors)
        if not isinstance(exp.params, dict) or not all(isinstance(v, dict) for v in exp.params.values()):
            raise ExperimentError("params must map detector names to {knob: value} objects")
        exp.seed = check_seed(exp.seed, "seed")
        if not isinstance(exp.subsample, dict):
            raise ExperimentError("subsample must map roles (id_train, id_test, ood_test) to sample counts or fractions")
        exp.subsample = {str(k): sample_size(v, f"subsample.{k}") for k, v in exp.subsample.items()}
        if exp.preprocess is not None and not isinstance(exp.preprocess, dict):
            raise ExperimentError(f"preprocess must be an object of load options or null; got {_show(exp.preprocess)}")
        for name in ("model_fingerprint", "notes"):
            if not isinstance(getattr(exp, name), str):
                raise ExperimentError(f"{name} must be a string; got {_show(getattr(exp, name))}")
        return exp

    @classmethod
    def from_json(cls, text: str | bytes) -> "Experiment":
        """Parse strict JSON (no NaN or Infinity; UTF-8 when given bytes; at most :data:`MAX_BYTES`);
        one line for anything malformed."""
        size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_BYTES:
            raise ExperimentError(f"the experiment file is {size:,} bytes; an experiment JSON is a few KB")
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise ExperimentError("the experiment file is not UTF-8 text; use the JSON the app saved "
                                      "(Models & data, Experiment JSON)") from None
        try:
            d = json.loads(text, parse_constant=_no_constant)
        except RecursionError:
            raise ExperimentError("not valid JSON: nested too deeply for an experiment") from None
        except ValueError as exc:  # JSONDecodeError, and the interpreter's limit on integer digits
            raise ExperimentError(f"not valid JSON: {first_line(exc)}") from None
        return cls.from_dict(d)

    @classmethod
    def load(cls, path: str | Path) -> "Experiment":
        p = Path(path)
        if not p.is_file():
            raise ExperimentError(f"no experiment file at {path}")
        if p.stat().st_size > MAX_BYTES:
            raise ExperimentError(f"{path} is {p.stat().st_size:,} bytes; an experiment JSON is a few KB")
        return cls.from_json(p.read_bytes())

    def model_differences(self, fingerprint: str, preprocess: dict[str, Any]) -> str:
        """One line saying how the loaded model differs from the one this experiment recorded
        (``model_fingerprint``, a prefix is enough; ``preprocess``, the load options it names);
        "" when it recorded nothing or nothing differs. The run goes on: a user may mean to
        compare another checkpoint, but must not get other numbers without a word."""
        diffs = []
        want = self.model_fingerprint.strip()
        if want and not str(fingerprint).startswith(want):
            diffs.append(f"fingerprint {want[:12]} in the experiment, {str(fingerprint)[:12]} loaded")
        for k, v in sorted((self.preprocess or {}).items()):
            if k in preprocess and _flat(v) != _flat(preprocess[k]):
                diffs.append(f"{k} {_show(v)} in the experiment, {_show(preprocess[k])} loaded")
        return "the model differs from the experiment's: " + "; ".join(diffs) if diffs else ""

    def save(self, path: str | Path) -> Path:
        """Write the experiment atomically (docs/architecture.md, "Saved state"); no lock file is left
        beside a file the user named."""
        p = Path(path)
        stores.atomic_write_bytes(p, self.to_json().encode())
        return p


def _show(v: Any) -> str:
    """A value for a one-line message, cut short (a hostile file may hold megabytes in one field)."""
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (standard JSON only)")


def _names(field_name: str, v: Any) -> list[str]:
    """A list of distinct non-empty names (one string is a list of one)."""
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(n, str) and n.strip() for n in v):
        raise ExperimentError(f"{field_name} must be a list of names (strings); got {_show(v)}")
    check_unique(v, field_name)
    return list(v)


def check_unique(names: list[str], what: str) -> None:
    """Refuse a name given twice (it would give duplicate rows): one line naming it."""
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ExperimentError(f"{what} names {n!r} twice; give each once")
        seen.add(n)


def check_seed(v: Any, what: str = "--seed") -> int:
    """A seed is a whole number in [0, 2**63 - 1] (what numpy's generators accept)."""
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_SEED:
        raise ExperimentError(f"{what} must be a whole number from 0 to 2**63-1; got {_show(v)}")
    return int(v)


def sample_size(v: Any, what: str) -> float | int:
    """The subsample rule (docs/architecture.md, "Datasets"): a whole number >= 1 is a count of
    samples, a number strictly between 0 and 1 a fraction. 0 (no samples), negatives, NaN,
    infinities, non-whole counts and ``1.0`` (one sample or all of them?) are refused; leave a
    role out to use every sample."""
    if isinstance(v, str):
        txt = v.strip()
        try:
            num: float | int = int(txt) if txt.lstrip("+").isdigit() else float(txt)
        except ValueError:
            raise ExperimentError(f"{what} must be a count (e.g. 500) or a fraction in (0, 1) (e.g. 0.1); "
                                  f"got {_show(v)}") from None
        v = num
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ExperimentError(f"{what} must be a count or a fraction in (0, 1); got {_show(v)}")
    if isinstance(v, float) and not math.isfinite(v) or v < 0:
        raise ExperimentError(f"{what} must be a count or a fraction in (0, 1); got {v}")
    if v == 0:
        raise ExperimentError(f"{what}=0 would use no samples; leave the role out to use all of them")
    if isinstance(v, float) and v == 1:
        raise ExperimentError(f"{what}=1.0 is ambiguous: write 1 for one sample, or leave the role out for all")
    if v > 1 and v != int(v):
        raise ExperimentError(f"{what} above 1 is a count of samples and must be whole; got {v:g}")
    return int(v) if v >= 1 else float(v)


def _flat(v: Any) -> Any:
    """A load option compared by value: tuples as lists, ``[x, x]`` as ``x`` (one value per channel
    or per side means the same as one value)."""
    if isinstance(v, (list, tuple)):
        v = [float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x for x in v]
        return v[0] if v and all(x == v[0] for x in v) else v
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
