"""Knobs and papers as data: one vocabulary for detectors, gradients, maps and training.

A :class:`Knob` declares a parameter (name, default, range, scale, help text); the pages
build their widgets from these declarations and every entry point validates user values
through :meth:`Knob.validate` (or :func:`resolve`) once, into plain Python values. See
``docs/architecture.md``, "Knobs".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

from .errors import UserError


class KnobError(UserError):
    """A knob value outside its declared type or range, or an unknown knob name."""


@dataclass(frozen=True)
class Paper:
    """The reference a method follows, shown next to it and cited in exports."""

    title: str
    authors: str
    venue: str
    year: int
    url: str = ""

    def cite(self) -> str:
        return f"{self.authors}, \"{self.title}\", {self.venue} {self.year}"


@dataclass(frozen=True)
class Knob:
    """A parameter described as data: the pages build widgets from this."""

    name: str
    default: Any
    low: float | None = None
    high: float | None = None
    scale: str = "linear"  # "linear" | "log"
    kind: str = "float"  # "float" | "int" | "choice" | "bool"
    choices: tuple[Any, ...] = ()
    help: str = ""
    label: str = ""
    step: float | None = None  # a slider's step (None: the widget builder picks one)

    def validate(self, value: Any, owner: str = "") -> Any:
        """``value`` converted to the knob's type; :class:`KnobError` naming ``owner.name`` when it does not fit."""
        where = f"{owner}.{self.name}" if owner else self.name
        if self.kind == "choice":
            if value not in self.choices:
                raise KnobError(f"{where} must be one of {', '.join(map(str, self.choices))}; got {value!r}")
            return value
        if self.kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise KnobError(f"{where} must be true or false; got {value!r}")
            return bool(value)
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise KnobError(f"{where} must be a number in [{self.low}, {self.high}]; got {value!r}") from None
        if self.kind == "int":
            if not float(v).is_integer():
                raise KnobError(f"{where} must be a whole number in [{self.low}, {self.high}]; got {value!r}")
            v = int(v)
        if math.isnan(v) or (self.low is not None and v < self.low) or (self.high is not None and v > self.high):
            raise KnobError(f"{where} must be in [{_fmt(self.low)}, {_fmt(self.high)}]; got {value!r}")
        return v

    def with_range(self, low: float | None = None, high: float | None = None, default: Any = None) -> "Knob":
        kw: dict[str, Any] = {}
        if low is not None:
            kw["low"] = low
        if high is not None:
            kw["high"] = high
        if default is not None:
            kw["default"] = default
        return replace(self, **kw)


def _fmt(v: float | None) -> str:
    return "-inf" if v is None else (str(int(v)) if float(v).is_integer() else f"{v:g}")


def find(knobs: Iterable[Knob], name: str, owner: str = "") -> Knob:
    """The knob called ``name``; :class:`KnobError` listing the valid names otherwise."""
    knobs = tuple(knobs)
    for k in knobs:
        if k.name == name:
            return k
    raise KnobError(f"{owner or 'this method'} has no knob {name!r}; knobs: {', '.join(k.name for k in knobs) or 'none'}")


def resolve(knobs: Iterable[Knob], params: Mapping[str, Any] | None = None, owner: str = "") -> dict[str, Any]:
    """Defaults overlaid with ``params``, each validated against its declaration."""
    knobs = tuple(knobs)
    out = {k.name: k.default for k in knobs}
    for key, value in dict(params or {}).items():
        out[key] = find(knobs, key, owner).validate(value, owner)
    return out


@dataclass(frozen=True)
class KnobSet:
    """A named group of knobs (a map method, the gradient settings of a map): what widget builders take."""

    name: str
    knobs: tuple[Knob, ...]

    def defaults(self) -> dict[str, Any]:
        return {k.name: k.default for k in self.knobs}

    def resolve(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return resolve(self.knobs, params, self.name)
