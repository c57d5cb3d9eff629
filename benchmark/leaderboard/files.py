"""Writing ``leaderboard.md`` and its plots: only files whose bytes changed are rewritten, stale plots removed."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from benchmark.leaderboard.cards import load_cards, render_cards
from benchmark.leaderboard.markdown import render_markdown
from benchmark.leaderboard.plots import render_plot
from benchmark.leaderboard.tables import build_tables
from benchmark.records import load

__all__ = ["write_leaderboard", "check_output"]


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def check_output(output: str | os.PathLike) -> None:
    """Refuse, in one line and before anything is written, a leaderboard path that cannot be written: a directory,
    a path under a file, a read-only folder, or a plot folder (``<dir>/<stem>/``) that is a file."""
    from benchmark.errors import UserError

    output = Path(output)
    plots = output.parent / output.stem
    if output.is_dir():
        raise UserError(f"--output {str(output)!r} is a directory; give the leaderboard's file name (e.g. leaderboard.md)")
    if plots.exists() and not plots.is_dir():
        raise UserError(f"the plot folder {str(plots)!r} of --output {str(output)!r} is a file")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=".write-test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserError(f"--output {str(output)!r}: its folder is not a writable directory ({e.strerror or e})") from None


def write_leaderboard(results_dir: str | os.PathLike = "results", output: str | os.PathLike = "leaderboard.md",
                      cards_dir: str | os.PathLike | None = None) -> Path:
    """Write ``output`` and its plots (``<output dir>/<output stem>/<profile>_<backbone>_<suite>.png``) from the
    records under ``results_dir``, and a section for every suite card under ``cards_dir`` (default: ``tasks/cards``
    beside the results dir, where ``suite-card`` writes them in a checkout); returns the path of ``output``.

    A missing results dir, or one without records, is refused (:class:`UserError`) before anything is written: a
    mistyped ``--results-dir`` must not cut ``leaderboard.md`` to nothing and delete every plot."""
    from benchmark.errors import UserError

    output = Path(output)
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"--results-dir {str(results_dir)!r} is not a directory; the leaderboard was left as it is")
    check_output(output)
    frame = load(results_dir)
    if frame.empty:
        raise UserError(f"--results-dir {str(results_dir)!r} holds no records; the leaderboard was left as it is")
    cards = load_cards(cards_dir if cards_dir is not None else results_dir.resolve().parent / "tasks" / "cards")
    tables = build_tables(frame)
    plot_dir = output.parent / output.stem
    links: dict[str, str] = {}
    written: set[Path] = set()
    for t in tables:
        path = plot_dir / f"{t.slug}.png"
        _write_if_changed(path, render_plot(t))
        written.add(path)
        links[t.slug] = f"{plot_dir.name}/{path.name}"
    if plot_dir.is_dir():  # plots of tables that no longer exist
        for old in sorted(plot_dir.glob("*.png")):
            if old not in written:
                old.unlink()
    rel = Path(os.path.relpath(results_dir.resolve(), output.resolve().parent)).as_posix()
    _write_if_changed(output, render_markdown(tables, links, rel, render_cards(cards)).encode("utf-8"))
    return output
