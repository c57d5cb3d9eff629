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

Each registry refuses a plugin that does not subclass its kind's contract base class (methods:
:class:`benchmark.contract.Method`, backbones: ``Backbone``, suites: ``Suite``, codecs:
:class:`benchmark.storage.Codec`), and a method whose ``kind`` is not one of ``static``, ``task_conditioned``,
``routed``.

Methods also declare how the leaderboard shows them (:mod:`benchmark.leaderboard`): ``paper_rows``, the names of
their rows in the papers' tables (``paper_results.csv``; ``{loss}`` is filled from the run's ``loss`` parameter),
and ``order``, their place among the rows of their type (the papers' order; methods without one follow,
alphabetically)::

    @METHODS.register("ties", summary="...", paper="...", paper_rows=("Ties-Merging",), order=70)

Per-backbone-kind defaults. A backbone declares the kind of tasks it solves (``task_kind``, one of
:data:`BACKBONE_KINDS`). A method may declare, per kind, the setting a paper uses on that kind of backbone, as a
whole and with its source (``kind_defaults``); these replace the plain defaults on backbones of that kind, and
``--set`` overrides both::

    @METHODS.register("flexswitch", ..., params=[...],
                      kind_defaults={"detection": KindDefaults({"loss": "mse", "lam": 0.5},
                                                               "auto-flexswitch.txt Table VII")})

    @BACKBONES.register("detr_r50", ..., task_kind="detection")

Both are checked at registration (a kind that does not exist, a parameter the method lacks, a value its
:class:`Param` refuses, a kind default without a source). :meth:`Plugin.resolve` takes the backbone's kind; the
runner passes it, so a record's ``params`` are the values the run used, whichever default they came from.
"""
from __future__ import annotations

import math

import importlib
import importlib.metadata
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

__all__ = ["Param", "Plugin", "KindDefaults", "Registry", "RegistryError", "METHODS", "BACKBONES", "SUITES",
           "CODECS", "METHOD_KINDS", "BACKBONE_KINDS", "DEFAULT_ORDER"]

#: the merged-model kinds a method may declare (``Method.kind``)
METHOD_KINDS = ("static", "task_conditioned", "routed")
#: the kinds of task a backbone solves (``BACKBONES.register(..., task_kind=...)``), which per-kind defaults key on
BACKBONE_KINDS = ("classification", "detection", "nlu")
#: the display order of a method that declares none: after every declared one
DEFAULT_ORDER = 10_000


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
        if self.type is float and not math.isfinite(out):  # NaN/inf would reach the record as non-JSON NaN/Infinity
            raise RegistryError(f"{owner}: parameter '{self.name}' must be a finite number; got {value!r}")
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


@dataclass(frozen=True)
class KindDefaults:
    """A method's setting on one kind of backbone, as one reference gives it: ``values`` (parameter -> value)
    replace the plain defaults together; ``source`` names the paper table (shown by ``list``)."""

    values: Mapping[str, Any]
    source: str


@dataclass
class Plugin:
    name: str
    kind: str
    summary: str
    paper: str
    params: tuple[Param, ...]
    obj: Any
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def paper_rows(self) -> tuple[str, ...]:
        """The names of this method's rows in the papers' tables (declared at registration)."""
        return tuple(self.meta.get("paper_rows", ()))

    @property
    def order(self) -> int:
        """The method's place among the rows of its type (declared at registration; :data:`DEFAULT_ORDER` else)."""
        return int(self.meta.get("order", DEFAULT_ORDER))

    @property
    def kind_defaults(self) -> dict[str, KindDefaults]:
        """Backbone kind -> the setting that replaces the plain defaults there (declared at registration)."""
        return dict(self.meta.get("kind_defaults", {}))

    def defaults(self, backbone_kind: str | None = None) -> dict[str, Any]:
        """The default of every parameter, in declaration order, on a backbone of ``backbone_kind`` (None: the
        plain defaults)."""
        out = {p.name: p.default for p in self.params}
        kd = self.kind_defaults.get(backbone_kind) if backbone_kind else None
        if kd is not None:
            out.update(kd.values)
        return out

    def resolve(self, overrides: Mapping[str, Any] | None = None, backbone_kind: str | None = None) -> dict[str, Any]:
        """Defaults (those of ``backbone_kind`` where the plugin declares them) overlaid with ``overrides``; every
        value validated. Unknown keys are an error."""
        overrides = dict(overrides or {})
        known = {p.name: p for p in self.params}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            valid = ", ".join(sorted(known)) or "(none)"
            raise RegistryError(f"{self.kind} '{self.name}' has no parameter {', '.join(map(repr, unknown))}; valid: {valid}")
        out = {}
        defaults = self.defaults(backbone_kind)
        for p in self.params:
            value = overrides.get(p.name, defaults[p.name])
            out[p.name] = p.coerce(value, f"{self.kind} '{self.name}'")
        return out


def _check_kind_defaults(owner: str, params: Sequence[Param], spec: Any) -> dict[str, KindDefaults]:
    """Validate a plugin's ``kind_defaults`` at import: known kinds and parameters, valid values, a source."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"{owner}: kind_defaults must map a backbone kind to KindDefaults, got {spec!r}")
    known = {p.name: p for p in params}
    out: dict[str, KindDefaults] = {}
    for kind, kd in spec.items():
        if kind not in BACKBONE_KINDS:
            raise ValueError(f"{owner}: kind_defaults: unknown backbone kind {kind!r}; "
                             f"valid: {', '.join(BACKBONE_KINDS)}")
        if not isinstance(kd, KindDefaults) or not kd.values or not str(kd.source).strip():
            raise ValueError(f"{owner}: kind_defaults[{kind!r}] must be KindDefaults(values, source) with values "
                             f"and a source (the paper table); got {kd!r}")
        bad = sorted(set(kd.values) - set(known))
        if bad:
            raise ValueError(f"{owner}: kind_defaults[{kind!r}] names unknown parameters {bad}")
        values = {k: known[k].coerce(v, f"{owner}: kind_defaults[{kind!r}]") for k, v in kd.values.items()}
        out[kind] = KindDefaults(values, kd.source)
    return out


class Registry:
    """``name -> Plugin`` for one kind, filled by decorators and entry points."""

    def __init__(self, kind: str, packages: Iterable[str], entry_point_group: str, base: str | None = None):
        self.kind = kind
        self._packages = tuple(packages)
        self.entry_point_group = entry_point_group
        self.base = base  # "module:Class" that every plugin must subclass (imported on first registration)
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
        rows = meta.get("paper_rows", ())
        if isinstance(rows, str) or not all(isinstance(r, str) for r in rows):
            raise ValueError(f"{self.kind} '{name}': paper_rows must be a tuple of names, got {rows!r}")
        if "order" in meta and (isinstance(meta["order"], bool) or not isinstance(meta["order"], int)):
            raise ValueError(f"{self.kind} '{name}': order must be an int, got {meta['order']!r}")
        if "task_kind" in meta and meta["task_kind"] not in BACKBONE_KINDS:
            raise ValueError(f"{self.kind} '{name}': task_kind must be one of {', '.join(BACKBONE_KINDS)}, "
                             f"got {meta['task_kind']!r}")
        if "kind_defaults" in meta:
            meta["kind_defaults"] = _check_kind_defaults(f"{self.kind} '{name}'", params, meta["kind_defaults"])

        def deco(obj: Any) -> Any:
            self._check(name, obj)
            if name in self._plugins and self._plugins[name].obj is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._plugins[name] = Plugin(name, self.kind, summary, paper, params, obj, dict(meta))
            obj.plugin_name = name
            return obj

        return deco

    def _check(self, name: str, obj: Any) -> None:
        """The contract: a subclass of the kind's base class; a method declares a valid ``kind``."""
        if self.base is None:
            return
        mod, _, cls = self.base.partition(":")
        base = getattr(importlib.import_module(mod), cls)
        if not (isinstance(obj, type) and issubclass(obj, base)):
            what = obj.__name__ if isinstance(obj, type) else repr(obj)
            raise RegistryError(f"{self.kind} '{name}': {what} does not subclass {mod}.{cls}")
        if self.kind == "method" and getattr(obj, "kind", None) not in METHOD_KINDS:
            raise RegistryError(f"method '{name}': kind {getattr(obj, 'kind', None)!r} is not one of "
                                f"{', '.join(METHOD_KINDS)}")

    def unregister(self, name: str) -> None:
        """Remove a plugin (tests that register temporary plugins clean up with it)."""
        self._plugins.pop(name, None)

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


METHODS = Registry("method", ["methods"], "merge_bench.methods", base="benchmark.contract:Method")
CODECS = Registry("codec", ["methods.codecs"], "merge_bench.codecs", base="benchmark.storage:Codec")
BACKBONES = Registry("backbone", ["backbones"], "merge_bench.backbones", base="benchmark.contract:Backbone")
SUITES = Registry("suite", ["tasks"], "merge_bench.suites", base="benchmark.contract:Suite")
