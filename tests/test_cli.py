"""The CLI: user mistakes give one line naming the valid choices, exit 2, and no traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.__main__ import main

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["run", "--method", "nope", "--backbone", "clip_vit_b32"], "unknown method 'nope'; valid: "),
        (["run", "--method", "pretrained", "--backbone", "nope"], "unknown backbone 'nope'; valid: "),
        (["run", "--method", "pretrained", "--backbone", "x", "--profile", "huge"], "unknown profile 'huge'; valid: tiny, paper, micro"),
        (["run", "--method", "pretrained", "--backbone", "x", "--set", "alpha=1"], "has no parameter 'alpha'"),
        (["run", "--method", "pretrained", "--backbone", "x", "--set", "alpha"], "--set expects key=value"),
        (["run", "--backbone", "x"], "the following arguments are required: --method"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["list", "gizmos"], "invalid choice: 'gizmos'"),
        (["run", "--method", "task_arithmetic", "--backbone", "clip_vit_b32", "--set", "scaling_coef=nan"],
         "'scaling_coef' must be a finite number; got 'nan'"),
        (["run", "--method", "task_arithmetic", "--backbone", "clip_vit_b32", "--set", "scaling_coef=inf"],
         "'scaling_coef' must be a finite number; got 'inf'"),
        (["run", "--method", "pretrained", "--backbone", "clip_vit_b32", "--seed", str(2**32)],
         "--seed must be an integer in [0, 2^32); got 4294967296"),
        (["run", "--method", "pretrained", "--backbone", "clip_vit_b32", "--seed", "-1"], "in [0, 2^32); got -1"),
        (["suite-card", "--backbone", "clip_vit_b32", "--seed", "-3"], "in [0, 2^32); got -3"),
        (["export", "--format", "xml"], "invalid choice: 'xml'"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_no_traceback_from_a_real_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark", "run", "--method", "nope", "--backbone", "x", "--results-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown method 'nope'; valid: ")
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # validation happens before any work


def test_list_shows_every_kind_with_parameters(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for heading in ("methods:", "backbones:", "suites:", "codecs:", "profiles:"):
        assert heading in out
    assert "pretrained [reference]" in out and "individual [reference]" in out
    assert "--set dtype: str = 'natural'" in out
