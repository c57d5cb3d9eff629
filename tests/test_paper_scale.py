"""benchmarks/paper_scale.py end to end at toy size: stand-ins written in the hub layout, the real CLI run on them in
a subprocess, the merge-time comparisons and the routed ratios; the ``--json`` line has every promised key."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ is not an installed package

pytest.importorskip("transformers")
pytest.importorskip("datasets")
if importlib.util.find_spec("fusion_bench") is None:  # paper_scale imports it itself, when it needs it
    pytest.skip("fusion-bench is not installed", allow_module_level=True)

from benchmarks import paper_scale as ps  # noqa: E402
from benchmarks import routed_inference  # noqa: E402

TOY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=8,
                  image_size=32, projection_dim=16)
TOY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
TOY = {
    "models": {"clip_vit_b32": (TOY_VISION, TOY_TEXT), "clip_vit_l14": (dict(TOY_VISION, patch_size=16), TOY_TEXT)},
    "images": {"train": 10, "test": 2}, "classes": 2,
    "ties_params": 1e5, "ties_tasks": 8, "fb_tasks": 4, "bandwidth_mib": 16, "repeats": 1, "quick": True,
}
TOY_ROUTED = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, patch_size=16,
                  image_size=32, projection_dim=16)


def _vision_params(c: dict) -> int:
    """Parameters of a transformers CLIP vision tower, counted by hand."""
    h, i, p, s = c["hidden_size"], c["intermediate_size"], c["patch_size"], c["image_size"]
    embeddings = h + 3 * p * p * h + ((s // p) ** 2 + 1) * h
    layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h
    return embeddings + 2 * h + c["num_hidden_layers"] * layer + 2 * h


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_quick_json_has_every_key(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(ps.SIZES, "quick", TOY)
    monkeypatch.setattr(routed_inference, "CLIP_B32_PAPER", TOY_ROUTED)
    argv = ["--quick", "--json", "--workdir", str(tmp_path), "--methods", "ties", "--threads", "1"]
    assert ps.main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert set(out["peak_copies"]) == {"ties"} and out["peak_copies_model"] == "clip_vit_l14"
    assert all(_positive(v) for v in out["peak_copies"].values())
    assert _positive(out["ties_vs_bandwidth_bound"])
    assert _positive(out["ties_vs_fusion_bench"])
    assert out["ties_fusion_bench_identical"] is True
    assert set(out["routed_ratio"]) == {"batch", "sample", "early_layer"}
    assert all(_positive(v) for v in out["routed_ratio"].values())
    rss = out["detail"]["rss"][0]
    assert rss["copy_bytes"] == 4 * _vision_params(rss["vision"])
    assert out["peak_copies"]["ties"] == rss["methods"]["ties"]["peak_rss_bytes"] / rss["copy_bytes"]
    # the stand-ins are cached: a second pass finds the markers and writes nothing
    models = tmp_path / "quick" / "models"
    stamp = {p: p.stat().st_mtime_ns for p in models.rglob("*.safetensors")}
    assert stamp
    vision, text = TOY["models"]["clip_vit_l14"]
    ps.write_models(models, "clip_vit_l14", vision, text)
    assert {p: p.stat().st_mtime_ns for p in models.rglob("*.safetensors")} == stamp
