"""One explicit registry type for methods, backbones, suites and codecs.

A plugin declares its name, kind, a one-line summary, a paper reference and its parameters. Parameters are
validated (and coerced from ``--set key=value`` strings) before any work starts.

Plugins register with the decorator of the registry for their kind::

    from benchmark.registry import METHODS, Param

    @METHODS.register("my_method", summary="...", paper="...", params=[Param("lam", float, 0.3, "scale", lo=0)])
    class MyMethod(Method): ...

Modules in the in-repo packages (``methods``, ``methods.codecs``, ``backbones``, ``tasks``) are imported on first
use, so a new file is enough. Plugins living outside the repo expose a Python entry point in the group
``merge_bench.<kind>s`` (``merge_bench.methods``, ``merge_bench.backbones``, ...) whose target module registers
itself on import, or is the decorated class itself.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

__all__ = ["Param", "Plugin", "Registry", "RegistryError", "METHODS", "BACKBONES", "SUITES", "CODECS"]


class RegistryError(ValueError):
    """A user-facing error: unknown plugin or bad parameter. The CLI prints it on one line, without a traceback."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Param:
    """One declared parameter of a plugin.

    ``type`` is one of bool, int, float, str. ``choices`` restricts the value; ``lo``/``hi`` bound numbers
    (inclusive). ``nullable`` allows ``None`` (written ``none`` on the command line).
    """

    name: str
    type: type
    default: Any
    help: str = ""
    choices: Sequence[Any] | None = None
    lo: float | None = None
    hi: float | None = None
    nullable: bool = False

    def coerce(self, value: Any, owner: str) -> Any:
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null"} and self.type is not str):
            if self.nullable:
                return None
            raise RegistryError(f"{owner}: parameter '{self.name}' may not be none")
        try:
            if self.type is bool:
                if isinstance(value, bool):
                    out = value
                elif isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                    out = value.lower() in _TRUE
                elif isinstance(value, int) and value in (0, 1):
                    out = bool(value)
                else:
                    raise ValueError
            elif self.type is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                out = int(value)
            elif self.type is float:
                if isinstance(value, bool):
                    raise ValueError
                out = float(value)
            elif self.type is str:
                out = str(value)
            else:
                out = self.type(value)
        except (TypeError, ValueError):
            raise RegistryError(
                f"{owner}: parameter '{self.name}' expects {self.type.__name__}, got {value!r}"
            ) from None
        if self.choices is not None and out not in self.choices:
            raise RegistryError(
                f"{owner}: parameter '{self.name}' must be one of {', '.join(map(str, self.choices))}; got {out!r}"
            )
        if self.lo is not None and out < self.lo or self.hi is not None and out > self.hi:
            lo = "-inf" if self.lo is None else self.lo
            hi = "inf" if self.hi is None else self.hi
            raise RegistryError(f"{owner}: parameter '{self.name}' must lie in [{lo}, {hi}]; got {out!r}")
        return out

    def describe(self) -> str:
        rng = ""
        if self.choices is not None:
            rng = " {" + "|".join(map(str, self.choices)) + "}"
        elif self.lo is not None or self.hi is not None:
            rng = f" [{'' if self.lo is None else self.lo}..{'' if self.hi is None else self.hi}]"
        return f"{self.name}: {self.type.__name__} = {self.default!r}{rng}  {self.help}".rstrip()


@dataclass
class Plugin:
    name: str
    kind: str
    summary: str
    paper: str
    params: tuple[Param, ...]
    obj: Any
    meta: dict[str, Any] = field(default_factory=dict)

    def resolve(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overlaid with ``overrides``; every value validated. Unknown keys are an error."""
        overrides = dict(overrides or {})
        known = {p.name: p for p in self.params}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            valid = ", ".join(sorted(known)) or "(none)"
            raise RegistryError(f"{self.kind} '{self.name}' has no parameter {', '.join(map(repr, unknown))}; valid: {valid}")
        out = {}
        for p in self.params:
            value = overrides.get(p.name, p.default)
            out[p.name] = p.coerce(value, f"{self.kind} '{self.name}'")
        return out


class Registry:
    """``name -> Plugin`` for one kind, filled by decorators and entry points."""

    def __init__(self, kind: str, packages: Iterable[str], entry_point_group: str):
        self.kind = kind
        self._packages = tuple(packages)
        self.entry_point_group = entry_point_group
        self._plugins: dict[str, Plugin] = {}
        self._loaded = False

    def register(
        self,
        name: str,
        *,
        summary: str,
        paper: str = "",
        params: Iterable[Param] = (),
        **meta: Any,
    ) -> Callable[[Any], Any]:
        params = tuple(params)
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.kind} '{name}': duplicate parameter names {names}")
        for p in params:  # a plugin whose own default is invalid is a programming error, caught at import
            p.coerce(p.default, f"{self.kind} '{name}'")

        def deco(obj: Any) -> Any:
            if name in self._plugins and self._plugins[name].obj is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._plugins[name] = Plugin(name, self.kind, summary, paper, params, obj, dict(meta))
            obj.plugin_name = name
            return obj

        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for pkg_name in self._packages:
            pkg = importlib.import_module(pkg_name)
            for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{pkg_name}.{info.name}")
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            target = ep.load()  # importing the module registers it; a decorated class is already in
            if getattr(target, "plugin_name", None) not in self._plugins and not isinstance(target, type(importlib)):
                raise RegistryError(f"entry point {ep.name!r} in {self.entry_point_group} registered no {self.kind}")

    def names(self) -> list[str]:
        self._load()
        return sorted(self._plugins)

    def plugins(self) -> list[Plugin]:
        self._load()
        return [self._plugins[n] for n in sorted(self._plugins)]

    def get(self, name: str) -> Plugin:
        self._load()
        try:
            return self._plugins[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._plugins))}"
            ) from None

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._plugins


METHODS = Registry("method", ["methods"], "merge_bench.methods")
CODECS = Registry("codec", ["methods.codecs"], "merge_bench.codecs")
BACKBONES = Registry("backbone", ["backbones"], "merge_bench.backbones")
SUITES = Registry("suite", ["tasks"], "merge_bench.suites")
