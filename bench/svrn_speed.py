#!/usr/bin/env python
"""SVRN vs FastReID's Baseline: training-step time and inference time per image, same run.

Both models use a ResNet-50 (random init, no download), last stride 1, the same input size
(256x256 by default) and the same batch; SVRN is ``configs/veri/svrn.yml`` (T = 3, start blocks
(3, 4), alpha = (0.2, 0.1), critic + reward + VCC/ICC/DCC all on). FastReID's Baseline is
BNNeck + CE + batch-hard triplet (``configs/demo/bagtricks_r18.yml`` with a ResNet-50).

A training step = forward + all losses + backward + Adam step. Inference = eval-mode forward
under ``torch.no_grad()``. Measurements are interleaved (baseline, SVRN, baseline, SVRN, ...)
after warm-up iterations, and the medians are compared, so a shared, noisy CPU affects both
alike. The script also prints multiply-accumulate counts (``torch.utils.flop_counter``), which
do not depend on the machine's load, and SVRN's MACs per module.

The paper (Qian et al., IEEE T-ITS 2022) reports 65 vs 40 ms (1.63x) for training and 37 vs
23 ms (1.61x) for inference on a GPU.

Usage:
    python bench/svrn_speed.py        # batch 8 train / 16 inference, 1 warm-up, 3 timed
    python bench/svrn_speed.py --threads 2 --iters 5 --variants
    python bench/svrn_speed.py --device cuda --iters 20      # on a GPU (the paper's setting)
    python bench/svrn_speed.py --readings-only   # inference MACs of each start-block reading (s)
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from fastreid.modeling import build_model  # noqa: E402
from fastreid.utils.events import EventStorage  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import fastreid_plugins  # noqa: E402,F401  (compat + registration)
from fastreid_plugins.config import get_cfg  # noqa: E402
from fastreid_plugins.svrn import add_svrn_config  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
COMMON = ["MODEL.BACKBONE.DEPTH", "50x", "MODEL.BACKBONE.FEAT_DIM", "2048",
          "MODEL.BACKBONE.LAST_STRIDE", "1", "MODEL.BACKBONE.PRETRAIN", "False",
          "MODEL.BACKBONE.WITH_IBN", "False", "MODEL.HEADS.NUM_CLASSES", "576"]
DEVICE = "cpu"  # set by --device


def make(config, size, extra=()):
    cfg = get_cfg(add_svrn_config)
    cfg.merge_from_file(os.path.join(ROOT, config))
    cfg.merge_from_list(COMMON + ["MODEL.DEVICE", DEVICE, "INPUT.SIZE_TRAIN", f"[{size}, {size}]",
                                  "INPUT.SIZE_TEST", f"[{size}, {size}]"] + list(extra))
    cfg.freeze()
    model = build_model(cfg)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, opt


def batch(n, size, n_ids=None):
    n_ids = n_ids or max(2, n // 4)
    return {"images": torch.rand(n, 3, size, size, device=DEVICE) * 255,
            "targets": torch.arange(n_ids, device=DEVICE).repeat_interleave(n // n_ids)}


def train_step(model, opt, data):
    model.train()
    losses = model({"images": data["images"].clone(), "targets": data["targets"]})
    opt.zero_grad(set_to_none=False)
    sum(losses.values()).backward()
    opt.step()


@torch.no_grad()
def infer(model, images):
    model.eval()
    return model(images.clone())


def timed(fn):
    """Wall seconds of ``fn()``; on CUDA, queued kernels are waited for before and after."""
    sync = torch.cuda.synchronize if DEVICE.startswith("cuda") else (lambda: None)
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def macs(model, size):
    """(inference GMAC/image, training GMAC/image incl. backward) on a batch of 4 (2 ids x 2)."""
    data = batch(4, size, 2)
    model.eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(data["images"].clone())
    inf = fc.get_total_flops() / 2 / 4 / 1e9
    model.train()
    with FlopCounterMode(display=False) as fc:
        losses = model({"images": data["images"].clone(), "targets": data["targets"]})
        sum(losses.values()).backward()
    model.zero_grad(set_to_none=True)
    return inf, fc.get_total_flops() / 2 / 4 / 1e9


def module_breakdown(model, size, n=4):
    """SVRN's inference MACs per part: stage-1 backbone blocks, each branch's copied blocks,
    the SIM modules, classification blocks, ranking layers, and the rest."""
    model.eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(batch(n, size, 2)["images"])
    counts = {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}
    total = counts["Global"]
    rows = []
    for name in ("conv1", "layer1", "layer2", "layer3", "layer4"):
        rows.append((f"backbone.{name}", counts.get(f"SVRN.backbone.{name}", 0)))
    for i, branch in enumerate(model.branches):
        for name in branch:
            rows.append((f"branches.{i}.{name}", counts.get(f"SVRN.branches.{i}.{name}", 0)))
    for group in ("sims", "heads", "rankers"):
        rows.append((f"{group} (all stages)", sum(counts.get(f"SVRN.{group}.{i}", 0)
                                                  for i in range(model.num_stages))))
    rows.append(("other", total - sum(v for _, v in rows)))
    return total, [(k, v / 2 / n / 1e9) for k, v in rows]


#: readings of Sec. IV-B's "the second stage starts from block 3 ..., the third stage starts from
#: block 4" as MODEL.SVRN.START_BLOCKS (conv{b}_x numbering; stage t+1 re-runs blocks b+1..5)
READINGS = [
    ("(3, 4): stage 2 runs layer3 on M_1 x X_1^3 (Eq. 5 text), stage 3 runs layer4 (default)",
     [3, 4]),
    ("(2, 3): conv{b}_x blocks, 'starts from block b' = re-runs conv3_x / conv4_x onwards",
     [2, 3]),
    ("(2, 4): the two numberings mixed (stage 2 from conv3_x, stage 3 from layer4)", [2, 4]),
]


def readings_macs(size):
    """Inference MACs per image of the Baseline and of SVRN under each start-block reading,
    counted on the meta device (exact, no compute, no timing)."""
    def count(config, extra=()):
        cfg = get_cfg(add_svrn_config)
        cfg.merge_from_file(os.path.join(ROOT, config))
        cfg.merge_from_list(COMMON + ["MODEL.DEVICE", "cpu", "INPUT.SIZE_TEST", f"[{size}, {size}]",
                                      "INPUT.SIZE_TRAIN", f"[{size}, {size}]"] + list(extra))
        cfg.freeze()
        model = build_model(cfg).to("meta").eval()
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(torch.empty(4, 3, size, size, device="meta"))
        return fc.get_total_flops() / 2 / 4 / 1e9

    base = count("configs/demo/bagtricks_r18.yml")
    print(f"\n== start-block readings, inference MACs per image at {size}x{size} ==")
    print(f"  Baseline (FastReID BNNeck ResNet-50)   {base:6.2f} GMAC")
    for name, starts in READINGS:
        v = count("configs/veri/svrn.yml", ["MODEL.SVRN.START_BLOCKS", str(starts)])
        print(f"  SVRN {name}\n      {v:6.2f} GMAC = {v / base:.2f}x")


def compare(name, extra, args, base, base_opt, t_data, i_data):
    svrn, svrn_opt = make("configs/veri/svrn.yml", args.size, extra)
    for _ in range(args.warmup):
        train_step(base, base_opt, t_data)
        train_step(svrn, svrn_opt, t_data)
        infer(base, i_data)
        infer(svrn, i_data)
    tb, ts, ib, is_ = [], [], [], []
    for _ in range(args.iters):   # interleaved
        tb.append(timed(lambda: train_step(base, base_opt, t_data)))
        ts.append(timed(lambda: train_step(svrn, svrn_opt, t_data)))
        ib.append(timed(lambda: infer(base, i_data)))
        is_.append(timed(lambda: infer(svrn, i_data)))
    med = statistics.median
    mb_inf, mb_tr = macs(base, args.size)
    ms_inf, ms_tr = macs(svrn, args.size)
    print(f"\n== {name} ==")
    print(f"training step (batch {args.train_batch}): Baseline {med(tb) * 1e3:8.0f} ms   "
          f"SVRN {med(ts) * 1e3:8.0f} ms   ratio {med(ts) / med(tb):.2f}x")
    print(f"inference (batch {args.infer_batch}, per image): Baseline "
          f"{med(ib) / args.infer_batch * 1e3:6.1f} ms   "
          f"SVRN {med(is_) / args.infer_batch * 1e3:6.1f} ms"
          f"   ratio {med(is_) / med(ib):.2f}x")
    print(f"MACs/image: inference {mb_inf:.2f} vs {ms_inf:.2f} G ({ms_inf / mb_inf:.2f}x), "
          f"training {mb_tr:.2f} vs {ms_tr:.2f} G ({ms_tr / mb_tr:.2f}x)")
    print(f"  raw timings (s): base train {[round(x, 3) for x in tb]} svrn train "
          f"{[round(x, 3) for x in ts]} base inf {[round(x, 3) for x in ib]} svrn inf "
          f"{[round(x, 3) for x in is_]}")
    return svrn


def critic_timing(args):
    """Grid critic of one stage at the paper's sizes: closed form vs one batched call vs the
    naive 64-forward loop (what the closed form replaces)."""
    from fastreid_plugins.svrn import ClassificationBlock, grid_critic
    from fastreid_plugins.svrn.critic import minmax_normalise

    b, grid = args.critic_batch, 8
    block = ClassificationBlock(2048, 512, 576).to(DEVICE).train()
    x = torch.randn(b, 2048, args.size // 16, args.size // 16, device=DEVICE).relu()
    targets = torch.randint(0, 576, (b,), device=DEVICE)
    with torch.no_grad():
        out = block(x)
    stats, reduced = out["stats"], out["reduced"]

    def naive():
        h, w = x.shape[-2:]
        ch, cw = h // grid, w // grid
        ce = torch.empty(b, grid, grid, device=DEVICE)
        with torch.no_grad():
            for i in range(grid):
                for j in range(grid):
                    xm = x.clone()
                    xm[:, :, i * ch:(i + 1) * ch, j * cw:(j + 1) * cw] = 0
                    ce[:, i, j] = torch.nn.functional.cross_entropy(
                        block(xm, stats)["logits"], targets, reduction="none")
        return minmax_normalise(ce)

    rows = [("closed form (decomposed)",
             lambda: grid_critic(block, x, targets, grid, stats, reduced)),
            ("one batched call",
             lambda: grid_critic(block, x, targets, grid, stats, mode="batched")),
            ("naive 64-forward loop", naive)]
    print(f"\n== grid critic, one stage, batch {b}, X_t 2048x{x.shape[-2]}x{x.shape[-1]}, "
          f"576 classes ==")
    for name, fn in rows:
        fn()
        t = statistics.median(timed(fn) for _ in range(args.iters))
        print(f"  {name:26s} {t * 1e3:9.1f} ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--infer-batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu or cuda[:i] (default: cuda when available)")
    ap.add_argument("--critic", action="store_true",
                    help="also time the grid critic: closed form vs batched call vs naive loop")
    ap.add_argument("--critic-batch", type=int, default=2)
    ap.add_argument("--readings-only", action="store_true",
                    help="only count the inference MACs of each start-block reading (no timing)")
    ap.add_argument("--variants", action="store_true",
                    help="also time T=2 (start block 3 or 4) and SVRN without critic/cross terms")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.readings_only:
        readings_macs(args.size)
        return
    where = (torch.cuda.get_device_name(DEVICE) if DEVICE.startswith("cuda")
             else f"CPU, {torch.get_num_threads()} threads")
    print(f"torch {torch.__version__}, {where}, input "
          f"{args.size}x{args.size}, ResNet-50 last stride 1, {args.warmup} warm-up + "
          f"{args.iters} timed iterations (interleaved, medians)")
    print("paper (GPU): training 65 vs 40 ms = 1.63x, inference 37 vs 23 ms = 1.61x")
    base, base_opt = make("configs/demo/bagtricks_r18.yml", args.size)
    t_data = batch(args.train_batch, args.size)
    i_data = batch(args.infer_batch, args.size)["images"]
    with EventStorage(0):
        svrn = compare("SVRN T=3, start blocks (3, 4) [configs/veri/svrn.yml]", [], args,
                       base, base_opt, t_data, i_data)
        total, rows = module_breakdown(svrn, args.size)
        print("SVRN inference MACs by module (share of the total):")
        for name, v in rows:
            print(f"  {name:24s} {v:6.2f} GMAC/image  {v / (total / 2 / 4 / 1e9) * 100:5.1f}%")
        if args.critic:
            critic_timing(args)
        if args.variants:
            compare("SVRN T=2, start block 3", ["MODEL.SVRN.NUM_STAGES", "2",
                    "MODEL.SVRN.START_BLOCKS", "[3]", "MODEL.SVRN.ALPHAS", "[0.2]"],
                    args, base, base_opt, t_data, i_data)
            compare("SVRN T=2, start block 4", ["MODEL.SVRN.NUM_STAGES", "2",
                    "MODEL.SVRN.START_BLOCKS", "[4]", "MODEL.SVRN.ALPHAS", "[0.2]"],
                    args, base, base_opt, t_data, i_data)
            compare("SVRN T=3 without critic / cross-space terms", [
                    "MODEL.SVRN.REWARD.ENABLED", "False", "MODEL.SVRN.CROSS.VCC.ENABLED", "False",
                    "MODEL.SVRN.CROSS.ICC.ENABLED", "False",
                    "MODEL.SVRN.CROSS.DCC.ENABLED", "False"],
                    args, base, base_opt, t_data, i_data)


if __name__ == "__main__":
    main()
