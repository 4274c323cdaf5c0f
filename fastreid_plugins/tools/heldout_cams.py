#!/usr/bin/env python
"""Held-out-camera check on the real VeRi-776 sample: train on some cameras, rank queries from
cameras never seen in training.

The sample (``$FASTREID_DATASETS/veri``, 4 vehicles) has two cameras per vehicle: one for its
query images and one for its gallery images, 8 different cameras in all. Two folds:

* ``forward``: train on the 27 *gallery* images (cameras c008, c011, c016, c017) and rank the 30
  query images (cameras c002, c005, c012, c015, never seen in training) against them;
* ``reverse``: train on the 30 query images and rank the 27 gallery images against them.

In both the gallery is the training images and no query camera occurs in training. With 27-30
training images and a batch of 16 one epoch is one iteration. It is a small, noisy check of
cross-camera generalisation (4 identities; single runs vary by 10-20 mAP points), not a benchmark:
compare settings over several seeds and both folds (mean +- standard error is printed).

Usage (from the repository root; ``projects/MFGNet/heldout_cams.py`` runs the same)::

    FASTREID_DATASETS=../shared/datasets python -m fastreid_plugins.tools.heldout_cams \
        --config-file configs/demo/mfgnet.yml --fold both --seeds 0-5 --epochs 60 [KEY VALUE ...]

Prints one line per run (untrained and trained mAP / Rank-1, the descriptor's mAP under cosine and
Euclidean distance, each branch's slice), the mean +- s.e. per fold and, with ``--fold both``, the
mean of the fold means.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:
    from fastreid.config import CfgNode
    from torch import nn

__all__ = ["FOLDS", "make_split", "sub_descriptor_maps", "run", "mean_se", "main"]


FOLDS = {
    # fold: (folder whose images train and form the gallery, folder of the unseen-camera queries)
    "forward": ("image_test", "image_query"),   # train on the 27 gallery-camera images
    "reverse": ("image_query", "image_test"),   # train on the 30 query-camera images
}


def make_split(src: str, dst: str, fold: str = "forward") -> str:
    """``dst/veri`` for one fold: image_train = image_test = the training cameras' images (the
    gallery), image_query = the other cameras' images (never seen in training).

    Each vehicle of the sample has one query camera and one gallery camera, and the 8 cameras are
    all different, so in both folds no query camera occurs in training; the gallery is the training
    images themselves (the same design in both directions).
    """
    train, query = FOLDS[fold]
    veri = os.path.join(dst, "veri")
    os.makedirs(os.path.join(veri, "image_train"))
    os.symlink(os.path.join(src, "veri", query), os.path.join(veri, "image_query"))
    os.symlink(os.path.join(src, "veri", train), os.path.join(veri, "image_test"))
    for f in sorted(os.listdir(os.path.join(src, "veri", train))):
        os.symlink(os.path.join(src, "veri", train, f), os.path.join(veri, "image_train", f))
    return dst


def sub_descriptor_maps(cfg: CfgNode, model: nn.Module) -> Dict[str, float]:
    """mAP of the whole descriptor under both metrics, and of each branch's slice of it (global
    branch, local branch, ...) under ``TEST.METRIC``; the same trained model, one forward pass."""
    import torch

    with torch.no_grad():
        return _sub_descriptor_maps(cfg, model)


def _sub_descriptor_maps(cfg, model):
    import torch
    import torch.nn.functional as F
    from fastreid.utils.compute_dist import build_dist

    from fastreid_plugins.engine import PluginTrainer
    from fastreid_plugins.evaluation import metrics_from_distmat
    branches = ([("global", model.global_branch), ("local", model.local_branch)]
                if hasattr(model, "local_branch") else list(model.branches())
                if hasattr(model, "branches") else [])
    branches = [(n, b) for n, b in branches if b is not None]
    loader, nq = PluginTrainer.build_test_loader(cfg, cfg.DATASETS.TESTS[0])
    model.eval()
    feats, pids, camids = [], [], []
    for batch in loader:
        feats.append(model(batch))
        pids.append(batch["targets"])
        camids.append(batch["camids"])
    f, p, c = torch.cat(feats), torch.cat(pids).numpy(), torch.cat(camids).numpy()
    out, start, blocks = {}, 0, []

    def m_ap(x, metric=cfg.TEST.METRIC):
        d = build_dist(x[:nq], x[nq:], metric)
        return metrics_from_distmat(d, p[:nq], p[nq:], c[:nq], c[nq:])["mAP"]

    for metric in ("cosine", "euclidean"):
        out[metric] = m_ap(f, metric)
    if len(branches) < 2:
        return out
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


def run(config_file: str, opts: Sequence[str], seed: int, epochs: int,
        out: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Train ``config_file`` (+ ``opts``) for ``epochs`` epochs on the split the datasets root
    points at (:func:`make_split`); returns (untrained metrics, trained metrics with the
    per-branch mAPs of :func:`sub_descriptor_maps` under ``"branches"``)."""
    from fastreid_plugins.activation import activate
    from fastreid_plugins.config import get_cfg
    from fastreid_plugins.engine import PluginTrainer
    from fastreid_plugins.mbfn import add_mbfn_config
    from fastreid_plugins.mfgnet import add_mfgnet_config
    from fastreid_plugins.seeding import seed_all

    activate()
    cfg = get_cfg(add_mfgnet_config, add_mbfn_config)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts) + ["MODEL.DEVICE", "cpu", "SOLVER.MAX_EPOCH", str(epochs),
                                      "TEST.EVAL_PERIOD", "1000",
                                      "SOLVER.CHECKPOINT_PERIOD", "1000",
                                      "SOLVER.AMP.ENABLED", "False", "OUTPUT_DIR", out])
    cfg.freeze()
    os.makedirs(out, exist_ok=True)
    seed_all(seed)
    untrained = PluginTrainer.test(cfg, PluginTrainer.build_model(
        PluginTrainer.auto_scale_hyperparams(cfg, 4)))
    seed_all(seed)
    trainer = PluginTrainer(cfg)
    trainer.resume_or_load(resume=False)
    res = trainer.train()
    res["branches"] = sub_descriptor_maps(cfg, trainer.model)
    return untrained, res


def mean_se(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and standard error (sample s.d. / sqrt(n); 0 for a single value) of a list."""
    v = np.asarray(values, dtype=float)
    return v.mean(), (v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0)


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds, or a range like 0-5")
    p.add_argument("--fold", default="forward", choices=["forward", "reverse", "both"],
                   help="forward: train on the gallery cameras; reverse: on the query cameras")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--label", default="")
    p.add_argument("opts", nargs="*", help="config overrides, KEY VALUE pairs")
    a = p.parse_intermixed_args(argv)  # options may also follow the KEY VALUE pairs
    if "-" in a.seeds:
        lo, hi = a.seeds.split("-")
        a.seeds = list(range(int(lo), int(hi) + 1))
    else:
        a.seeds = [int(x) for x in a.seeds.split(",")]
    folds = ["forward", "reverse"] if a.fold == "both" else [a.fold]
    import torch

    from fastreid_plugins.data import set_datasets_root

    torch.set_num_threads(int(os.environ.get("FASTREID_PLUGINS_THREADS", "1")))
    logging.getLogger("fastreid").setLevel(logging.WARNING)
    logging.getLogger("fastreid_plugins").setLevel(logging.WARNING)
    src = os.environ.get("FASTREID_DATASETS", "datasets")
    label = a.label or a.config_file
    per_fold = {}
    for fold in folds:
        maps = per_fold.setdefault(fold, [])
        with tempfile.TemporaryDirectory() as tmp:
            set_datasets_root(make_split(src, os.path.join(tmp, "data"), fold))
            for s in a.seeds:
                u, r = run(a.config_file, a.opts, s, a.epochs, os.path.join(tmp, f"out{s}"))
                maps.append(r["mAP"])
                print(f"RESULT {label} fold {fold} seed {s}: untrained mAP {u['mAP']:.1f} "
                      f"R1 {u['Rank-1']:.1f} -> trained mAP {r['mAP']:.1f} R1 {r['Rank-1']:.1f}; "
                      "descriptor mAP "
                      + " ".join(f"{k} {v:.1f}" for k, v in r["branches"].items()),
                      flush=True)
        m, se = mean_se(maps)
        print(f"RESULT {label} fold {fold}: mAP {m:.1f} +- {se:.1f} (s.e., n={len(maps)}: "
              f"{' '.join(f'{x:.1f}' for x in maps)}) opts={' '.join(a.opts)}", flush=True)
    if len(folds) > 1:
        # each fold weighs the same; s.e. of the mean of the fold means
        stats = [mean_se(v) for v in per_fold.values()]
        m = np.mean([x[0] for x in stats])
        se = np.sqrt(sum(x[1] ** 2 for x in stats)) / len(stats)
        print(f"RESULT {label} both folds: mAP {m:.1f} +- {se:.1f} (s.e.; mean of the fold means, "
              f"{len(a.seeds)} seeds per fold) opts={' '.join(a.opts)}", flush=True)


if __name__ == "__main__":
    from fastreid_plugins.cli import run_cli

    run_cli(main)
