"""Sweeps: a YAML file of (method x parameter grid x backbone x suite x seed) runs, expanded into run specs,
validated before any work, and run by an executor (:mod:`benchmark.executors`), skipping finished runs.

Sweep file
----------
::

    description: ...               # optional, free text
    profile: tiny                  # tiny (default) | paper | micro
    seeds: [0, 1, 2]               # an int or a list; default [0]
    backbones: all                 # "all" (every registered backbone), a name, or a list of names
    suites: null                   # null: each backbone's default suite; "all": every suite it declares; names
    select_by: val                 # optional; "val": every run also scores the val split (records val_metrics),
                                   # so the leaderboard can pick each method's best setting by val, never by test;
                                   # every suite of the sweep must serve a val split (``Suite.splits``)
    grid_size: 6                   # optional: every method given a grid must expand to exactly this many
                                   # settings (a fair protocol tunes every method on a grid of the same size)
    batch_size: 256                # optional, evaluation batch size
    plugins: [my_pkg.my_methods]   # optional: modules imported first (out-of-tree plugins without entry points)
    methods:                       # "all", a list, or a mapping name -> grid
      pretrained:                  # no grid: the registered defaults
      ties: {topk: [10, 20], scaling_coef: [0.3, 0.5]}   # a grid: the cartesian product (4 runs per seed...)
      auto_flexswitch:             # a list of grids: their union (paired values, e.g. a loss with its lambda)
        - {loss: kl, lam: 0.3}
        - {loss: cka, lam: 3.0}
    groups:                        # optional: sub-sweeps; each overrides the keys above for its own runs
      - backbones: [clip_vit_b32]
        methods: {task_arithmetic: {scaling_coef: 0.2}}
      - backbones: [convnext]
        methods: {task_arithmetic: {scaling_coef: 0.3}}

A method list may mix names, ``all`` and one-key mappings (``- ties: {topk: [10, 20]}``). A parameter value that
is a list is a set of grid values (no parameter takes a list). Without ``groups`` the top level is the one group.

Validation (:func:`expand`) resolves every run through :func:`benchmark.runner.resolve` before the first one
starts, so a bad key or value fails at once with one line naming the file, the place in it and the valid choices.
Names that are not registered (methods, backbones and suites that other plugins will add) are an error listing them
all, or, with ``skip_unknown``, skipped and reported.

Resume: a run is finished when ``results_dir`` holds a record with the run's config hash
(:func:`benchmark.records.config_hash` of the *resolved* parameters), and, when the run asks for the val split, that
record has ``val_metrics``. Records are written atomically, so a sweep killed mid-run leaves no record for the
unfinished runs, and running it again redoes exactly those.
"""
from __future__ import annotations

import importlib
import itertools
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import yaml

from benchmark.errors import UserError
from benchmark.profiles import PROFILES
from benchmark.records import RecordError, config_hash, load_records
from benchmark.registry import BACKBONES, METHODS, SUITES, RegistryError
from benchmark.runner import RunSpec, resolve

__all__ = [
    "SELECT_BY",
    "SweepRun",
    "Sweep",
    "Outcome",
    "Summary",
    "load_sweep_file",
    "import_plugins",
    "expand",
    "load_sweeps",
    "finished",
    "execute",
    "check_destinations",
    "cmd_sweep",
]

GROUP_KEYS = ("profile", "seeds", "backbones", "suites", "methods", "select_by", "batch_size", "grid_size")
TOP_KEYS = ("description", "plugins", "groups") + GROUP_KEYS
SELECT_BY = ("val",)  # never "test": selection by the test split is what the leaderboard must not do
_SCALAR = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class SweepRun:
    """One resolved run of a sweep."""

    spec: RunSpec  # its suite is the resolved one
    params: dict[str, Any]  # the method's resolved parameters
    config_hash: str  # what its record's ``config_hash`` will be

    @property
    def needs_val(self) -> bool:
        return self.spec.eval_val

    @property
    def label(self) -> str:
        s = self.spec
        p = ",".join(f"{k}={v}" for k, v in sorted(s.overrides.items()))
        return f"{s.method}{'[' + p + ']' if p else ''} @ {s.backbone}/{s.suite} ({s.profile}, seed {s.seed})"


@dataclass
class Sweep:
    runs: list[SweepRun]
    plugins: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # "method 'x' (file)": not registered, skipped


# ----------------------------------------------------------------------------------------------------------------
# Parsing


def load_sweep_file(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"sweep file not found: {path}") from None
    except OSError as e:
        raise UserError(f"cannot read sweep file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the sweep file as UTF-8") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: a sweep file is a mapping with the keys {', '.join(TOP_KEYS)}")
    return doc


def import_plugins(modules: Iterable[str]) -> None:
    """Import plugin modules (each registers itself on import). A name that is not a dotted module name, a module
    that is not there, or one whose own code fails on import is one line naming it (an empty or relative name was
    a ``ValueError``/``TypeError`` traceback)."""
    for name in modules:
        if not isinstance(name, str) or not name or not all(p.isidentifier() for p in name.split(".")):
            raise UserError(f"plugin {name!r} is not a module name (dotted identifiers, e.g. my_pkg.methods)")
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise UserError(f"cannot import plugin module {name!r}: {e}") from None
        except Exception as e:  # noqa: BLE001 - the plugin's own code failed: say which, in one line
            first = (str(e).strip().splitlines() or [""])[0]
            raise UserError(f"plugin module {name!r} failed on import: {type(e).__name__}: {first}") from None


def module_roots(modules: Iterable[str]) -> list[str]:
    """The ``sys.path`` entries the (imported) plugin modules were found under; workers need them on their path."""
    roots: list[str] = []
    for name in modules:
        mod = sys.modules.get(name)
        f = getattr(mod, "__file__", None)
        if not f:
            continue
        p = Path(f).resolve()
        up = name.count(".") + (1 if p.name == "__init__.py" else 0)
        root = p.parent
        for _ in range(up):
            root = root.parent
        if str(root) not in roots:
            roots.append(str(root))
    return roots


class _Ctx:
    """Where in which file: every message names it."""

    def __init__(self, file: str):
        self.file = file

    def err(self, where: str, msg: str) -> UserError:
        return UserError(f"{self.file}: {where}: {msg}" if where else f"{self.file}: {msg}")


def _names(value: Any, what: str, where: str, ctx: _Ctx) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ctx.err(where, f'expects a {what} name, "all", or a non-empty list of them; got {value!r}')
    return list(dict.fromkeys(value))


def _seeds(value: Any, where: str, ctx: _Ctx) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in value):
        raise ctx.err(where, f"expects an integer or a non-empty list of integers; got {value!r}")
    return list(dict.fromkeys(value))


def _grid(spec: Any, where: str, ctx: _Ctx) -> list[dict[str, Any]]:
    """A method's grid: None/{} (defaults), {param: value | [values]} (cartesian product), or a list of those
    (their union)."""
    if spec is None:
        return [{}]
    if isinstance(spec, list):
        if not spec:
            raise ctx.err(where, "an empty list of grids; write {} (or nothing) for the defaults")
        out: list[dict[str, Any]] = []
        for i, g in enumerate(spec):
            if not isinstance(g, dict) and g is not None:
                raise ctx.err(f"{where}[{i}]", f"a grid is a mapping parameter -> value(s); got {g!r}")
            out += _grid(g, f"{where}[{i}]", ctx)
        return out
    if not isinstance(spec, dict):
        raise ctx.err(where, f"a grid is a mapping parameter -> value(s), or a list of such mappings; got {spec!r}")
    axes: list[tuple[str, list[Any]]] = []
    for key, values in spec.items():
        if not isinstance(key, str):
            raise ctx.err(where, f"parameter names are strings; got {key!r}")
        vals = values if isinstance(values, list) else [values]
        if not vals:
            raise ctx.err(f"{where}.{key}", "an empty list of values")
        for v in vals:
            if not isinstance(v, _SCALAR):
                raise ctx.err(f"{where}.{key}", f"values are numbers, strings, booleans or null; got {v!r}")
        axes.append((key, vals))
    return [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])]


def _methods(value: Any, where: str, ctx: _Ctx) -> list[tuple[str, list[dict[str, Any]], str]]:
    """``[(method or "all", grids, place)]``."""
    items: list[tuple[str, Any, str]] = []
    if isinstance(value, str):
        items.append((value, None, where))
    elif isinstance(value, dict):
        items += [(k, v, f"{where}.{k}") for k, v in value.items()]
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            if isinstance(item, str):
                items.append((item, None, f"{where}[{i}]"))
            elif isinstance(item, dict) and item:
                items += [(k, v, f"{where}[{i}].{k}") for k, v in item.items()]
            else:
                raise ctx.err(f"{where}[{i}]", f"expects a method name or a mapping name -> grid; got {item!r}")
    else:
        raise ctx.err(where, f"expects \"all\", a list of methods or a mapping method -> grid; got {value!r}")
    out = []
    for name, spec, place in items:
        if not isinstance(name, str) or not name:
            raise ctx.err(place, f"a method name is a string; got {name!r}")
        if name == "all" and spec not in (None, {}):
            raise ctx.err(place, "\"all\" takes no grid (methods have different parameters)")
        out.append((name, _grid(spec, place, ctx), place))
    return out


def _check_keys(doc: Mapping[str, Any], valid: Sequence[str], where: str, ctx: _Ctx) -> None:
    bad = [k for k in doc if k not in valid]
    if bad:
        raise ctx.err(where, f"unknown key{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}; "
                             f"valid: {', '.join(valid)}")


# ----------------------------------------------------------------------------------------------------------------
# Expansion


def expand(
    doc: Mapping[str, Any],
    *,
    source: str = "<sweep>",
    results_dir: str | os.PathLike = "results",
    skip_unknown: bool = False,
    profile_override: str | None = None,
) -> Sweep:
    """Every run of a parsed sweep file, each resolved (validated) through :func:`benchmark.runner.resolve`.
    ``profile_override`` replaces every group's profile (``sweep --profile``).

    Raises :class:`UserError` (one line: file, place, valid choices) on the first invalid key or value, and on
    unregistered names unless ``skip_unknown``. Duplicate runs (same config hash) are kept once."""
    ctx = _Ctx(source)
    _check_keys(doc, TOP_KEYS, "", ctx)
    plugins = doc.get("plugins") or []
    if isinstance(plugins, str):
        plugins = [plugins]
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ctx.err("plugins", f"expects a list of module names; got {plugins!r}")
    import_plugins(plugins)

    groups = doc.get("groups")
    if groups is None:
        groups = [{}]
    elif not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
        raise ctx.err("groups", "expects a non-empty list of mappings (each overrides the top-level keys)")
    top = {k: doc[k] for k in GROUP_KEYS if k in doc}

    runs: dict[str, SweepRun] = {}
    unknown: dict[tuple[str, str], None] = {}  # (kind, name), in order of appearance
    for gi, group in enumerate(groups):
        gw = f"groups[{gi}]" if "groups" in doc else ""
        _check_keys(group, GROUP_KEYS, gw, ctx)
        cfg = {**top, **group}

        def place(key: str) -> str:
            return f"{gw}.{key}" if gw and key in group else key

        profile = profile_override or cfg.get("profile", "tiny")
        if profile not in PROFILES:
            raise ctx.err(place("profile"), f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
        seeds = _seeds(cfg.get("seeds", [0]), place("seeds"), ctx)
        sel = cfg.get("select_by")
        if sel is not None and sel not in SELECT_BY:
            why = "; selecting by the test split is not allowed" if sel == "test" else ""
            raise ctx.err(place("select_by"), f"must be {' or '.join(SELECT_BY)} (or absent); got {sel!r}{why}")
        batch = cfg.get("batch_size", RunSpec.batch_size)
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ctx.err(place("batch_size"), f"expects a positive integer; got {batch!r}")
        if "backbones" not in cfg:
            raise ctx.err(gw, "no backbones: give backbones (a name, a list, or \"all\")")
        if "methods" not in cfg:
            raise ctx.err(gw, "no methods: give methods (a name, a list, a mapping name -> grid, or \"all\")")

        backbones: list[str] = []
        for b in _names(cfg["backbones"], "backbone", place("backbones"), ctx):
            if b == "all":
                backbones += BACKBONES.names()
            elif b in BACKBONES:
                backbones.append(b)
            else:
                unknown["backbone", b] = None
        backbones = list(dict.fromkeys(backbones))

        size = cfg.get("grid_size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 2):
            raise ctx.err(place("grid_size"), f"expects an integer >= 2 (the settings of every method's grid); "
                                              f"got {size!r}")
        points: list[tuple[str, dict[str, Any]]] = []  # (method, overrides)
        for name, grids, mplace in _methods(cfg["methods"], place("methods"), ctx):
            if size is not None and grids != [{}] and len(grids) != size:
                raise ctx.err(mplace, f"a grid of {len(grids)} setting{'s' if len(grids) != 1 else ''}; grid_size "
                                      f"asks every method's grid for {size}")
            if name == "all":
                points += [(m, {}) for m in METHODS.names()]
            elif name in METHODS:
                for grid in grids:  # checked here, so a typo shows even where no backbone exists (yet)
                    try:
                        METHODS.get(name).resolve(grid)
                    except RegistryError as e:
                        raise ctx.err(mplace, str(e)) from None
                    points.append((name, grid))
            else:
                unknown["method", name] = None

        suites_cfg = cfg.get("suites")
        suite_names = None if suites_cfg is None else _names(suites_cfg, "suite", place("suites"), ctx)
        for b in backbones:
            declared = list(BACKBONES.get(b).meta.get("suites", ()))
            if suite_names is None:
                suites: list[str | None] = [None]
            else:
                suites = []
                for s in suite_names:
                    if s == "all":
                        suites += declared
                    elif s in SUITES:
                        suites.append(s)
                    else:
                        unknown["suite", s] = None
            if sel is not None:
                for s in dict.fromkeys(suites):
                    sname = s or BACKBONES.get(b).meta.get("default_suite")
                    if sname in SUITES:
                        have = tuple(getattr(SUITES.get(sname).obj, "splits", ("train", "val", "test")))
                        if sel not in have:
                            raise ctx.err(place("select_by"), f"select_by {sel!r}: suite {sname!r} (backbone {b!r}) "
                                                              f"has no {sel} split; it has {', '.join(have)}")
            for suite, (method, grid), seed in itertools.product(dict.fromkeys(suites), points, seeds):
                spec = RunSpec(method=method, backbone=b, suite=suite, profile=profile, seed=seed,
                               overrides=dict(grid), results_dir=str(results_dir), batch_size=batch, progress=False,
                               eval_val=sel == "val")
                try:
                    res = resolve(spec)  # what is left to check: the (backbone, suite) pair
                except RegistryError as e:
                    raise ctx.err(place("suites") if suite else gw, str(e)) from None
                h = config_hash(method, res.params, b, res.suite.name, profile, seed)
                _keep(runs, SweepRun(replace(spec, suite=res.suite.name), res.params, h))
    if unknown and not skip_unknown:
        parts = []
        for kind, reg in (("method", METHODS), ("backbone", BACKBONES), ("suite", SUITES)):
            names = [n for k, n in unknown if k == kind]
            if names:
                parts.append(f"{kind}s {', '.join(names)} (registered: {', '.join(reg.names()) or 'none'})")
        raise ctx.err("", f"not registered: {'; '.join(parts)}; pass --skip-unknown to run what exists")
    skipped = [f"{kind} {n!r} ({source})" for kind, n in unknown]
    return Sweep(list(runs.values()), list(plugins), skipped)


def _keep(runs: dict[str, SweepRun], run: SweepRun) -> None:
    """Add ``run`` unless the same run (config hash) is there; a copy that also asks for val scores wins."""
    prev = runs.get(run.config_hash)
    if prev is None or (run.needs_val and not prev.needs_val):
        runs[run.config_hash] = run


def load_sweeps(
    paths: Sequence[str | os.PathLike],
    *,
    results_dir: str | os.PathLike = "results",
    skip_unknown: bool = False,
    extra_plugins: Sequence[str] = (),
    profile_override: str | None = None,
) -> Sweep:
    """Parse, validate and expand several sweep files into one sweep (runs in file order, duplicates once)."""
    import_plugins(extra_plugins)
    out = Sweep([], list(extra_plugins))
    runs: dict[str, SweepRun] = {}
    for p in paths:
        sw = expand(load_sweep_file(p), source=str(p), results_dir=results_dir, skip_unknown=skip_unknown,
                    profile_override=profile_override)
        for r in sw.runs:
            _keep(runs, r)
        out.plugins += [m for m in sw.plugins if m not in out.plugins]
        out.unknown += sw.unknown
    out.runs = list(runs.values())
    return out


# ----------------------------------------------------------------------------------------------------------------
# Resume


def finished(runs: Sequence[SweepRun], results_dir: str | os.PathLike, *, check_data: bool = True,
             progress: bool = False) -> set[str]:
    """Config hashes of the runs that already have a record (with val metrics where the run asks for them) on the
    suite's current data: a record of the same config on data the suite's generators no longer make is a run still
    to do (it is replaced when done; :func:`benchmark.records.write_record`). ``check_data=False`` skips generating
    the suites to compare (a listing that must not build anything); ``progress`` shows a bar while a suite's data
    is generated for the comparison."""
    from benchmark.runner import suite_fingerprint

    results_dir = Path(results_dir)
    if not results_dir.exists():
        return set()
    try:
        records = load_records(results_dir)
    except RecordError as e:
        raise UserError(f"cannot resume: {e}") from None
    by_hash: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_hash.setdefault(str(rec.get("config_hash")), []).append(rec)
    data: dict[tuple, str] = {}  # one fingerprint per suite, profile, seed and cache
    out = set()
    for r in runs:
        recs = by_hash.get(r.config_hash, [])
        if recs and check_data:
            s = r.spec
            key = (s.backbone, s.suite, s.profile, s.seed, s.cache_root)
            if key not in data:
                data[key] = suite_fingerprint(s, progress=progress)
            recs = [rec for rec in recs if (rec.get("suite_data") or "") == data[key]]
        if recs and (not r.needs_val or any("val_metrics" in rec for rec in recs)):
            out.add(r.config_hash)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Running


@dataclass
class Outcome:
    run: SweepRun
    status: str  # "done" or "failed"
    seconds: float
    path: str | None = None
    average: float | None = None
    val_average: float | None = None
    error: str | None = None
    attempts: int = 1


@dataclass
class Summary:
    runs: int
    skipped: int
    outcomes: list[Outcome]
    unknown: list[str]
    wall_s: float
    executor: str
    interrupted: bool = False
    stopped: bool = False  # fail-fast

    @property
    def done(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "done"]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def not_run(self) -> int:
        return self.runs - self.skipped - len(self.outcomes)

    def format(self) -> str:
        lines = []
        if self.outcomes:
            w = max(len(o.run.label) for o in self.outcomes)
            lines.append(f"{'run'.ljust(w)}  status  {'time s':>8}  {'AVG':>6}  {'val AVG':>7}")
            for o in self.outcomes:
                avg = "" if o.average is None else f"{o.average:6.2f}"
                val = "" if o.val_average is None else f"{o.val_average:7.2f}"
                lines.append(f"{o.run.label.ljust(w)}  {o.status:<6}  {o.seconds:8.1f}  {avg:>6}  {val:>7}")
        for o in self.failed:
            lines.append(f"FAILED {o.run.label}: {o.error}")
        tail = (f"sweep ({self.executor}): {self.runs} run{'' if self.runs == 1 else 's'}: {len(self.done)} done, "
                f"{self.skipped} skipped (finished before), {len(self.failed)} failed")
        if self.not_run:
            tail += f", {self.not_run} not run" + (" (interrupted)" if self.interrupted else " (fail-fast)")
        if self.unknown:
            tail += f"; {len(self.unknown)} unknown names skipped"
        lines.append(f"{tail}; wall time {self.wall_s:.1f} s")
        return "\n".join(lines)


def execute(
    sweep: Sweep,
    executor: Any,
    results_dir: str | os.PathLike,
    *,
    progress: bool = True,
    fail_fast: bool = False,
) -> Summary:
    """Run the unfinished runs of ``sweep`` on ``executor`` (see :mod:`benchmark.executors`)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    done = finished(sweep.runs, results_dir, progress=progress)
    todo = [r for r in sweep.runs if r.config_hash not in done]
    summary = Summary(len(sweep.runs), len(sweep.runs) - len(todo), [], list(sweep.unknown), 0.0, executor.name)
    bar = tqdm(total=len(sweep.runs), initial=summary.skipped, desc="sweep", unit="run", disable=not progress,
               dynamic_ncols=True)
    stream: Iterator[Outcome] | None = None
    try:
        if todo:
            stream = executor.run(todo)
            for outcome in stream:
                summary.outcomes.append(outcome)
                bar.update(1)
                bar.set_postfix(failed=len(summary.failed), refresh=False)
                if outcome.status == "failed":
                    bar.write(f"failed: {outcome.run.label}: {outcome.error}")
                    if fail_fast:
                        summary.stopped = True
                        break
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        if stream is not None and hasattr(stream, "close"):
            stream.close()  # cancels what is still queued or running
        bar.close()
        summary.wall_s = time.perf_counter() - t0
    return summary


# ----------------------------------------------------------------------------------------------------------------
# The command


def check_destinations(results_dir: str | os.PathLike, leaderboard: str | os.PathLike | None) -> None:
    """Everything a sweep writes, write-tested before its first run: the results dir, the cache, and the
    leaderboard's folder. A bad one was found only after the runs (hours on the paper profile), or made every run
    fail one by one."""
    from benchmark.cache import Cache
    from benchmark.records import check_writable

    try:
        check_writable(results_dir)
    except RecordError as e:
        raise UserError(str(e)) from None
    Cache().check_writable()
    if leaderboard is not None:
        from benchmark.leaderboard import check_output

        check_output(leaderboard)


def cmd_sweep(args: Any) -> int:
    """``python -m benchmark sweep FILE... [options]`` (the arguments are declared in ``benchmark.__main__``)."""
    from benchmark.executors import make_executor

    results_dir = Path(args.results_dir).resolve()  # absolute: workers may start elsewhere
    sweep = load_sweeps(args.files, results_dir=results_dir, skip_unknown=args.skip_unknown,
                        extra_plugins=args.plugin, profile_override=args.profile)
    for u in sweep.unknown:
        print(f"warning: not registered, skipped: {u}", file=sys.stderr)
    if not sweep.runs:
        print("warning: the sweep has no runs (no registered backbone or method matched)", file=sys.stderr)
    if args.dry_run:
        done = finished(sweep.runs, results_dir, progress=not args.no_progress)
        for r in sweep.runs:
            print(f"{'finished' if r.config_hash in done else 'to run  '}  {r.config_hash}  {r.label}")
        print(f"{len(sweep.runs)} runs: {len(done)} finished, {len(sweep.runs) - len(done)} to run")
        return 0
    check_destinations(results_dir, None if args.no_leaderboard else args.leaderboard)
    executor = make_executor(args.executor, plugins=sweep.plugins, jobs=args.jobs, max_retries=args.max_retries,
                             ray_address=args.ray_address, cpus_per_run=args.cpus_per_run,
                             gpus_per_run=args.gpus_per_run, progress=not args.no_progress)
    summary = execute(sweep, executor, results_dir, progress=not args.no_progress, fail_fast=args.fail_fast)
    print(summary.format())
    if summary.interrupted:
        print("interrupted: finished runs keep their records; run the sweep again to do the rest", file=sys.stderr)
        return 130
    if not args.no_leaderboard:
        from benchmark.leaderboard import write_leaderboard

        print(f"leaderboard: {write_leaderboard(results_dir, args.leaderboard)}")
    return 1 if summary.failed else 0
