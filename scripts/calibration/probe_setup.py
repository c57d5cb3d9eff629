"""What the calibration probes share: vision8 with an optional variant applied (VARIANT.py defines
apply(vision8_module), which may replace entries of GENERATORS) and a tiny image backbone on it in a scratch cache.
Usage of every probe: python scripts/calibration/PROBE.py VARIANT.py|base [BACKBONE]."""
import importlib.util
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402


def scratch_backbone(prefix: str):
    """``(backbone, suite, variant, backbone name)`` from ``sys.argv``, in a new scratch cache."""
    import tasks.vision8 as v8
    from benchmark.cache import Cache
    from benchmark.registry import BACKBONES, SUITES

    variant = sys.argv[1]
    name = sys.argv[2] if len(sys.argv) > 2 else "clip_vit_b32"
    if variant != "base":
        spec = importlib.util.spec_from_file_location("variant", variant)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mod.apply(v8)
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    cache = Cache(tempfile.mkdtemp(prefix=prefix))
    suite = SUITES.get("vision8").obj(profile="tiny", seed=0, cache=cache, progress=False)
    bb = BACKBONES.get(name).obj(profile="tiny", suite=suite, seed=0, cache=cache, progress=False)
    return bb, suite, variant, name
