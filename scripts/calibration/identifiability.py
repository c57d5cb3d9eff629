"""Calibration probe (issue 13): KNN task identifiability of the tiny pretrained model of an image backbone on a
variant of vision8, in a scratch cache. Usage: python scripts/calibration/identifiability.py VARIANT.py|base [BACKBONE]; VARIANT.py defines apply(vision8_module), which may replace entries of GENERATORS"""
from probe_setup import scratch_backbone  # first: it sets HF_HUB_OFFLINE
import os, time, json
import torch
from safetensors.torch import load_file
from benchmark.suite_card import knn_task_accuracy, EXEMPLARS, CARD_SALT
bb, suite, variant, bbname = scratch_backbone("calib_")
t0 = time.time()
bb.check_suite(); suite.prepare()
bb.load_pretrained(load_file(str(bb.stage_file("pretrain"))))
bb.encoder.eval()
t1 = time.time()
ops = bb.ops_class(bb)
tasks = bb.tasks
keys, kt = [], []
with torch.no_grad():
    for ti, t in enumerate(tasks):
        f = ops.features(None, ops.exemplars(t, EXEMPLARS, 0 * 7919 + CARD_SALT)).float()
        keys.append(f); kt.append(torch.full((len(f),), ti))
    train, tt = torch.cat(keys), torch.cat(kt)
    per, allh, conf = {}, [], {}
    for ti, t in enumerate(tasks):
        x = suite.load(t, "test").inputs
        f = torch.cat([ops.features(None, x[i:i+256]).float() for i in range(0, len(x), 256)])
        h = knn_task_accuracy(train, tt, f, torch.full((len(f),), ti), len(tasks))
        per[t] = round(100 * h.float().mean().item(), 1); allh.append(h)
        # where the misses go: the majority task of each test input's 10 neighbours
        d = torch.cdist(f, train)
        votes = tt[d.topk(10, largest=False).indices]
        pred = torch.stack([torch.bincount(v, minlength=len(tasks)) for v in votes]).argmax(1)
        conf[t] = {tasks[j]: int((pred == j).sum()) for j in range(len(tasks)) if j != ti and (pred == j).any()}
print(json.dumps({"variant": variant, "backbone": bbname, "overall": round(100 * torch.cat(allh).float().mean().item(), 2),
                  "per_task": per, "confusions": conf, "pretrain_s": round(t1 - t0), "total_s": round(time.time() - t0)}))
