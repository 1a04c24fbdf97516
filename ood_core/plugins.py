"""Plugins: detectors and training methods from outside the workbench (docs/architecture.md, "Plugins").

Three ways in, all read at start-up (the CLI's ``main``, the app's frame through the facade):

* installed packages, through the entry-point groups ``ood_workbench.detectors`` and
  ``ood_workbench.training_methods`` (the value names a module, or a ``module:Class``);
* ``--plugin`` on the command line, a ``.py`` file or a dotted module (``mypkg.scores``);
* ``OOD_PLUGINS``, a list of the same separated by commas or ``os.pathsep``.

A plugin is trusted code the user chose to run: importing it runs it. The app never imports
an uploaded file. A plugin that fails to import, declares nothing, declares a bad knob or takes a
built-in's name is refused with one line (:attr:`PluginInfo.line`); the rest of the workbench
carries on. Loading the same file or module twice is a no-op.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .detectors import base as _det
from .errors import UserError, first_line
from .training.methods import base as _meth

GROUPS = {"detectors": "ood_workbench.detectors", "methods": "ood_workbench.training_methods"}
ENV = "OOD_PLUGINS"
ALLOWED_NEEDS = frozenset({"logits", "features", "head", "training", "model", "nonneg_features"})


class PluginError(UserError):
    """A plugin or a check target that cannot be loaded; the message says which and why."""


@dataclass
class PluginInfo:
    """One plugin as loaded: where from, what it registered, or why it was refused."""

    spec: str  # what was asked for: a path, a module, an entry point's value
    kind: str  # "file" | "module" | "entry point"
    source: str  # a short label for badges: "my_detector.py", "mypkg.scores", "mypkg 1.0 (entry point)"
    detectors: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def line(self) -> str:
        if self.error:
            return f"plugin {self.spec} ({self.kind}) not loaded: {self.error}"
        what = ", ".join([*(f"detector {n}" for n in self.detectors), *(f"method {n}" for n in self.methods)])
        return f"plugin {self.spec} ({self.kind}): {what}"


_LOADED: dict[str, PluginInfo] = {}  # by the resolved spec: loading twice is a no-op
_SOURCE: dict[tuple[str, str], PluginInfo] = {}  # ("detectors"|"methods", name) -> the plugin that brought it
_BUILTIN: dict[str, frozenset[str]] = {}


def _builtins() -> dict[str, frozenset[str]]:
    if not _BUILTIN:  # the registries as they stand before any plugin (the packages import them all)
        _BUILTIN["detectors"] = frozenset(n for n, c in _det.detector_classes().items() if not _is_plugin(c))
        _BUILTIN["methods"] = frozenset(n for n, m in _meth.METHODS.items() if not _is_plugin(type(m)))
    return _BUILTIN


def _is_plugin(cls: type) -> bool:
    return not cls.__module__.startswith("ood_core.")


def plugins() -> list[PluginInfo]:
    """Every plugin asked for so far, loaded or refused, in order."""
    return list(_LOADED.values())


def source_of(name: str, kind: str = "detectors") -> PluginInfo | None:
    """The plugin that registered detector (or ``kind="methods"``: method) ``name``; None for a built-in."""
    return _SOURCE.get((kind, name))


def split_env(value: str | None) -> list[str]:
    """``OOD_PLUGINS``'s entries: separated by commas or the path separator, blanks dropped."""
    return [t.strip() for t in re.split(rf"[,{re.escape(os.pathsep)}]", value or "") if t.strip()]


def load_startup(specs: Iterable[str] = (), env: bool = True, entry_points: bool = True) -> list[PluginInfo]:
    """Entry points, then ``OOD_PLUGINS``, then ``specs``; returns what this call asked for (never raises)."""
    out: list[PluginInfo] = []
    if entry_points:
        out += load_entry_points()
    for spec in [*(split_env(os.environ.get(ENV)) if env else []), *specs]:
        out.append(load(spec))
    return out


def load_entry_points() -> list[PluginInfo]:
    """Every installed package's entry points in the two groups."""
    out = []
    for kind, group in GROUPS.items():
        try:
            eps = list(importlib.metadata.entry_points(group=group))
        except Exception as exc:  # noqa: BLE001 - a broken distribution must not stop the workbench
            out.append(_remember(PluginInfo(group, "entry point", group, error=first_line(exc))))
            continue
        for ep in eps:
            dist = getattr(ep, "dist", None)
            label = f"{dist.name} {dist.version}" if dist is not None else ep.value
            key = f"ep:{group}:{ep.name}:{ep.value}"
            if key in _LOADED:
                out.append(_LOADED[key])
                continue
            info = PluginInfo(f"{ep.name} = {ep.value}", "entry point", f"{label} (entry point)")
            out.append(_guarded(key, info, lambda ep=ep: ep.load()))
    return out


def load(spec: str) -> PluginInfo:
    """Load one ``--plugin``: a ``.py`` file or a dotted module (never raises; see ``PluginInfo.error``)."""
    spec = str(spec).strip()
    path = Path(spec).expanduser()
    if spec.endswith(".py") or path.exists():
        if not path.is_file():
            return _remember(PluginInfo(spec, "file", path.name, error="no such file"), f"file:{path}")
        key = f"file:{path.resolve()}"
        if key in _LOADED:
            return _LOADED[key]
        return _guarded(key, PluginInfo(spec, "file", path.name), lambda: _import_file(path.resolve()))
    key = f"module:{spec}"
    if key in _LOADED:
        return _LOADED[key]
    return _guarded(key, PluginInfo(spec, "module", spec), lambda: importlib.import_module(spec))


def _import_file(path: Path) -> Any:
    # a name unique to the path, so two plugins both called my_detector.py do not collide
    stem = re.sub(r"\W", "_", path.stem)
    name = f"ood_plugin_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"{path} is not a Python module")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


def _remember(info: PluginInfo, key: str | None = None) -> PluginInfo:
    _LOADED[key or f"{info.kind}:{info.spec}"] = info
    return info


def _guarded(key: str, info: PluginInfo, do_import) -> PluginInfo:
    """Import with the registries watched: what changed is the plugin's; a failure undoes it."""
    builtin = _builtins()
    dets, meths = _det.detector_classes(), dict(_meth.METHODS)
    try:
        obj = do_import()
        _adopt(obj)  # undecorated classes, or an entry point naming a class
        new_d = {n: c for n, c in _det.detector_classes().items() if dets.get(n) is not c}
        new_m = {n: m for n, m in _meth.METHODS.items() if meths.get(n) is not m}
        for n in [*new_d, *new_m]:
            if n in builtin["detectors"] and n in new_d or n in builtin["methods"] and n in new_m:
                raise PluginError(f"{n!r} is a built-in's name; give the plugin's class another name")
        if not new_d and not new_m and not _already_registered(obj):
            raise PluginError("declares no detector or training method (decorate a Detector subclass with "
                              "register_detector, or a TrainingMethod with register_method, from ood_core.api)")
        for n, c in new_d.items():
            validate_detector_class(c)
        for n, m in new_m.items():
            validate_method(m)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - one line, and the registries as they were
        _det._REGISTRY.clear()  # noqa: SLF001 - restore the registries' exact contents and order
        _det._REGISTRY.update(dets)  # noqa: SLF001
        _meth.METHODS.clear()
        _meth.METHODS.update(meths)
        info.error = f"{type(exc).__name__}: {first_line(exc)}" if not isinstance(exc, UserError) else first_line(exc)
        return _remember(info, key)
    info.detectors, info.methods = tuple(new_d), tuple(new_m)
    for n in new_d:
        _SOURCE[("detectors", n)] = info
    for n in new_m:
        _SOURCE[("methods", n)] = info
    return _remember(info, key)


def _already_registered(obj: Any) -> bool:
    return any(c is obj for c in _det.detector_classes().values()) or any(
        type(m) is obj for m in _meth.METHODS.values())


def _adopt(obj: Any) -> None:
    """Register what ``obj`` declares but did not register: a class itself, or a module's own
    Detector/TrainingMethod subclasses that carry a name (a module that registered anything is left as is)."""
    if inspect.isclass(obj):
        classes = [obj]
    elif inspect.ismodule(obj):
        mine = [c for _, c in inspect.getmembers(obj, inspect.isclass) if c.__module__ == obj.__name__]
        if any(c in _det.detector_classes().values() or any(type(m) is c for m in _meth.METHODS.values())
               for c in mine):
            return
        classes = mine
    else:
        return
    for c in classes:
        if issubclass(c, _det.Detector) and c.name and c.__dict__.get("name"):
            if _det.detector_classes().get(c.name) is not c:
                _det.register(c)
        elif issubclass(c, _meth.TrainingMethod) and c.__dict__.get("name"):
            if type(_meth.METHODS.get(c.name)) is not c:
                _meth.register(c)


def validate_detector_class(cls: type) -> None:
    """A detector's declaration, checked before it joins the registry (raises :class:`PluginError`)."""
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w\-]*", name or ""):
        raise PluginError(f"{cls.__name__}.name {name!r} must be a word (letters, digits, _ or -)")
    if not set(cls.needs) <= ALLOWED_NEEDS:
        raise PluginError(f"{name}.needs names unknown things {sorted(set(cls.needs) - ALLOWED_NEEDS)}; "
                          f"allowed: {sorted(ALLOWED_NEEDS)}")
    if cls.needs_model and cls.score_model is _det.ModelDetector.score_model:
        raise PluginError(f"{name} needs the model but implements no score_model")
    if not cls.needs_model and cls._score is _det.Detector._score:  # noqa: SLF001
        raise PluginError(f"{name} implements no _score(ext, **knobs)")
    _validate_knobs(name, cls.knobs)
    names = {k.name for k in cls.knobs}
    for key, values in dict(cls.grid).items():
        if key not in names:
            raise PluginError(f"{name}.grid names {key!r}, which is not a knob")
        for v in values:
            next(k for k in cls.knobs if k.name == key).validate(v, name)


def validate_method(m: Any) -> None:
    """A training method's declaration (raises :class:`PluginError`)."""
    if type(m).loss is _meth.TrainingMethod.loss:
        raise PluginError(f"{m.name} implements no loss(trainer, x, y)")
    _validate_knobs(m.name, m.knobs)


def _validate_knobs(owner: str, knobs: Any) -> None:
    from .knobs import Knob

    seen = set()
    for k in knobs:
        if not isinstance(k, Knob):
            raise PluginError(f"{owner}.knobs holds {k!r}, not a Knob")
        if k.name in seen:
            raise PluginError(f"{owner} declares knob {k.name!r} twice")
        seen.add(k.name)
        try:
            k.validate(k.default, owner)
        except UserError as exc:
            raise PluginError(f"{owner}.{k.name}'s default {k.default!r} is not valid: {first_line(exc)}") from None


def resolve_target(target: str, kind: str = "detectors") -> tuple[str, PluginInfo | None]:
    """``check-detector``'s TARGET: a registered name, ``module:Class`` or ``path.py:Class`` -> (name, plugin).

    Raises :class:`PluginError` (one line) when it cannot be found or loaded."""
    reg = _det.detector_classes() if kind == "detectors" else dict(_meth.METHODS)
    if target in reg:
        return target, source_of(target, kind)
    where, colon, cls_name = target.rpartition(":")
    if not colon or not where or not cls_name:
        if target.endswith(".py") or Path(target).exists():
            where, cls_name = target, ""
        else:
            what = "detector" if kind == "detectors" else "training method"
            raise PluginError(f"unknown {what} {target!r}: give a registered name, module:Class or path.py:Class")
    info = load(where)
    if not info.ok:
        raise PluginError(info.line)
    names = info.detectors if kind == "detectors" else info.methods
    if not cls_name:
        if len(names) != 1:
            raise PluginError(f"{where} registers {len(names)} {kind}: name one as {where}:Class")
        return names[0], info
    reg = _det.detector_classes() if kind == "detectors" else {n: type(m) for n, m in _meth.METHODS.items()}
    for n, c in reg.items():
        if c.__name__ == cls_name and (n in names or c.__module__ == where):
            return n, info
    raise PluginError(f"{where} has no registered {kind[:-1]} class {cls_name!r}; it registers {list(names) or 'nothing'}")


def forget(info: PluginInfo) -> None:
    """Unregister what a plugin brought (tests; the app never unloads)."""
    for n in info.detectors:
        _det._REGISTRY.pop(n, None)  # noqa: SLF001
        _SOURCE.pop(("detectors", n), None)
    for n in info.methods:
        _meth.METHODS.pop(n, None)
        _SOURCE.pop(("methods", n), None)
    for k in [k for k, v in _LOADED.items() if v is info]:
        del _LOADED[k]


__all__ = ["ENV", "GROUPS", "PluginError", "PluginInfo", "forget", "load", "load_entry_points", "load_startup",
           "plugins", "resolve_target", "source_of", "split_env", "validate_detector_class", "validate_method"]
