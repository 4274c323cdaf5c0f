"""Rank-list pictures and the CMC curve of a trained model on a dataset's query/gallery split.

Usage::

    FASTREID_DATASETS=../shared/datasets python -m fastreid_plugins.tools.visualize \\
        --config-file configs/demo/mfgnet.yml [--num-queries 10] [--topk 5] \\
        [--mode best|worst|random] [--output vis/] [--dataset VeRi] MODEL.WEIGHTS model_final.pth

Works for every meta-architecture registered by ``fastreid_plugins`` (and FastReID's own): the
config is built with every plugin's ``add_*_config``, the model with the trainer its package
defines (e.g. CLIP-SENet's loaders carry viewpoint indices), the weights are loaded strictly.
Runs on the CPU when there is no GPU.

Outputs in ``--output``:

* ``ranklist_<i>_<query file>.png``: the query (blue border; caption: its ID and camera, the
  camera as named in the file, ``c012`` -> "cam 12", see :func:`camera_label`) and its top-k
  gallery images in
  ranked order, green border = same vehicle ID, red = different ID, as in MFG-Net (Xu et al.,
  Array 2022) Fig. 7 and MBFN (Array 2023) Fig. 7. As in the evaluation protocol, gallery images
  of the query's ID taken by the query's camera are junk and not shown.
* ``cmc.png``: the CMC curve (Rank-1 .. Rank-50) with Rank-1/mAP/mINP in the title
  ("Rank-1: 66.7%  mAP: ...").
* ``ranklists.json``: metrics, the CMC, and for every picture the query, the shown gallery images
  (path, pid, camid, distance, match) and the pixel box of every bordered cell.

Queries are chosen by their average precision (only queries with at least one true match):
``best`` = highest AP first, ``worst`` = lowest first, ``random`` = seeded sample (``--seed``).
Distances are the evaluator's: ``TEST.METRIC``, ``TEST.AQE`` and ``TEST.RERANK`` of the config,
through the same query-chunked path (:mod:`fastreid_plugins.evaluation.chunked`, block size from
``TEST.EVAL_MEMORY_GB``), which keeps only the top-k gallery images of every query: no (Q, G)
matrix, so the tool runs on the largest test sets (``TEST.RERANK.TYPE fastreid`` is not used here;
the sparse re-ranker gives the same distances).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["main", "draw_ranklist", "draw_cmc", "select_queries", "canvas_size", "camera_label",
           "cmc_title",
           "QUERY_COLOR", "MATCH_COLOR", "NONMATCH_COLOR", "BORDER", "GAP", "QUERY_GAP", "PAD",
           "TEXT_H"]

logger = logging.getLogger("fastreid_plugins.visualize")

QUERY_COLOR = (0, 0, 255)
MATCH_COLOR = (0, 255, 0)
NONMATCH_COLOR = (255, 0, 0)
BACKGROUND = (255, 255, 255)
BORDER = 4       # border width (px) around every image
GAP = 6          # between gallery cells
QUERY_GAP = 18   # between the query and the first gallery cell
PAD = 6          # canvas margin
TEXT_H = 30      # caption band under the cells (two lines)


def canvas_size(topk: int, height: int, width: int) -> Tuple[int, int]:
    """(width, height) in pixels of a rank-list picture with ``topk`` gallery images.

    Each cell is an ``height x width`` image inside a ``BORDER``-px border; the query cell is
    followed by ``QUERY_GAP`` px, the gallery cells are ``GAP`` px apart, captions take ``TEXT_H``
    px under the cells and the canvas has a ``PAD``-px margin.
    """
    cw, ch = width + 2 * BORDER, height + 2 * BORDER
    return (2 * PAD + (topk + 1) * cw + QUERY_GAP + max(topk - 1, 0) * GAP,
            2 * PAD + ch + TEXT_H)


_CAMERA_IN_NAME = re.compile(r"(?:^|_)c(\d{3})(?=[_.])")


def camera_label(path: str, camid: int) -> Tuple[str, str]:
    """The camera as a caption: as in the file name when it names one, else ``camid + 1``.

    FastReID's VeRi-776 loader parses ``<pid>_c<cam>_<frame>_<n>.jpg`` and stores
    ``camid = cam - 1`` (0-based), so ``0002_c012_00030600_0.jpg`` has ``camid`` 11 and is
    shown as "cam 12", the dataset's own camera name. A file name without ``_cNNN_``
    (VehicleID, VERI-Wild lists) gives "cam #<camid + 1>" (``#``: FastReID's internal index + 1,
    not a name from the dataset).

    Returns:
        tuple[str, str]: ``(caption, source)``, source ``"file name"`` or ``"camid + 1"``.
    """
    m = _CAMERA_IN_NAME.search(os.path.basename(str(path)))
    if m:
        return f"cam {int(m.group(1))}", "file name"
    return f"cam #{int(camid) + 1}", "camid + 1"


def cmc_title(dataset: str, metrics: Mapping[str, float]) -> str:
    """Title of ``cmc.png``: ``"CMC on VeRi: Rank-1: 66.7%  mAP: 60.0%  mINP: 50.0%"``."""
    return (f"CMC on {dataset}:  Rank-1: {metrics['Rank-1']:.1f}%   mAP: {metrics['mAP']:.1f}%   "
            f"mINP: {metrics['mINP']:.1f}%")


def _load_image(path, height, width):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB").resize((width, height), Image.BILINEAR)


def draw_ranklist(query: Dict[str, Any], gallery: Sequence[Mapping[str, Any]], height: int,
                  width: int) -> Tuple[Image.Image, List[int], List[List[int]]]:
    """Draw one rank list.

    Args:
        query (dict): ``path``, ``pid``, ``camid`` of the query; its caption (id, and the camera
            by :func:`camera_label`) is stored in it as ``caption``.
        gallery (list[dict]): ranked gallery entries with ``path``, ``pid``, ``camid``, ``dist``
            and ``match`` (bool).
        height, width (int): size of every shown image (px, without border).

    Returns:
        tuple: ``(PIL.Image, query_box, gallery_boxes)``; boxes are ``[x0, y0, x1, y1]`` (pixel
        coordinates of the bordered cell, x1/y1 exclusive).
    """
    from PIL import Image, ImageDraw

    W, H = canvas_size(len(gallery), height, width)
    canvas = Image.new("RGB", (W, H), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    cw, ch = width + 2 * BORDER, height + 2 * BORDER

    def cell(x0, path, color, lines):
        draw.rectangle([x0, PAD, x0 + cw - 1, PAD + ch - 1], fill=color)
        canvas.paste(_load_image(path, height, width), (x0 + BORDER, PAD + BORDER))
        for i, text in enumerate(lines):
            draw.text((x0 + 1, PAD + ch + 2 + 13 * i), text, fill=(0, 0, 0))
        return [x0, PAD, x0 + cw, PAD + ch]

    query["caption"] = [f"query id {query['pid']}", camera_label(query["path"],
                                                                query["camid"])[0]]
    qbox = cell(PAD, query["path"], QUERY_COLOR, query["caption"])
    boxes = []
    x = PAD + cw + QUERY_GAP
    for r, g in enumerate(gallery, 1):
        color = MATCH_COLOR if g["match"] else NONMATCH_COLOR
        boxes.append(cell(x, g["path"], color, [f"#{r} id {g['pid']}", f"d={g['dist']:.3f}"]))
        x += cw + GAP
    return canvas, qbox, boxes


#: colour of the threshold marker of an open-set rank list (``search --threshold``)
THRESHOLD_COLOR = (255, 140, 0)


def mark_threshold(img: Image.Image, boxes: Sequence[Sequence[int]],
                   dists: Sequence[float], threshold: Union[float, Sequence[float]]) -> int:
    """Mark an open-set threshold on a rank list of :func:`draw_ranklist` (in place): a vertical
    bar after the last gallery image within ``threshold`` (distance ``<=``), and its value; a
    "no match" label where none is.

    Args:
        img (PIL.Image): the rank list; boxes: its gallery boxes; dists: their distances.
        threshold (float or sequence): the accept threshold, or one per gallery image (per
            camera pair: the bar then follows the last accepted image, labelled "t per pair").

    Returns:
        int: the number of gallery images within the threshold.
    """
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    per = not isinstance(threshold, (int, float))
    ok = [d <= (threshold[i] if per else threshold) for i, d in enumerate(dists)]
    kept = max((i + 1 for i, o in enumerate(ok) if o), default=0) if per else sum(ok)
    if boxes:
        x = boxes[kept - 1][2] + GAP // 2 - 1 if kept else boxes[0][0] - QUERY_GAP // 2
        y0, y1 = boxes[0][1], boxes[0][3]
        draw.rectangle([x - 1, y0 - PAD + 1, x + 1, y1 + TEXT_H - 2], fill=THRESHOLD_COLOR)
        label = ("t per pair" if per else f"t={threshold:.3g}") + ("" if kept else "  no match")
        draw.text((x + 4, max(0, y0 - PAD)), label, fill=THRESHOLD_COLOR)
    return kept


def draw_cmc(cmc: Union[np.ndarray, Sequence[float]], title: str,
             size: Tuple[int, int] = (640, 480)) -> Image.Image:
    """Draw a CMC curve (PIL only).

    Args:
        cmc (np.ndarray): (M,) matching rates in [0, 1] for Rank-1 .. Rank-M.
        title (str): text above the plot.
        size (tuple): (width, height) of the picture.

    Returns:
        PIL.Image: the plot (x: rank 1..M, y: 0..100 %).
    """
    from PIL import Image, ImageDraw

    W, H = size
    left, right, top, bottom = 60, 20, 40, 50
    img = Image.new("RGB", (W, H), BACKGROUND)
    d = ImageDraw.Draw(img)
    x0, x1, y0, y1 = left, W - right, H - bottom, top
    d.rectangle([x0, y1, x1, y0], outline=(0, 0, 0))
    m = len(cmc)

    def px(rank):  # rank 1..m -> x pixel
        return x0 + (x1 - x0) * ((rank - 1) / max(m - 1, 1))

    def py(rate):  # rate 0..1 -> y pixel
        return y0 - (y0 - y1) * rate

    for v in range(0, 101, 20):
        y = py(v / 100)
        d.line([x0, y, x1, y], fill=(220, 220, 220))
        d.text((x0 - 34, y - 6), f"{v}%", fill=(0, 0, 0))
    ticks = sorted({1, *range(5, m + 1, 5)} if m >= 5 else set(range(1, m + 1)))
    for r in ticks:
        d.line([px(r), y0, px(r), y0 + 4], fill=(0, 0, 0))
        d.text((px(r) - 6, y0 + 8), str(r), fill=(0, 0, 0))
    d.text(((x0 + x1) // 2 - 14, H - 22), "Rank", fill=(0, 0, 0))
    pts = [(px(r + 1), py(float(c))) for r, c in enumerate(cmc)]
    if len(pts) > 1:
        d.line(pts, fill=(31, 119, 180), width=2)
    for x, y in pts:
        d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(31, 119, 180))
    d.text((x0, 12), title, fill=(0, 0, 0))
    return img


def select_queries(ap: Union[np.ndarray, Sequence[float]], valid_idx: np.ndarray, num: int,
                   mode: str, seed: int = 0) -> List[Tuple[int, float]]:
    """Indices of the queries to draw.

    Args:
        ap (np.ndarray): (V,) AP of the valid queries; valid_idx (np.ndarray): (V,) their indices.
        num (int): how many to pick (capped at V).
        mode (str): ``best`` (highest AP first), ``worst`` (lowest first) or ``random``.
        seed (int): seed of ``random``.

    Returns:
        list[tuple[int, float]]: ``(query index, AP)`` pairs.

    Raises:
        ValueError: unknown ``mode`` or ``num < 1``.
    """
    if mode not in ("best", "worst", "random"):
        raise ValueError(f"--mode must be best, worst or random, got {mode!r}")
    if num < 1:
        raise ValueError(f"--num-queries must be >= 1, got {num}")
    ap = np.asarray(ap, dtype=np.float64)
    num = min(num, len(ap))
    if mode == "random":
        order = np.random.default_rng(seed).choice(len(ap), size=num, replace=False)
    else:
        key = -ap if mode == "best" else ap
        order = np.lexsort((valid_idx, key))[:num]  # ties: lower query index first
    return [(int(valid_idx[i]), float(ap[i])) for i in order]


def _extract(model, loader, flip):
    import torch
    from tqdm import tqdm

    feats, pids, camids, paths = [], [], [], []
    model.eval()
    with torch.no_grad():
        for batch in tqdm(loader, desc="visualize: features", dynamic_ncols=True,
                          disable=None):
            out = model(dict(batch))
            if flip:
                flipped = dict(batch, images=batch["images"].flip(dims=[3]))
                out = (out + model(flipped)) / 2
            feats.append(out.float().cpu())
            pids.append(batch["targets"].cpu())
            camids.append(batch["camids"].cpu())
            paths.extend(batch["img_paths"])
    return (torch.cat(feats), torch.cat(pids).numpy(), torch.cat(camids).numpy(), paths)


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m fastreid_plugins.tools.visualize",
        description="Rank-list pictures (green = same ID, red = different) and CMC curve.")
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--num-queries", type=int, default=10)
    p.add_argument("--topk", type=int, default=5, help="gallery images per rank list")
    p.add_argument("--mode", default="best", choices=["best", "worst", "random"])
    p.add_argument("--seed", type=int, default=0, help="seed of --mode random")
    p.add_argument("--output", default=os.path.join("logs", "vis"),
                   help="output folder (default logs/vis; also gets log.txt: config and model)")
    p.add_argument("--dataset", default=None, help="test set (default: DATASETS.TESTS[0])")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="size of every shown image (default: INPUT.SIZE_TEST)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides "
                   "(MODEL.WEIGHTS path/to/model.pth); options must come before them")
    return p


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the tool; returns the ``ranklists.json`` content as a dict.

    Raises:
        FileNotFoundError: missing config file or ``MODEL.WEIGHTS``.
        ValueError: bad ``--topk``/``--num-queries``/``--mode``, or a VehicleID-style test set
            (no fixed query/gallery split).
    """
    from fastreid_plugins.errors import ConfigError

    args = build_parser().parse_args(argv)
    if args.topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {args.topk}")
    if args.num_queries < 1:
        raise ConfigError(f"--num-queries must be >= 1, got {args.num_queries}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from fastreid_plugins.engine import is_vehicleid
    from fastreid_plugins.evaluation.chunked import evaluate_chunked, options_from_cfg
    from fastreid_plugins.evaluation.evaluator import metrics_from_curves
    from fastreid_plugins.tools import build_tool_cfg, load_tool_model, trainer_class_for

    cfg = build_tool_cfg(args.config_file, args.opts)
    dataset = args.dataset or cfg.DATASETS.TESTS[0]
    if is_vehicleid(dataset):
        raise ConfigError(f"{dataset} has no fixed query/gallery split (VehicleID protocol); "
                         "pick another test set with --dataset.")
    model = load_tool_model(cfg, "visualise", log_file=os.path.join(args.output, "log.txt"))
    trainer_cls = trainer_class_for(cfg)
    loader, num_query = trainer_cls.build_test_loader(cfg, dataset)

    feats, pids, camids, paths = _extract(model, loader, cfg.TEST.FLIP.ENABLED)
    qf, gf = feats[:num_query], feats[num_query:]
    q_pids, g_pids, q_cam, g_cam = pids[:num_query], pids[num_query:], camids[:num_query], \
        camids[num_query:]
    # the evaluator's query-chunked path (TEST.EVAL_MEMORY_GB): top-k per query, no (Q, G) array
    res = evaluate_chunked(qf, gf, q_pids, g_pids, q_cam, g_cam, topk=args.topk, progress=True,
                           **options_from_cfg(cfg))
    metrics = metrics_from_curves(res["cmc"], res["all_ap"], res["all_inp"])
    cmc, all_ap, valid_idx = res["cmc"], res["all_ap"], np.flatnonzero(res["valid"])

    height, width = args.size or tuple(cfg.INPUT.SIZE_TEST)
    os.makedirs(args.output, exist_ok=True)
    summary = {"dataset": dataset, "mode": args.mode, "topk": args.topk,
               "weights": cfg.MODEL.WEIGHTS, "image_size": [height, width],
               "metrics": {k: float(v) for k, v in metrics.items()},
               "cmc": [float(c) for c in cmc], "queries": []}
    chosen = select_queries(all_ap, valid_idx, args.num_queries, args.mode, args.seed)
    g_paths = paths[num_query:]
    for i, (q, ap) in enumerate(chosen):
        order = res["topk_index"][q]
        order = order[order >= 0]  # ranked, junk excluded (ties: lower gallery index first)
        query = {"path": paths[q], "pid": int(q_pids[q]), "camid": int(q_cam[q])}
        gallery = [{"path": g_paths[j], "pid": int(g_pids[j]), "camid": int(g_cam[j]),
                    "dist": float(res["topk_dist"][q, r]), "match": bool(g_pids[j] == q_pids[q])}
                   for r, j in enumerate(order)]
        img, qbox, boxes = draw_ranklist(query, gallery, height, width)
        stem = os.path.splitext(os.path.basename(paths[q]))[0]
        name = f"ranklist_{i:03d}_{stem}.png"
        img.save(os.path.join(args.output, name))
        for g, box in zip(gallery, boxes):
            g["box"] = box
        summary["queries"].append({"file": name, "query_index": q, "ap": ap,
                                   "query": dict(query, box=qbox), "gallery": gallery})
    title = summary["cmc_title"] = cmc_title(dataset, metrics)
    draw_cmc(cmc, title).save(os.path.join(args.output, "cmc.png"))
    with open(os.path.join(args.output, "ranklists.json"), "w") as f:
        json.dump(summary, f, indent=1)
    logger.info(f"{len(chosen)} rank lists ({args.mode} AP) and cmc.png written to {args.output}; "
                f"Rank-1 {metrics['Rank-1']:.2f}  mAP {metrics['mAP']:.2f}  "
                f"mINP {metrics['mINP']:.2f}")
    return summary


if __name__ == "__main__":
    from fastreid_plugins.cli import run_cli
    run_cli(main, sys.argv[1:])
