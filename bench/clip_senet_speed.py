#!/usr/bin/env python
"""Inference time of CLIP-SENet vs its backbone-only baseline, measured in one run.

Both models use the paper's configuration (configs/veri/clip_senet.yml): ResNeXt101-IBN at
320x320; CLIP-SENet adds the TinyCLIP-ViT-61M-32 image encoder (SEM), the fusion FC, AFEM and the
camera/viewpoint embeddings. The baseline is FastReID's ``Baseline`` meta-architecture with the
same backbone and the same ``EmbeddingHead`` (GAP + BNNeck). Weights are random (speed does not
depend on them). The two models are timed alternately (eval mode, ``torch.no_grad``), after
warm-up, and the medians are compared against a ratio of 1.3x. That budget is this project's
own (set when CLIP-SENet was added, issue 4), not the paper's: the paper reports no inference
time or speed ratio.

Usage:
    python bench/clip_senet_speed.py [--batch 2] [--iters 5] [--size 320] [--threads 0]
        [--variant TinyCLIP-ViT-61M-32] [--sem-size 0] [--device cpu]
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from fastreid.modeling import build_model  # noqa: E402

import fastreid_plugins  # noqa: E402,F401
from fastreid_plugins.clip_senet import add_clip_senet_config  # noqa: E402
from fastreid_plugins.clip_senet.tinyclip import count_parameters  # noqa: E402
from fastreid_plugins.config import get_cfg  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def clip_senet_cfg(args):
    cfg = get_cfg(add_clip_senet_config)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "veri", "clip_senet.yml"))
    cfg.merge_from_list(["MODEL.BACKBONE.PRETRAIN", False, "MODEL.CLIPSENET.SEM.PRETRAIN", False,
                         "MODEL.CLIPSENET.SEM.VARIANT", args.variant,
                         "MODEL.HEADS.NUM_CLASSES", 576, "MODEL.DEVICE", args.device,
                         "INPUT.SIZE_TEST", [args.size, args.size]])
    if args.sem_size:
        cfg.merge_from_list(["MODEL.CLIPSENET.SEM.INPUT_SIZE", args.sem_size])
    return cfg


def baseline_cfg(args):
    """FastReID's Baseline with CLIP-SENet's backbone and head settings."""
    cfg = clip_senet_cfg(args)
    cfg.MODEL.META_ARCHITECTURE = "Baseline"
    cfg.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "TripletLoss")
    return cfg


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--variant", default="TinyCLIP-ViT-61M-32")
    p.add_argument("--sem-size", type=int, default=0,
                   help="SEM input size (0: the paper config's, 320; 224: TinyCLIP's own)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    models = {"baseline": build_model(baseline_cfg(args)).eval(),
              "clip_senet": build_model(clip_senet_cfg(args)).eval()}
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    batch = {"images": (torch.rand(args.batch, 3, args.size, args.size, generator=g) * 255).to(dev),
             "camids": torch.zeros(args.batch, dtype=torch.long, device=dev),
             "viewids": torch.zeros(args.batch, dtype=torch.long, device=dev)}

    def run(model):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        model(batch)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    times = {k: [] for k in models}
    with torch.no_grad():
        for _ in range(args.warmup):
            for m in models.values():
                run(m)
        for _ in range(args.iters):  # alternate, so both see the same machine load
            for k, m in models.items():
                times[k].append(run(m))

    med = {k: statistics.median(v) for k, v in times.items()}
    flops = {}
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad():
        for k, m in models.items():  # deterministic, unlike wall-clock time on a shared machine
            counter = FlopCounterMode(display=False)
            with counter:
                m({key: v[:1] for key, v in batch.items()})
            flops[k] = counter.get_total_flops()
    params = {k: count_parameters(m) for k, m in models.items()}
    sem_size = models["clip_senet"].sem.image_size
    print(f"device={args.device} threads={torch.get_num_threads()} batch={args.batch} "
          f"input={args.size}x{args.size} iters={args.iters} (median) SEM={args.variant} at "
          f"{sem_size}x{sem_size}")
    for k in models:
        print(f"  {k:11s} {1000 * med[k] / args.batch:9.1f} ms/image   "
              f"{flops[k] / 2e9:7.2f} GMACs/image   {params[k] / 1e6:7.2f} M params   runs(s): "
              + " ".join(f"{t:.2f}" for t in times[k]))
    print(f"CLIP-SENet / baseline MACs: {flops['clip_senet'] / flops['baseline']:.2f}x")
    ratio = med["clip_senet"] / med["baseline"]
    print(f"CLIP-SENet / baseline inference time: {ratio:.2f}x (project budget <= 1.3x, not a "
          f"paper figure: {'met' if ratio <= 1.3 else 'NOT met'})")


if __name__ == "__main__":
    main()
