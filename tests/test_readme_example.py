"""The README's "Adding a method" example is the real contract: extracted from README.md, registered from a
temporary module and run end to end through the runner (so the README cannot drift from the code)."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import torch

import _toy_backbone  # noqa: F401  (registers toy_linear / toy_blobs)
from benchmark.registry import METHODS
from benchmark.runner import RunSpec, run
from benchmark.storage import read_artifacts

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    section = README.read_text(encoding="utf-8").split("## Adding a method", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_method_example_registers_and_runs(tmp_path):
    code = readme_example()
    assert "@METHODS.register(\"my_merge\"" in code and "pool.iter_task_vectors()" in code
    path = tmp_path / "readme_my_merge.py"
    path.write_text(code, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("readme_my_merge", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        plugin = METHODS.get("my_merge")
        assert plugin.paper_rows == ("My-Merge",) and plugin.order == 95 and plugin.obj.kind == "static"
        rec, _ = run(RunSpec(method="my_merge", backbone="toy_linear", results_dir=str(tmp_path / "results"),
                             cache_root=str(tmp_path / "cache"), progress=False, overrides={"lam": 0.5}))
        assert rec["method"] == "my_merge" and rec["params"] == {"lam": 0.5} and rec["storage_bytes"] > 0
        # what it stored is task arithmetic, computed here independently from the toy pool
        from _toy_pool import toy_pool

        pool = toy_pool(seed=0)
        stored = read_artifacts(tmp_path / "cache" / "artifacts" / f"{rec['run_id']}.safetensors")["merged"]
        for k, base in pool.pretrained.items():
            want = base + 0.5 * sum(pool.finetuned[t][k] - base for t in pool.tasks)
            torch.testing.assert_close(stored[k], want, rtol=0, atol=1e-6)
        assert rec["average"] > 0
    finally:
        METHODS.unregister("my_merge")
        sys.modules.pop("readme_my_merge", None)
