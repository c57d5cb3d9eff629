"""Calibration probe (issue 13): the whole suite card of a tiny image backbone on a variant of vision8, built in a
scratch cache. Usage: python scripts/calibration/card.py VARIANT.py|base [BACKBONE] (as identifiability.py)"""
from probe_setup import scratch_backbone  # first: it sets HF_HUB_OFFLINE
import os, time, json
import torch
from benchmark.suite_card import measure, check
bb, suite, variant, bbname = scratch_backbone("calibcard_")
t0 = time.time()
card = measure(bb)
card.update(backbone=bbname, variant=variant, total_s=round(time.time() - t0))
print(json.dumps(card, default=float))
for name, value, bound, ok in check(card):
    print(f"{name}: {value:.2f} (>= {bound}) {'met' if ok else 'NOT MET'}")
