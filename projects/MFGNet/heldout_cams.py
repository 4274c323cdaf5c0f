#!/usr/bin/env python
"""Held-out-camera check on the real VeRi-776 sample: train on some cameras, rank queries from
cameras never seen in training.

The sample (``$FASTREID_DATASETS/veri``, 4 vehicles) has two cameras per vehicle: one for its
query images and one for its gallery images. This script trains on the 27 *gallery* images only
(cameras c008, c011, c016, c017) and ranks the 30 query images (cameras c002, c005, c012, c015,
never seen in training) against that gallery. With 27 training images and a batch of 16 one epoch
is one iteration. It is a small, noisy check of cross-camera generalisation (4 identities), not a
benchmark: run each setting with two seeds.

Usage (from the repository root)::

    FASTREID_DATASETS=../shared/datasets python projects/MFGNet/heldout_cams.py \
        --config-file configs/demo/mfgnet.yml --seeds 0,1 --epochs 60 [KEY VALUE ...]

Prints one line per seed (untrained and trained mAP / Rank-1) and the mean.
"""

import argparse
import logging
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fastreid_plugins.config import get_cfg  # noqa: E402
from fastreid_plugins.engine import PluginTrainer, set_datasets_root  # noqa: E402
from fastreid_plugins.mbfn import add_mbfn_config  # noqa: E402
from fastreid_plugins.mfgnet import add_mfgnet_config  # noqa: E402


def make_split(src, dst):
    """``dst/veri``: image_train = the sample's gallery images, image_query / image_test as given."""
    veri = os.path.join(dst, "veri")
    os.makedirs(os.path.join(veri, "image_train"))
    for name in ("image_query", "image_test"):
        os.symlink(os.path.join(src, "veri", name), os.path.join(veri, name))
    for f in sorted(os.listdir(os.path.join(src, "veri", "image_test"))):
        os.symlink(os.path.join(src, "veri", "image_test", f), os.path.join(veri, "image_train", f))
    return dst


@torch.no_grad()
def sub_descriptor_maps(cfg, model):
    """mAP of each branch's slice of the test descriptor (global branch, local branch, ...)."""
    from fastreid.utils.compute_dist import build_dist
    from fastreid_plugins.evaluation import metrics_from_distmat
    branches = ([("global", model.global_branch), ("local", model.local_branch)]
                if hasattr(model, "local_branch") else list(model.branches())
                if hasattr(model, "branches") else [])
    branches = [(n, b) for n, b in branches if b is not None]
    if len(branches) < 2:
        return {}
    loader, nq = PluginTrainer.build_test_loader(cfg, cfg.DATASETS.TESTS[0])
    model.eval()
    feats, pids, camids = [], [], []
    for batch in loader:
        feats.append(model(batch))
        pids.append(batch["targets"])
        camids.append(batch["camids"])
    f, p, c = torch.cat(feats), torch.cat(pids).numpy(), torch.cat(camids).numpy()
    out, start, blocks = {}, 0, []

    def m_ap(x):
        d = build_dist(x[:nq], x[nq:], cfg.TEST.METRIC)
        return metrics_from_distmat(d, p[:nq], p[nq:], c[:nq], c[nq:])["mAP"]

    for name, b in branches:
        sl = f[:, start:start + b.out_dim]
        start += b.out_dim
        blocks.append(sl)
        out[name] = m_ap(sl)
    sq = [bl.pow(2).sum(1).mean().item() for bl in blocks]
    out["share_" + branches[-1][0]] = 100 * sq[-1] / sum(sq)       # squared-norm share of the last
    out["branch-normalised concat"] = m_ap(torch.cat([F.normalize(bl) for bl in blocks], 1))
    # last branch's block scaled by 1/sqrt(2): halves its squared-distance contribution
    out["last branch x 0.71"] = m_ap(torch.cat(blocks[:-1] + [blocks[-1] * 0.5 ** 0.5], 1))
    return out


def run(config_file, opts, seed, epochs, out):
    cfg = get_cfg(add_mfgnet_config, add_mbfn_config)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts) + ["MODEL.DEVICE", "cpu", "SOLVER.MAX_EPOCH", str(epochs),
                                      "TEST.EVAL_PERIOD", "1000", "SOLVER.CHECKPOINT_PERIOD", "1000",
                                      "SOLVER.AMP.ENABLED", "False", "OUTPUT_DIR", out])
    cfg.freeze()
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)
    np.random.seed(seed)
    untrained = PluginTrainer.test(cfg, PluginTrainer.build_model(
        PluginTrainer.auto_scale_hyperparams(cfg, 4)))
    torch.manual_seed(seed)
    np.random.seed(seed)
    trainer = PluginTrainer(cfg)
    trainer.resume_or_load(resume=False)
    res = trainer.train()
    res["branches"] = sub_descriptor_maps(cfg, trainer.model)
    return untrained, res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--label", default="")
    p.add_argument("opts", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    a.seeds = [int(x) for x in a.seeds.split(",")]
    torch.set_num_threads(int(os.environ.get("FASTREID_PLUGINS_THREADS", "1")))
    logging.getLogger("fastreid").setLevel(logging.WARNING)
    logging.getLogger("fastreid_plugins").setLevel(logging.WARNING)
    src = os.environ.get("FASTREID_DATASETS", "../shared/datasets")
    with tempfile.TemporaryDirectory() as tmp:
        set_datasets_root(make_split(src, os.path.join(tmp, "data")))
        maps = []
        for s in a.seeds:
            u, r = run(a.config_file, a.opts, s, a.epochs, os.path.join(tmp, f"out{s}"))
            maps.append(r["mAP"])
            print(f"RESULT {a.label or a.config_file} seed {s}: untrained mAP {u['mAP']:.1f} "
                  f"R1 {u['Rank-1']:.1f} -> trained mAP {r['mAP']:.1f} R1 {r['Rank-1']:.1f}; per-branch mAP "
                  + " ".join(f"{k} {v:.1f}" for k, v in r["branches"].items()), flush=True)
        print(f"RESULT {a.label or a.config_file} mean mAP {np.mean(maps):.1f} "
              f"({' '.join(f'{m:.1f}' for m in maps)}) opts={' '.join(a.opts)}", flush=True)


if __name__ == "__main__":
    main()
