"""Calibration probe (issue 13): the whole suite card of a tiny image backbone on a variant of vision8, built in a
scratch cache. Usage: python scripts/calibration/card.py VARIANT.py|base [BACKBONE] (as identifiability.py)"""
import importlib.util, os, sys, tempfile, time, json
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
variant = sys.argv[1]
bbname = sys.argv[2] if len(sys.argv) > 2 else "clip_vit_b32"
import tasks.vision8 as v8
if variant != "base":
    spec = importlib.util.spec_from_file_location("variant", variant)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    mod.apply(v8)
from benchmark.cache import Cache
from benchmark.registry import BACKBONES, SUITES
from benchmark.suite_card import measure, check
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
cache = Cache(tempfile.mkdtemp(prefix="calibcard_"))
suite = SUITES.get("vision8").obj(profile="tiny", seed=0, cache=cache, progress=False)
bb = BACKBONES.get(bbname).obj(profile="tiny", suite=suite, seed=0, cache=cache, progress=False)
t0 = time.time()
card = measure(bb)
card.update(backbone=bbname, variant=variant, total_s=round(time.time() - t0))
print(json.dumps(card, default=float))
for name, value, bound, ok in check(card):
    print(f"{name}: {value:.2f} (>= {bound}) {'met' if ok else 'NOT MET'}")
