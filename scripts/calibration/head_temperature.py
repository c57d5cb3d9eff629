"""Probe (issue 13, the entropy premise): on the cached tiny build, Task Arithmetic at lambda 0.3, the Spearman of
entropy and loss when the heads' logit scale is multiplied by a (post-hoc: the fine-tunes were trained at 1x), and
how confident right and wrong predictions are."""
import os, sys, json
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch, torch.nn.functional as F
from benchmark.cache import Cache
from benchmark.registry import BACKBONES, SUITES
from benchmark.suite_card import spearman, _add, TA_LAMBDA
name = sys.argv[1] if len(sys.argv) > 1 else "clip_vit_b32"
cache = Cache()
meta = BACKBONES.get(name).meta
suite = SUITES.get(meta["default_suite"]).obj(profile="tiny", seed=0, cache=cache, progress=False)
bb = BACKBONES.get(name).obj(profile="tiny", suite=suite, seed=0, cache=cache, progress=False)
bb.prepare()
ops = bb.ops()
pre = bb.pretrained_state()
tvs = [{k: v - pre[k] for k, v in bb.finetuned_state(t).items()} for t in bb.tasks]
w = _add(pre, tvs, TA_LAMBDA)
L, Y = {}, {}
with torch.no_grad():
    for t in bb.tasks:
        ls, ys = [], []
        for x, y in bb.batches(t, "test", 256):
            ls.append(ops.logits(t, w, x).float()); ys.append(torch.as_tensor(y).long())
        L[t], Y[t] = torch.cat(ls), torch.cat(ys)
out = {}
for a in (1.0, 0.5, 0.33, 0.2, 0.1, 0.05):
    E, C, per, conf = [], [], {}, {}
    for t in bb.tasks:
        lp = F.log_softmax(L[t] * a, -1)
        e = -(lp.exp() * lp).sum(-1); c = F.nll_loss(lp, Y[t], reduction="none")
        right = lp.argmax(-1) == Y[t]
        per[t] = round(spearman(e, c), 3)
        conf[t] = (round(float(e[right].mean()), 2) if right.any() else None, round(float(e[~right].mean()), 2) if (~right).any() else None, round(100 * float(right.float().mean()), 1))
        E.append(e); C.append(c)
    out[a] = {"pooled": round(spearman(torch.cat(E), torch.cat(C)), 3), "per_task": per, "entropy right/wrong/acc": conf}
    print(a, json.dumps(out[a]), flush=True)
