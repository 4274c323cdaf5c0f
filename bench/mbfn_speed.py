#!/usr/bin/env python
"""Inference time of MBFN vs FastReID's MGN and Baseline (ResNet-50, same input), in one run.

All models are ResNet-50 (random init: speed does not depend on the weights), eval mode, no_grad,
the same (B, 3, 384, 128) batch (the papers' input size). Timings are interleaved (every repetition
times each model once, in turn) so that machine load affects all models alike; the median per batch
is reported with the ratios to FastReID's Baseline and MGN. The order of the models rotates from one
repetition to the next. MFG-Net (our other multi-branch method) is timed alongside. The
multiply-accumulates of all Conv2d/Linear layers per image are printed too (independent of load).

Models:
  * Baseline: FastReID BagTricks (``Baseline``, EmbeddingHead with BNNeck, LAST_STRIDE 1).
  * MGN: FastReID ``MGN`` (8 EmbeddingHeads, 256-d embeddings, LAST_STRIDE 1, as FastReID's MGN \
configs).
  * MBFN: ``configs/veri/mbfn.yml``; MFG-Net: ``configs/veri/mfgnet.yml`` (the papers' split: one
    shared ResNet-50 through conv5, branches = heads); ``... (MGN split)``: the same with
    ``SPLIT_AT layer3.1`` (each branch owns ``layer3[1:]`` + ``layer4``, as FastReID's MGN).

Usage: python bench/mbfn_speed.py [--batch 8] [--reps 5] [--device cpu] [--threads N]
"""

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from fastreid.modeling import build_model  # noqa: E402

import fastreid_plugins  # noqa: E402,F401  (compat first)
from fastreid_plugins.config import get_cfg  # noqa: E402
from fastreid_plugins.mbfn import add_mbfn_config  # noqa: E402
from fastreid_plugins.mfgnet import add_mfgnet_config  # noqa: E402

NUM_CLASSES = 576  # VeRi-776 training identities


def _cfg(arch=None, config_file=None, device="cpu", opts=()):
    cfg = get_cfg(add_mbfn_config, add_mfgnet_config)
    if config_file:
        cfg.merge_from_file(os.path.join(ROOT, config_file))
        cfg.merge_from_list(list(opts))
    else:
        cfg.MODEL.META_ARCHITECTURE = arch
        cfg.MODEL.BACKBONE.DEPTH = "50x"
        cfg.MODEL.BACKBONE.LAST_STRIDE = 1
        cfg.MODEL.HEADS.NAME = "EmbeddingHead"
        cfg.MODEL.HEADS.WITH_BNNECK = True
        cfg.MODEL.HEADS.POOL_LAYER = "GlobalAvgPool"
        cfg.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "TripletLoss")
        if arch == "MGN":
            cfg.MODEL.HEADS.EMBEDDING_DIM = 256
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.DEVICE = device
    return cfg


def build_all(device):
    specs = [("Baseline", _cfg("Baseline", device=device)), ("MGN", _cfg("MGN", device=device)),
             ("MBFN", _cfg(config_file="configs/veri/mbfn.yml", device=device)),
             ("MFG-Net", _cfg(config_file="configs/veri/mfgnet.yml", device=device)),
             ("MBFN (MGN split)", _cfg(config_file="configs/veri/mbfn.yml", device=device,
                                       opts=["MODEL.MBFN.SPLIT_AT", "layer3.1"])),
             ("MFG-Net (MGN split)", _cfg(config_file="configs/veri/mfgnet.yml", device=device,
                                          opts=["MODEL.MFGNET.SPLIT_AT", "layer3.1"]))]
    models = {}
    for name, cfg in specs:
        torch.manual_seed(0)
        models[name] = build_model(cfg).to(device).eval()
    return models


@torch.no_grad()
def conv_gmacs(model, device, hw=(384, 128)):
    """Multiply-accumulates (G) of the Conv2d / Linear layers for one image: load-independent
    cost."""
    total = [0]

    def hook(m, inp, out):
        if isinstance(m, torch.nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            total[0] += out.numel() * k
        else:
            total[0] += out.numel() * m.in_features

    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        model(torch.rand(1, 3, *hw, device=device) * 255)
    finally:
        for h in hs:
            h.remove()
    return total[0] / 1e9


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def time_models(models, batch, reps, warmup, device):
    x = torch.rand(batch, 3, 384, 128, device=device) * 255
    dims = {}
    for name, m in models.items():
        for _ in range(warmup):
            dims[name] = m(x.clone()).shape[1]
    times = {n: [] for n in models}
    names = list(models)
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order every run
            m = models[name]
            inp = x.clone()  # FastReID's own models normalise their input in place
            _sync(device)
            t0 = time.perf_counter()
            m(inp)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {n: statistics.median(v) for n, v in times.items()}, dims


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = build_all(args.device)
    med, dims = time_models(models, args.batch, args.reps, args.warmup, args.device)
    params = {n: sum(p.numel() for p in m.parameters()) / 1e6 for n, m in models.items()}
    macs = {n: conv_gmacs(m, args.device) for n, m in models.items()}
    print(f"Inference, ResNet-50, batch {args.batch} x 3 x 384 x 128, device {args.device}, "
          f"{torch.get_num_threads()} threads, median of {args.reps} interleaved runs")
    print(f"{'model':<20}{'ms/batch':>10}{'ms/img':>9}{'GMACs/img':>11}{'params(M)':>11}{'dim':>7}"
          f"{'time/Baseline':>15}{'time/MGN':>10}{'MACs/Baseline':>15}")
    for n in models:
        print(f"{n:<20}{med[n] * 1e3:>10.1f}{med[n] * 1e3 / args.batch:>9.1f}{macs[n]:>11.2f}"
              f"{params[n]:>11.1f}{dims[n]:>7d}{med[n] / med['Baseline']:>15.2f}"
              f"{med[n] / med['MGN']:>10.2f}"
              f"{macs[n] / macs['Baseline']:>15.2f}")
    print(f"MBFN / Baseline = {med['MBFN'] / med['Baseline']:.2f}x time, "
          f"{macs['MBFN'] / macs['Baseline']:.2f}x MACs; "
          f"MBFN / MGN = {med['MBFN'] / med['MGN']:.2f}x time, "
          f"{macs['MBFN'] / macs['MGN']:.2f}x MACs")
    return med


if __name__ == "__main__":
    main()
