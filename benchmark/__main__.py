"""``python -m benchmark``: list, run, sweep, select, leaderboard, export, suite-card.

User mistakes (unknown names, bad parameters, missing files) print one line on stderr and exit 2, with no
traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from benchmark.errors import StorageError, UserError
from benchmark.registry import BACKBONES, CODECS, METHODS, SUITES, RegistryError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        raise UserError(f"{self.prog}: {message}")


def _number(kind: type, lo: float, strict: bool = False):
    """An argparse type: a finite ``kind`` >= ``lo`` (> ``lo`` when ``strict``). NaN and infinity are refused like
    any other bad value (they reached records as non-JSON ``NaN``/``Infinity``)."""
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects {'an integer' if kind is int else 'a number'}, got {text!r}")
        if v != v or v in (float("inf"), float("-inf")) or v < lo or (strict and v == lo):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>' if strict else '>='} {lo:g}, got {text!r}")
        return v
    parse.__name__ = kind.__name__
    return parse


def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def cmd_list(args: argparse.Namespace) -> int:
    from benchmark.profiles import PROFILES

    def show(title: str, plugins: list) -> None:
        print(f"{title}:")
        for p in plugins:
            extra = ""
            if p.kind == "method":
                extra = f" [{'reference' if getattr(p.obj, 'reference', False) else p.obj.kind}]"
            if p.kind == "backbone":
                suites = ", ".join(p.meta.get("suites", ()))
                extra = (f" [kind: {p.meta.get('task_kind', 'unstated')}; suites: {suites};"
                         f" default {p.meta.get('default_suite')}]")
            print(f"  {p.name}{extra}: {p.summary}")
            if p.paper:
                print(f"      paper: {p.paper}")
            kinds = p.kind_defaults
            for prm in p.params:
                per_kind = [f"{k}: {kd.values[prm.name]!r}" for k, kd in kinds.items() if prm.name in kd.values]
                print(f"      --set {prm.describe()}" + (f"  [default on {'; '.join(per_kind)}]" if per_kind else ""))
            for k, kd in kinds.items():
                vals = ", ".join(f"{n}={v!r}" for n, v in kd.values.items())
                print(f"      defaults on {k} backbones: {vals} ({kd.source})")
        print()

    want = args.what
    if want in (None, "methods"):
        show("methods", METHODS.plugins())
    if want in (None, "backbones"):
        show("backbones", BACKBONES.plugins())
    if want in (None, "suites"):
        show("suites", SUITES.plugins())
    if want in (None, "codecs"):
        show("codecs", CODECS.plugins())
    if want in (None, "profiles"):
        print("profiles:")
        for name, text in PROFILES.items():
            print(f"  {name}: {text}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark.runner import RunSpec, format_table, resolve, run

    spec = RunSpec(
        method=args.method,
        backbone=args.backbone,
        suite=args.suite,
        profile=args.profile,
        seed=args.seed,
        overrides=_parse_sets(args.set or []),
        results_dir=args.results_dir,
        progress=not args.no_progress,
        eval_val=args.eval_val,
    )
    resolve(spec)  # fail fast on bad input, before loading anything
    record, path = run(spec)
    print(format_table(record))
    print(f"record: {path}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from benchmark.leaderboard import write_leaderboard

    from pathlib import Path

    if args.grid:  # the protocol's grids must be complete and val-scored before a table claims a selection
        from benchmark.records import load_records
        from benchmark.selection import select_grids
        from benchmark.sweep import load_sweeps

        if not Path(args.results_dir).is_dir():
            raise UserError(f"--results-dir {args.results_dir!r} is not a directory; the leaderboard was left as it is")
        sweep = load_sweeps(args.grid, results_dir=Path(args.results_dir).resolve())
        select_grids(sweep, load_records(args.results_dir), ", ".join(args.grid))
    if args.cards_dir is not None and not Path(args.cards_dir).is_dir():
        raise UserError(f"--cards-dir {args.cards_dir!r} is not a directory; the leaderboard was left as it is")
    out = write_leaderboard(args.results_dir, args.output, args.cards_dir)
    print(f"leaderboard: {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from benchmark.records import load

    if not Path(args.results_dir).is_dir():
        raise UserError(f"--results-dir {args.results_dir!r} is not a directory")
    fmt = args.format or {".parquet": "parquet"}.get(Path(args.output or "").suffix, "csv")
    out = Path(args.output or f"results.{fmt}")
    if out.is_dir():
        raise UserError(f"--output {str(out)!r} is a directory; give the table's file name")
    if not out.parent.is_dir():
        raise UserError(f"--output {str(out)!r}: its folder {str(out.parent)!r} is not a directory")
    frame = load(args.results_dir)
    if frame.empty:
        raise UserError(f"--results-dir {args.results_dir!r} holds no records; nothing to export")
    tmp = out.with_name(f".{out.name}.tmp")  # a reader never sees half a table
    if fmt == "csv":
        frame.to_csv(tmp, index=False)
    else:
        frame.to_parquet(tmp, index=False)
    os.replace(tmp, out)
    print(f"export: {len(frame)} rows ({frame['run_id'].nunique()} runs) -> {out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from benchmark.sweep import cmd_sweep as run_sweep

    return run_sweep(args)


def cmd_select(args: argparse.Namespace) -> int:
    from benchmark.selection import cmd_select as run_select

    return run_select(args)


def cmd_suite_card(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from benchmark.cache import Cache
    from benchmark.records import atomic_write_text
    from benchmark.runner import RunSpec, make_backbone, resolve
    from benchmark.suite_card import format_card, measure

    # the card measures the suite, not a method: 'pretrained' only makes resolve() check backbone, suite, profile
    spec = RunSpec(method="pretrained", backbone=args.backbone, suite=args.suite, profile=args.profile,
                   seed=args.seed, progress=not args.no_progress)
    res = resolve(spec)
    out_dir = Path(args.output_dir)
    try:  # before minutes of work, not after
        atomic_write_text(out_dir / ".write-test", "")
        (out_dir / ".write-test").unlink()
    except OSError as e:
        raise UserError(f"--output-dir {args.output_dir!r} is not a writable directory ({e.strerror})") from None
    card = measure(make_backbone(res, Cache()), progress=spec.progress)
    out = out_dir / f"{card['suite']}-{card['backbone']}-{card['profile']}-s{card['seed']}.json"
    atomic_write_text(out, json.dumps(card, indent=1, sort_keys=True) + "\n")
    print(json.dumps(card, sort_keys=True) if args.json else f"{format_card(card)}\ncard: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m benchmark", description="merge-bench: model merging, accuracy against storage")
    sub = p.add_subparsers(dest="command", parser_class=_Parser,
                           metavar="{list,run,sweep,select,leaderboard,export,suite-card}")
    sub.required = True

    pl = sub.add_parser("list", help="methods, backbones, suites, codecs and profiles with their parameters")
    pl.add_argument("what", nargs="?", choices=["methods", "backbones", "suites", "codecs", "profiles"])
    pl.set_defaults(func=cmd_list)

    pr = sub.add_parser("run", help="run one method on one backbone's suite")
    pr.add_argument("--method", required=True)
    pr.add_argument("--backbone", required=True)
    pr.add_argument("--suite", default=None, help="default: the backbone's default suite")
    pr.add_argument("--profile", default="tiny", help="tiny (default) or paper")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--set", action="append", metavar="KEY=VALUE", help="a method parameter; repeatable")
    pr.add_argument("--results-dir", default="results")
    pr.add_argument("--no-progress", action="store_true", help="no progress bars")
    pr.add_argument("--eval-val", action="store_true", help="also score the val split (for selection)")
    pr.set_defaults(func=cmd_run)

    ps = sub.add_parser("sweep", help="run the (method x grid x backbone x seed) runs of sweep files; resumable")
    ps.add_argument("files", nargs="+", metavar="SWEEP.yaml", help="sweep files (format: benchmark/sweep.py)")
    ps.add_argument("--executor", choices=["local", "ray"], default="local")
    ps.add_argument("--jobs", type=_number(int, 1), default=None,
                    help="local: runs at a time, each in its own process (default 1: in this process); "
                         "ray: CPUs of the local Ray instance")
    ps.add_argument("--results-dir", default="results")
    ps.add_argument("--profile", default=None, help="run every group on this profile instead of the file's")
    ps.add_argument("--skip-unknown", action="store_true",
                    help="skip methods/backbones/suites that are not registered (named in a warning)")
    ps.add_argument("--fail-fast", action="store_true", help="stop at the first failed run")
    ps.add_argument("--max-retries", type=_number(int, 0), default=2,
                    help="re-runs of a run whose worker process died (ray, --jobs N); exceptions are never retried")
    ps.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local instance)")
    ps.add_argument("--cpus-per-run", type=_number(float, 0, strict=True), default=1.0, help="ray: CPUs each run asks for")
    ps.add_argument("--gpus-per-run", type=_number(float, 0), default=None, help="ray: GPUs each run asks for (default: 1 on "
                                                                     "the paper profile, else 0)")
    ps.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                    help="import this module first (out-of-tree plugins); repeatable")
    ps.add_argument("--dry-run", action="store_true", help="list the runs and whether each is finished; run nothing")
    ps.add_argument("--leaderboard", default="leaderboard.md", metavar="PATH", help="regenerated at the end")
    ps.add_argument("--no-leaderboard", action="store_true", help="do not regenerate the leaderboard")
    ps.add_argument("--no-progress", action="store_true", help="no progress bar")
    ps.set_defaults(func=cmd_sweep)

    pq = sub.add_parser("select", help="each method's setting of a sweep's grids selected on val (never test)")
    pq.add_argument("files", nargs="+", metavar="SWEEP.yaml", help="sweep files with grids (select_by: val)")
    pq.add_argument("--results-dir", default="results")
    pq.add_argument("--skip-unknown", action="store_true", help="skip names that are not registered")
    pq.set_defaults(func=cmd_select)

    pb = sub.add_parser("leaderboard", help="regenerate leaderboard.md (and its plots) from the records")
    pb.add_argument("--results-dir", default="results")
    pb.add_argument("--output", default="leaderboard.md")
    pb.add_argument("--cards-dir", default=None, metavar="DIR",
                    help="suite cards to show (default: tasks/cards beside the results dir)")
    pb.add_argument("--grid", action="append", default=[], metavar="SWEEP.yaml",
                    help="refuse (one line) unless every grid of this sweep file is run with val scores; repeatable")
    pb.set_defaults(func=cmd_leaderboard)

    pe = sub.add_parser("export", help="the records as one table (one row per run x split x task)")
    pe.add_argument("--format", choices=["csv", "parquet"], default=None,
                    help="default: parquet if --output ends in .parquet, else csv")
    pe.add_argument("--results-dir", default="results")
    pe.add_argument("--output", default=None, help="default: results.csv or results.parquet")
    pe.set_defaults(func=cmd_export)

    pc = sub.add_parser("suite-card", help="measure a suite's properties on a backbone's models (no method involved)")
    pc.add_argument("--backbone", required=True)
    pc.add_argument("--suite", default=None, help="default: the backbone's default suite")
    pc.add_argument("--profile", default="tiny", help="tiny (default) or paper")
    pc.add_argument("--seed", type=int, default=0)
    pc.add_argument("--output-dir", default="tasks/cards",
                    help="where the card's JSON is written (default tasks/cards: a card belongs to its suite)")
    pc.add_argument("--json", action="store_true", help="print the card as one JSON object")
    pc.add_argument("--no-progress", action="store_true", help="no progress bars")
    pc.set_defaults(func=cmd_suite_card)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    from benchmark.cache import CacheWarning
    from benchmark.records import RecordError, RecordWarning

    show = warnings.showwarning

    def one_line(message, category, *a, **k):  # a skipped record, a rebuilt cache entry: one line, no source excerpt
        if issubclass(category, (RecordWarning, CacheWarning)):
            print(f"warning: {message}", file=sys.stderr)
        else:
            show(message, category, *a, **k)

    if not getattr(warnings.showwarning, "one_line", False):
        one_line.one_line = True
        warnings.showwarning = one_line
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except RegistryError as e:  # UserError is one
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RecordError as e:  # e.g. a rerun whose scores differ from its record: said in one line, both kept
        print(f"error: {e}", file=sys.stderr)
        return 1
    except StorageError as e:  # an artifact file that does not read back as written: refused, in one line
        print(f"error: {e}", file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(f"error: file not found: {e.filename or e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user gave that the system refuses (a file for a folder, no permission, ...)
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no record was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
