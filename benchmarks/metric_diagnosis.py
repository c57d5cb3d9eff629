"""Why does Auto-FlexSwitch's learned metric (auto-flexswitch.txt Eq. 18-19) change routing accuracy or not?

Routing only, no switch training: on a backbone's pretrained routing features f_ex it builds what Auto-FlexSwitch
builds (N exemplars per task at salt 0, E K-means centres per task, L trained on Eq. 19 at the method's defaults,
through the method's own public functions) and prints, side by side:

* Eq. 19 on the training exemplars (what L is trained on) and on held-out train exemplars (another draw, salt 7),
  before and after training: a gap says L fits the training points rather than the tasks;
* routing accuracy on the test split of plain Euclidean KNN over every exemplar (Auto-Switch), of Euclidean KNN
  over the centres, and of KNN over the centres under the learned L (Auto-FlexSwitch);
* the share of test features' variance along L's rows against the centres' top principal directions (L starts
  from the latter): how far training moved L.

    .venv/bin/python benchmarks/metric_diagnosis.py --backbone clip_vit_b32 [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.cache import Cache  # noqa: E402
from benchmark.contract import Pool  # noqa: E402
from benchmark.routing import exemplar_features, knn_route, routing_features  # noqa: E402
from benchmark.runner import RunSpec, make_backbone, resolve  # noqa: E402
from methods.auto_flexswitch import kmeans_centres, metric_loss, pca_init, train_metric  # noqa: E402


def accuracy(route, feats: dict[str, torch.Tensor], tasks: list[str]) -> float:
    hits = n = 0
    for ti, t in enumerate(tasks):
        w = route(feats[t])
        hits += int((w.argmax(1) == ti).sum())
        n += w.shape[0]
    return 100.0 * hits / max(n, 1)


def diagnose(backbone_name: str, seed: int = 0, cache_root: str | None = None) -> dict:
    spec = RunSpec(method="auto_flexswitch", backbone=backbone_name, seed=seed, progress=False,
                   **({"cache_root": cache_root} if cache_root else {}))
    res = resolve(spec)
    p = res.params
    backbone = make_backbone(res, Cache(spec.cache_root))
    backbone.prepare()
    tasks = backbone.tasks
    pool = Pool(tasks=tasks, pretrained=backbone.pretrained_state(), finetuned={}, ops=backbone.ops(), seed=seed,
                progress=False)
    n, c = p["n_exemplars"], p["neighbours"]
    feats, labels = exemplar_features(pool, n)
    held, held_labels = exemplar_features(pool, n, salt=7)
    cents = [kmeans_centres(feats[labels == ti], p["centres"], seed * 31 + ti) for ti in range(len(tasks))]
    centres = torch.cat(cents)
    centre_labels = torch.cat([torch.full((x.shape[0],), ti, dtype=torch.long) for ti, x in enumerate(cents)])
    torch.manual_seed(seed)
    L, hist = train_metric(feats, labels, centres, centre_labels, p["rank"], p["metric_lr"], p["metric_epochs"], c)
    L0 = pca_init(centres, min(p["rank"], feats.shape[1]))
    test = {}
    with torch.no_grad():
        for t in tasks:
            test[t] = torch.cat([routing_features(pool.ops, None, x).float() for x, _ in backbone.batches(t, "test", 256)])
    k = len(tasks)
    flat_test = torch.cat([f.reshape(-1, f.shape[-1]) for f in test.values()])
    var_total = float(((flat_test - flat_test.mean(0)) ** 2).sum())

    def captured(M: torch.Tensor) -> float:  # share of test variance in the row space of M
        q = torch.linalg.qr(M.T)[0]
        x = flat_test - flat_test.mean(0)
        return 100.0 * float(((x @ q) ** 2).sum()) / var_total

    out = {
        "backbone": backbone_name,
        "feature_dim": int(feats.shape[1]),
        "rank": int(L.shape[0]),
        "eq19_train": {"before": hist[0] if hist else None, "after": float(metric_loss(L, feats, labels, centres, centre_labels, c))},
        "eq19_heldout": {"before": float(metric_loss(L0, held, held_labels, centres, centre_labels, c)),
                         "after": float(metric_loss(L, held, held_labels, centres, centre_labels, c))},
        "routing_accuracy": {
            "plain_knn": accuracy(lambda f: knn_route(f, feats, labels, k, c), test, tasks),
            "centres_euclidean": accuracy(lambda f: knn_route(f, centres, centre_labels, k, c, exact=False), test, tasks),
            "centres_pca_init": accuracy(lambda f: knn_route(f, centres @ L0.T, centre_labels, k, c, project=L0, exact=False), test, tasks),
            "learned_metric": accuracy(lambda f: knn_route(f, centres @ L.T, centre_labels, k, c, project=L, exact=False), test, tasks),
        },
        "test_variance_captured": {"pca_init": captured(L0), "learned": captured(L)},
        "L_moved": float((L - L0).norm() / L0.norm()),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-root", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = diagnose(args.backbone, args.seed, args.cache_root)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{out['backbone']}: features e={out['feature_dim']}, rank r={out['rank']}, |L - L0|/|L0| = {out['L_moved']:.3f}")
    for name in ("eq19_train", "eq19_heldout"):
        print(f"  {name:14s} before {out[name]['before']:.4f}  after {out[name]['after']:.4f}")
    for name, v in out["routing_accuracy"].items():
        print(f"  routing {name:18s} {v:6.2f}%")
    tv = out["test_variance_captured"]
    print(f"  test variance in L's span: PCA init {tv['pca_init']:.1f}%, learned {tv['learned']:.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
