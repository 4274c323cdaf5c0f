#!/usr/bin/env python
"""How much of MBFN's descriptor (and triplet distance) Local Branch 2's weighted parts keep.

Trains the demo config on the real VeRi-776 sample (closed set, ``--epochs`` epochs), then on the
57 test images (query + gallery) reports, averaged over images:

* the share of the test descriptor's squared norm held by Local Branch 2's parts, with the paper's
  literal weights (0.3 / 0.4 / 0.3), without weights, and with the "rms"-normalised weights;
* the mean Euclidean distance between images of Local Branch 2's weighted part feature (the
  triplet input, before the BNNeck) next to the triplet margin (1.2), literal and unweighted.

Usage (from the repository root)::

    FASTREID_DATASETS=../shared/datasets python projects/MBFN/weight_share.py --epochs 8
"""

import argparse
import logging
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import torch  # noqa: E402

from fastreid_plugins.config import get_cfg  # noqa: E402
from fastreid_plugins.data import set_datasets_root  # noqa: E402
from fastreid_plugins.engine import PluginTrainer  # noqa: E402
from fastreid_plugins.mbfn import add_mbfn_config  # noqa: E402
from fastreid_plugins.modeling.parts import split_parts  # noqa: E402


@torch.no_grad()
def shares(cfg, model):
    loader, _ = PluginTrainer.build_test_loader(cfg, cfg.DATASETS.TESTS[0])
    model.eval()
    l2 = model.local2
    w = l2.part_weights
    rms = w / w.pow(2).mean().sqrt()
    desc, feats = [], []
    for batch in loader:
        desc.append(model(batch))
        y = l2.feature_map(model.trunk(model.preprocess_image(batch)))
        parts = split_parts(y, l2.num_parts, l2.direction)
        feats.append(torch.stack([h.embed(h.pool(p))[..., 0, 0]
                                  for h, p in zip(l2.part_heads, parts)], 1))
    d, f = torch.cat(desc), torch.cat(feats)                      # (N, D), (N, P, D_part)
    p, dp = l2.num_parts, l2.part_heads[0].out_dim
    tail = d[:, -p * dp:].reshape(len(d), p, dp) / w[None, :, None]   # unweighted BNNeck parts
    head_sq = d[:, :-p * dp].pow(2).sum(1)

    def share(weights):
        t = (tail * weights[None, :, None]).pow(2).sum((1, 2))
        return (t / (t + head_sq)).mean().item() * 100

    def mean_dist(weights):
        x = (f * weights[None, :, None]).flatten(1)
        return torch.pdist(x).mean().item()

    ones = torch.ones_like(w)
    return {"share_literal": share(w), "share_unweighted": share(ones), "share_rms": share(rms),
            "dist_literal": mean_dist(w), "dist_unweighted": mean_dist(ones),
            "dist_rms": mean_dist(rms),
            "weights": w.tolist(), "rms_weights": rms.tolist()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config-file", default="configs/demo/mbfn.yml")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("opts", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("FASTREID_PLUGINS_THREADS", "1")))
    logging.getLogger("fastreid").setLevel(logging.WARNING)
    set_datasets_root(os.environ.get("FASTREID_DATASETS", "datasets"))
    with tempfile.TemporaryDirectory() as out:
        cfg = get_cfg(add_mbfn_config)
        cfg.merge_from_file(a.config_file)
        cfg.merge_from_list(list(a.opts) + ["MODEL.DEVICE", "cpu",
                                            "SOLVER.MAX_EPOCH", str(a.epochs),
                                            "OUTPUT_DIR", out])
        cfg.freeze()
        torch.manual_seed(0)
        untrained = shares(
            cfg, PluginTrainer.build_model(PluginTrainer.auto_scale_hyperparams(cfg, 4)))
        torch.manual_seed(0)
        trainer = PluginTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        trained = shares(cfg, trainer.model)
    margin = cfg.MODEL.LOSSES.TRI.MARGIN
    for name, r in (("untrained", untrained), (f"trained {a.epochs} epochs", trained)):
        print(f"{name}: Local Branch 2 parts' share of the descriptor's squared norm: literal "
              f"{r['share_literal']:.1f}%, unweighted {r['share_unweighted']:.1f}%, rms "
              f"{r['share_rms']:.1f}%; mean distance of the weighted part feature: literal "
              f"{r['dist_literal']:.2f}, unweighted {r['dist_unweighted']:.2f}, rms "
              f"{r['dist_rms']:.2f} (triplet margin {margin})")


if __name__ == "__main__":
    main()
