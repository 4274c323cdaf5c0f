"""Calibrate a "same vehicle" distance threshold for a target false accept rate (FAR).

Usage::

    # from an extraction folder (tools/extract) whose images carry identity / camera labels
    python -m fastreid_plugins.tools.calibrate --features FEATS_DIR [--gallery GALLERY_DIR] \\
        [--labels labels.csv] --far 1e-3 --out threshold.json [--bootstrap 200] [--seed 0] \\
        [--per-camera-pair] [--min-pairs 1000]
    # from a dataset's test split with a model (features extracted here)
    python -m fastreid_plugins.tools.calibrate --config-file C.yml --dataset VeRi \\
        --far 1e-3 --out threshold.json MODEL.WEIGHTS model_final.pth

Pairs (the evaluator's, :mod:`fastreid_plugins.evaluation.verification`): with ``--gallery``,
every (query, gallery) pair; with one folder (or ``--dataset``: its query + gallery images),
every unordered pair of distinct images. A pair of one identity seen by one camera is left out
(the junk rule of CMC / mAP); same identity = positive, other identity = negative.

Labels: ``--labels`` CSV with ``path,pid,camid`` rows (a header line is allowed; paths as in the
extraction's ``shard_*.txt``, or their file names), else parsed from the file names in the
VeRi-776 / VERI-Wild convention ``<pid>_c<camid>_...`` (``0002_c002_00030600_0.jpg``).

The threshold is the largest distance ``t`` whose FAR (accepted negatives, ``d <= t``) on these
pairs is at most ``--far``; TAR is the share of positives it accepts. The confidence intervals
(``--ci``, default 95 %) are percentile bootstrap intervals over ``--bootstrap`` resamples of the
*queries* (pairs of one query are not independent), seeded by ``--seed``. With
``--per-camera-pair`` one threshold per unordered camera pair that has at least ``--min-pairs``
negative pairs (and one positive), the global one elsewhere (``"fallback": true``).

The file records the metric and the model's SHA-256 (the extraction manifest's
``weights_sha256``): :func:`fastreid_plugins.evaluation.verification.load_threshold` (used by
``tools/search --threshold`` and ``tools/gallery search --threshold``) refuses a threshold of
another metric or model, naming both.

Importing this module imports no torch or numpy (``--help`` is fast).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from fastreid_plugins.errors import ConfigError, DatasetError, DatasetNotFoundError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["calibrate", "labels_from_paths", "threshold_at_far", "main",
           "build_parser", "THRESHOLD_FORMAT", "MAX_PAIRS"]

logger = logging.getLogger("fastreid_plugins.tools.calibrate")

#: the ``format`` entry of a threshold file
THRESHOLD_FORMAT = "fastreid_plugins.threshold/1"
#: pairs held (13 bytes each) before queries are sub-sampled (seeded, logged, recorded)
MAX_PAIRS = 20_000_000
_NAME = re.compile(r"^(\d+)_c(\d+)")


# ----------------------------------------------------------------------------- labels
def labels_from_paths(paths: Sequence[str], labels_csv: Optional[str] = None
                      ) -> Tuple[List[int], List[int]]:
    """``(pids, camids)`` of ``paths`` from ``labels_csv`` or the VeRi-style file names.

    Raises:
        DatasetNotFoundError: ``labels_csv`` is missing.
        DatasetError: a path without a label (named, with the next step).
    """
    table = None
    if labels_csv:
        if not os.path.isfile(labels_csv):
            raise DatasetNotFoundError(f"--labels not found: {labels_csv!r}")
        table = {}
        with open(labels_csv, newline="", encoding="utf-8") as f:
            for row in csv.reader(f):
                if len(row) < 3 or not row[1].strip().lstrip("-").isdigit():
                    continue  # header / blank line
                pid, cam = int(row[1]), int(row[2])
                table[row[0]] = table[os.path.basename(row[0])] = (pid, cam)
    pids, cams = [], []
    for p in paths:
        if table is not None:
            hit = table.get(p) or table.get(os.path.basename(p))
            if hit is None:
                raise DatasetError(f"{p!r} has no row in --labels {labels_csv!r} (rows: "
                                   "path,pid,camid).")
        else:
            m = _NAME.match(os.path.basename(p))
            if not m:
                raise DatasetError(
                    f"cannot read identity / camera from the file name {os.path.basename(p)!r} "
                    "(expected <pid>_c<camid>_..., the VeRi-776 / VERI-Wild convention): pass "
                    "--labels CSV with path,pid,camid rows.")
            hit = (int(m.group(1)), int(m.group(2)))
        pids.append(hit[0])
        cams.append(hit[1])
    return pids, cams


# ----------------------------------------------------------------------------- pairs
def _pairs(qf, gf, q_pids, g_pids, q_cams, g_cams, metric, symmetric, block=256):
    """Kept pairs as arrays: distance (float32), positive (bool), query row (int32), camera
    pair key (int64, unordered); ``symmetric``: the same set, pairs i < j only."""
    import numpy as np
    import torch

    from fastreid_plugins.evaluation.chunked import block_distance_fn

    qf = torch.as_tensor(qf, dtype=torch.float32)
    gf = torch.as_tensor(gf, dtype=torch.float32)
    distance = block_distance_fn(qf, gf, [metric])  # the evaluator's distances
    ncam = int(max(q_cams.max(initial=0), g_cams.max(initial=0))) + 1
    out = {"d": [], "pos": [], "q": [], "cam": []}
    for s in range(0, len(qf), block):
        e = min(len(qf), s + block)
        d = distance(metric, s, e)
        same = q_pids[s:e, None] == g_pids[None, :]
        keep = ~(same & (q_cams[s:e, None] == g_cams[None, :]))
        if symmetric:
            keep &= np.arange(s, e)[:, None] < np.arange(len(gf))[None, :]
        r, c = np.nonzero(keep)
        out["d"].append(d[r, c].astype(np.float32))
        out["pos"].append(same[r, c])
        out["q"].append((r + s).astype(np.int32))
        a, b = q_cams[r + s], g_cams[c]
        out["cam"].append(np.minimum(a, b).astype(np.int64) * ncam + np.maximum(a, b))
    return {k: np.concatenate(v) for k, v in out.items()}, ncam


def threshold_at_far(d: np.ndarray, pos: np.ndarray, far: float,
                     weights: Optional[np.ndarray] = None) -> Tuple[float, float, float]:
    """``(threshold, tar, far_reached)``: the largest pair distance ``t`` whose (weighted) FAR,
    the share of negatives with ``d <= t``, is at most ``far``, the TAR at ``t`` and that FAR.

    Args:
        d (np.ndarray): (n,) pair distances; pos (np.ndarray): (n,) bool, positive pair.
        far (float): target FAR in (0, 1).
        weights (np.ndarray or None): (n,) pair weights (bootstrap multiplicities).

    Returns ``(-inf, 0, 0)`` when even the closest negative exceeds the target.

    Raises:
        ValueError: no positive or no (weighted) negative pair.
    """
    import numpy as np

    w = np.ones(len(d)) if weights is None else np.asarray(weights, dtype=np.float64)
    wp, wn = w[pos].sum(), w[~pos].sum()
    if wp <= 0 or wn <= 0:
        raise ValueError(f"need positive and negative pairs, got {int(pos.sum())} positive and "
                         f"{int((~pos).sum())} negative")
    order = np.argsort(d, kind="stable")
    ds, ps, ws = d[order], pos[order], w[order]
    last = np.r_[np.flatnonzero(np.diff(ds)), len(ds) - 1]  # last index of each distinct value
    fa = np.cumsum(np.where(ps, 0.0, ws))[last] / wn
    ta = np.cumsum(np.where(ps, ws, 0.0))[last] / wp
    k = int(np.searchsorted(fa, far * (1 + 1e-12), side="right")) - 1
    if k < 0:
        return float("-inf"), 0.0, 0.0
    return float(ds[last[k]]), float(ta[k]), float(fa[k])


def _bootstrap(pairs, nq, far, n_boot, seed, level):
    import numpy as np

    rng = np.random.default_rng(seed)
    ts, tars = [], []
    for _ in range(n_boot):
        mult = np.bincount(rng.integers(0, nq, nq), minlength=nq).astype(np.float64)
        w = mult[pairs["q"]]
        try:
            t, tar, _ = threshold_at_far(pairs["d"], pairs["pos"], far, w)
        except ValueError:
            continue
        ts.append(t)
        tars.append(tar)
    if not ts:
        return None
    a = (1 - level) / 2 * 100

    def q(x):
        return [float(v) for v in np.percentile(np.asarray(x), [a, 100 - a])]

    return {"level": level, "threshold": q(ts), "tar": q(tars), "resamples": len(ts),
            "seed": seed, "unit": "query"}


def calibrate(qf: Any, q_pids: Sequence[int], q_cams: Sequence[int], metric: str, far: float,
              gf: Any = None, g_pids: Optional[Sequence[int]] = None,
              g_cams: Optional[Sequence[int]] = None, n_boot: int = 200, seed: int = 0,
              level: float = 0.95, per_camera_pair: bool = False, min_pairs: int = 1000,
              max_pairs: int = MAX_PAIRS) -> Dict[str, Any]:
    """The threshold record for a target FAR (see the module docstring).

    Args:
        qf (array): (Q, D) features; q_pids, q_cams: (Q,) labels.
        metric (str): ``cosine`` or ``euclidean``.
        far (float): target FAR in (0, 1).
        gf, g_pids, g_cams: a gallery (None: the pairs of the query set among itself).
        n_boot (int): bootstrap resamples of the queries (0 = no interval).
        seed (int), level (float): bootstrap seed and confidence level.
        per_camera_pair (bool), min_pairs (int): per camera pair thresholds (negatives needed).
        max_pairs (int): queries are sub-sampled (seeded) above this many pairs.

    Returns:
        dict: ``threshold``, ``tar``, ``far`` (reached), ``target_far``, ``metric``, ``ci``,
        counts and optionally ``per_camera_pair``.

    Raises:
        ConfigError: bad ``far`` / ``metric`` / ``level``; ValueError: no positive or negative.
    """
    import numpy as np

    if not 0 < far < 1:
        raise ConfigError(f"--far must be in (0, 1), got {far}")
    if metric not in ("cosine", "euclidean"):
        raise ConfigError(f"metric must be cosine or euclidean, got {metric!r}")
    if not 0 < level < 1:
        raise ConfigError(f"--ci must be in (0, 1), got {level}")
    symmetric = gf is None
    qf = np.asarray(qf, dtype=np.float32)
    q_pids, q_cams = np.asarray(q_pids), np.asarray(q_cams)
    if symmetric:
        gf, g_pids, g_cams = qf, q_pids, q_cams
    gf, g_pids, g_cams = np.asarray(gf, dtype=np.float32), np.asarray(g_pids), np.asarray(g_cams)
    note = None
    n_pairs = len(qf) * len(gf) // (2 if symmetric else 1)
    if n_pairs > max_pairs and not symmetric:
        keep = np.sort(np.random.default_rng(seed).choice(
            len(qf), max(1, max_pairs // len(gf)), replace=False))
        note = f"{len(keep)} of {len(qf)} queries (seeded sample, {max_pairs:,} pairs at most)"
        logger.warning(f"calibration on {note}")
        qf, q_pids, q_cams = qf[keep], q_pids[keep], q_cams[keep]
    elif n_pairs > max_pairs:
        raise ConfigError(f"{len(qf)} images give {n_pairs:,} pairs, more than {max_pairs:,}: "
                          "pass a --gallery (queries are then sub-sampled) or fewer images.")
    pairs, ncam = _pairs(qf, gf, q_pids, g_pids, q_cams, g_cams, metric, symmetric)
    t, tar, reached = threshold_at_far(pairs["d"], pairs["pos"], far)
    rec: Dict[str, Any] = {
        "format": THRESHOLD_FORMAT, "metric": metric, "target_far": far, "threshold": t,
        "tar": tar, "far": reached, "accept": "distance <= threshold",
        "num_pos": int(pairs["pos"].sum()), "num_neg": int((~pairs["pos"]).sum()),
        "num_queries": int(len(qf)), "num_gallery": int(len(gf)),
        "pairs": "unordered pairs of one set" if symmetric else "query x gallery",
        "ci": _bootstrap(pairs, len(qf), far, n_boot, seed, level) if n_boot else None}
    if note:
        rec["subsampled"] = note
    if per_camera_pair:
        rec["min_pairs"] = int(min_pairs)
        rec["per_camera_pair"] = _per_camera(pairs, ncam, far, min_pairs, t)
    return rec


def _per_camera(pairs, ncam, far, min_pairs, global_t):
    import numpy as np

    out = {}
    for key in np.unique(pairs["cam"]):
        m = pairs["cam"] == key
        n_pos, n_neg = int(pairs["pos"][m].sum()), int((~pairs["pos"][m]).sum())
        name = f"{key // ncam}-{key % ncam}"
        if n_neg < min_pairs or n_pos == 0:
            out[name] = {"threshold": global_t, "fallback": True, "num_pos": n_pos,
                         "num_neg": n_neg}
            continue
        t, tar, reached = threshold_at_far(pairs["d"][m], pairs["pos"][m], far)
        out[name] = {"threshold": t, "tar": tar, "far": reached, "fallback": False,
                     "num_pos": n_pos, "num_neg": n_neg}
    return out


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m fastreid_plugins.tools.calibrate``."""
    p = argparse.ArgumentParser(prog="python -m fastreid_plugins.tools.calibrate",
                                description="Calibrate a distance threshold for a target FAR.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", metavar="DIR", help="extraction folder (tools/extract); "
                     "the queries when --gallery is given")
    src.add_argument("--dataset", metavar="NAME", help="a registered dataset: its test "
                     "split's images (needs --config-file and MODEL.WEIGHTS)")
    p.add_argument("--gallery", metavar="DIR", help="extraction folder of the gallery")
    p.add_argument("--labels", metavar="CSV", help="path,pid,camid rows (else parsed from "
                   "<pid>_c<camid>_ file names)")
    p.add_argument("--config-file", default=None)
    p.add_argument("--far", type=float, default=1e-3, help="target FAR (default %(default)s)")
    p.add_argument("--out", required=True, metavar="FILE.json")
    p.add_argument("--bootstrap", type=int, default=200, help="resamples (0 = no interval)")
    p.add_argument("--ci", type=float, default=0.95, help="confidence level")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-camera-pair", action="store_true")
    p.add_argument("--min-pairs", type=int, default=1000,
                   help="negative pairs a camera pair needs for its own threshold")
    p.add_argument("--max-pairs", type=int, default=MAX_PAIRS)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of a user error (taken by cli.run_cli)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of "
                   "--config-file (MODEL.WEIGHTS path/to/model.pth)")
    return p


def _from_folder(args):
    from fastreid_plugins.tools.search import FeatureStore

    q = FeatureStore(args.features)
    qp, qc = labels_from_paths(q.paths(), args.labels)
    src = {"features": os.path.abspath(args.features)}
    gal = None
    if args.gallery:
        g = FeatureStore(args.gallery)
        if (g.metric, g.dim) != (q.metric, q.dim):
            raise DatasetError(f"--features {args.features!r} ({q.metric}, D={q.dim}) and "
                               f"--gallery {args.gallery!r} ({g.metric}, D={g.dim}) differ.")
        gp, gc = labels_from_paths(g.paths(), args.labels)
        gal = (g.features(), gp, gc)
        src["gallery"] = os.path.abspath(args.gallery)
    man = q.manifest
    model = {"model_sha256": man.get("weights_sha256"), "weights": man.get("weights")}
    return q.features(), qp, qc, q.metric, gal, model, src


def _from_dataset(args):
    import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

    from fastreid.data.datasets import DATASET_REGISTRY

    from fastreid_plugins.data import datasets_root
    from fastreid_plugins.tools.extract import FeatureExtractor

    if not args.config_file:
        raise ConfigError("--dataset needs --config-file and MODEL.WEIGHTS (the model whose "
                          "threshold is calibrated).")
    ext = FeatureExtractor(args.config_file, opts=args.opts, batch_size=args.batch_size)
    try:
        data = DATASET_REGISTRY.get(args.dataset)(root=datasets_root())
    except KeyError:
        raise ConfigError(f"--dataset {args.dataset!r} is not a registered dataset") from None
    items = list(data.query) + list(data.gallery)
    feats = ext.extract([it[0] for it in items])
    desc = ext.describe()
    model = {"model_sha256": desc["weights_sha256"], "weights": desc["weights"]}
    src = {"dataset": args.dataset, "config_file": os.path.abspath(args.config_file)}
    return (feats, [int(it[1]) for it in items], [int(it[2]) for it in items],
            desc["metric"], None, model, src)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the calibration CLI; returns the threshold record (also written to ``--out``).

    Raises:
        UserError: bad arguments or input; :func:`fastreid_plugins.cli.run_cli` prints it.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.dataset is None and args.opts:
        raise ConfigError(f"KEY VALUE overrides {args.opts} apply to --dataset runs only.")
    qf, qp, qc, metric, gal, model, src = (_from_dataset(args) if args.dataset
                                           else _from_folder(args))
    gf, gp, gc = gal or (None, None, None)
    try:
        rec = calibrate(qf, qp, qc, metric, args.far, gf, gp, gc, args.bootstrap, args.seed,
                        args.ci, args.per_camera_pair, args.min_pairs, args.max_pairs)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise DatasetError(f"cannot calibrate on {src}: {e}") from None
    rec.update(model, source=src)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(rec, f, indent=1)
    ci = rec["ci"]
    print(f"threshold {rec['threshold']:.6g} ({metric}) at FAR {rec['far']:.3g} <= "
          f"{args.far:g}: TAR {rec['tar']:.4f}"
          + (f" [{ci['tar'][0]:.4f}, {ci['tar'][1]:.4f}], threshold [{ci['threshold'][0]:.6g}, "
             f"{ci['threshold'][1]:.6g}] ({ci['level']:.0%} bootstrap CI)" if ci else "")
          + f"; {rec['num_pos']:,} positive / {rec['num_neg']:,} negative pairs -> {args.out}")
    return rec


if __name__ == "__main__":
    from fastreid_plugins.cli import run_cli

    run_cli(main, sys.argv[1:])
