"""Knobs and papers as data: one vocabulary for detectors, gradients, maps and training.

A :class:`Knob` declares a parameter (name, default, range, scale, help text); the pages
build their widgets from these declarations. User values are validated once, at the boundary
(``ood_core.facade`` for the app, ``ood_core.cli`` for the command line), by the one resolver
:func:`resolve`, into a :class:`Resolved` mapping that carries the fact it was validated;
everything below takes it through :func:`ensure`, which returns it as is (scikit-learn's
``_fit_context(prefer_skip_nested_validation=True)`` is the model). See ``docs/architecture.md``,
"Knobs".
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
    kind: str = "float"  # "float" | "int" | "choice" | "bool" | "text" | "floats" | "ints" (lists; None = auto)
    choices: tuple[Any, ...] = ()
    help: str = ""
    label: str = ""
    step: float | None = None  # a slider's step (None: the widget builder picks one)

    def validate(self, value: Any, owner: str = "", error: type[KnobError] | None = None) -> Any:
        """``value`` converted to the knob's type; ``error`` (a :class:`KnobError`) naming ``owner.name`` when it
        does not fit."""
        err = error or KnobError
        where = f"{owner}.{self.name}" if owner else self.name
        if self.kind in ("text", "floats", "ints"):
            return self._validate_text(value, where, err)
        if self.kind == "choice":
            if value not in self.choices:
                raise err(f"{where} must be one of {', '.join(map(str, self.choices))}; got {value!r}")
            return value
        if self.kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise err(f"{where} must be true or false; got {value!r}")
            return bool(value)
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise err(f"{where} must be a number in [{self.low}, {self.high}]; got {value!r}") from None
        if self.kind == "int":
            if not float(v).is_integer():
                raise err(f"{where} must be a whole number in [{self.low}, {self.high}]; got {value!r}")
            v = int(v)
        if math.isnan(v) or (self.low is not None and v < self.low) or (self.high is not None and v > self.high):
            raise err(f"{where} must be in [{_fmt(self.low)}, {_fmt(self.high)}]; got {value!r}")
        return v

    def _validate_text(self, value: Any, where: str, err: type[KnobError]) -> Any:
        """A free text, or a list of numbers typed as ``"0.5, 0.5"``; empty or ``auto`` is None (detected)."""
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
            return None
        if self.kind == "text":
            return str(value).strip()
        items = value.replace(";", ",").replace("x", ",").split(",") if isinstance(value, str) else (
            list(value) if isinstance(value, (list, tuple)) else [value])
        one = Knob(self.name, 0, self.low, self.high, kind="int" if self.kind == "ints" else "float")
        try:
            return [one.validate(v.strip() if isinstance(v, str) else v, "", err) for v in items
                    if not (isinstance(v, str) and not v.strip())]
        except KnobError:
            raise err(f"{where} must be {'whole ' if self.kind == 'ints' else ''}numbers separated by commas "
                      f"(one, or one per channel) in [{_fmt(self.low)}, {_fmt(self.high)}]; got {value!r}") from None

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


def find(knobs: Iterable[Knob], name: str, owner: str = "", error: type[KnobError] | None = None) -> Knob:
    """The knob called ``name``; ``error`` (default :class:`KnobError`) listing the valid names otherwise."""
    knobs = tuple(knobs)
    for k in knobs:
        if k.name == name:
            return k
    raise (error or KnobError)(f"{owner or 'this method'} has no knob {name!r}; knobs: {', '.join(k.name for k in knobs) or 'none'}")


class Resolved(dict):
    """Knob values validated by :func:`resolve` against one declaration: a frozen mapping that
    carries the fact (``owner``, ``knobs``), so :func:`ensure` below the boundary skips validation.

    A ``dict`` subclass so JSON, cache keys (``cache.make_key``), ``**`` unpacking and equality
    treat it exactly as the plain dict of values it holds; every mutator raises ``TypeError``.
    Only :func:`resolve` makes one.
    """

    __slots__ = ("owner", "knobs")

    def __init__(self, values: Mapping[str, Any], owner: str, knobs: tuple[Knob, ...]) -> None:
        super().__init__(values)
        self.owner = owner
        self.knobs = knobs

    def fits(self, knobs: tuple[Knob, ...]) -> bool:
        """Whether these values were validated against exactly ``knobs``."""
        return self.knobs is knobs or self.knobs == knobs

    def _frozen(self, *_: Any, **__: Any) -> None:
        raise TypeError(f"validated knob values of {self.owner or 'a method'} are read-only; resolve new ones")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = _frozen  # type: ignore

    def __reduce__(self) -> tuple:  # pickling (st.cache_data, jobs) rebuilds without the blocked mutators
        return (Resolved, (dict(self), self.owner, self.knobs))

    def __repr__(self) -> str:
        return f"Resolved({self.owner!r}, {dict.__repr__(self)})"


def resolve(knobs: Iterable[Knob], params: Mapping[str, Any] | None = None, owner: str = "",
            error: type[KnobError] | None = None) -> Resolved:
    """The one knob resolver: defaults overlaid with ``params``, each validated against its declaration.

    ``error``: the owner's subclass of :class:`KnobError` to raise (a detector's knob error is
    also a ``DetectorError``); the message names ``owner.knob``, the allowed range and the value.
    """
    knobs = tuple(knobs)
    out = {k.name: k.default for k in knobs}
    for key, value in dict(params or {}).items():
        out[key] = find(knobs, key, owner, error).validate(value, owner, error)
    return Resolved(out, owner, knobs)


def ensure(knobs: Iterable[Knob], params: Mapping[str, Any] | None = None, owner: str = "",
           error: type[KnobError] | None = None) -> Resolved:
    """``params`` as they are when :func:`resolve` already validated them against ``knobs``; else :func:`resolve`.

    What every function below the boundary calls: values resolved once at the facade or the CLI
    pass straight through, raw values (a notebook, a test) are still validated.
    """
    knobs = tuple(knobs)
    if isinstance(params, Resolved) and params.fits(knobs):
        return params
    return resolve(knobs, params, owner, error)


@dataclass(frozen=True)
class KnobSet:
    """A named group of knobs (a map method, the gradient settings of a map): what widget builders take."""

    name: str
    knobs: tuple[Knob, ...]

    def defaults(self) -> dict[str, Any]:
        return {k.name: k.default for k in self.knobs}

    def subset(self, names: Iterable[str]) -> "KnobSet":
        """The same set (same name, so the same widget keys) with only the knobs in ``names``."""
        keep = set(names)
        return KnobSet(self.name, tuple(k for k in self.knobs if k.name in keep))

    def resolve(self, params: Mapping[str, Any] | None = None) -> Resolved:
        """:func:`ensure` against this set (validated once; already-resolved values pass through)."""
        return ensure(self.knobs, params, self.name)
