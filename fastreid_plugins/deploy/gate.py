"""The accuracy gate: does an exported engine give the PyTorch model's answers on real images?

Both models' features of the same labelled split (query + gallery, e.g. the config's test set)
are compared row by row (cosine similarity of each image's two features: min and mean) and by
what a user sees (Rank-1, mAP and mINP of each, computed by
:func:`fastreid_plugins.evaluation.metrics_from_distmat` with the config's ``TEST.METRIC``, and
the engine's differences). The gate passes when ``min cosine >= min_cosine`` and
``mAP(engine) >= mAP(PyTorch) - max_map_drop``.

With few queries the mAP part is coarse: one query's AP moves the mAP by up to ``100 / Q``
points (the report states ``Q`` and this resolution); the cosine part is per image and does not
depend on the split's size.
"""

from typing import Any, Dict, Optional

import numpy as np

from . import MAX_MAP_DROP, MIN_COSINE

__all__ = ["gate_report", "format_report", "cosine_rows"]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) cosine similarity of the rows of two (N, D) arrays (float64; a zero row gives 0).

    Raises:
        ValueError: shapes differ.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"features of different shapes: {a.shape} vs {b.shape}")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-300)


def _metrics(feats, pids, camids, num_query, metric):
    import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

    import torch
    from fastreid.utils.compute_dist import build_dist

    from fastreid_plugins.evaluation import metrics_from_distmat

    f = torch.from_numpy(np.asarray(feats, np.float32))
    if metric == "cosine":
        f = torch.nn.functional.normalize(f, dim=1)
    dist = build_dist(f[:num_query], f[num_query:], metric)
    m = metrics_from_distmat(dist, pids[:num_query], pids[num_query:], camids[:num_query],
                             camids[num_query:])
    return {k: float(m[k]) for k in ("Rank-1", "mAP", "mINP")}


def gate_report(ref: np.ndarray, got: np.ndarray, pids: np.ndarray, camids: np.ndarray,
                num_query: int, metric: str = "cosine", precision: str = "fp32",
                min_cosine: Optional[float] = None, max_map_drop: float = MAX_MAP_DROP
                ) -> Dict[str, Any]:
    """Compare engine features ``got`` with PyTorch features ``ref`` of the same images.

    Args:
        ref, got (np.ndarray): (N, D) features, rows = the split's images, the first
            ``num_query`` the queries, the rest the gallery.
        pids, camids (np.ndarray): (N,) identity and camera labels.
        num_query (int): Q.
        metric (str): ``cosine`` or ``euclidean`` (``TEST.METRIC``).
        precision (str): the engine's precision (picks the default ``min_cosine``).
        min_cosine (float or None): default :data:`fastreid_plugins.deploy.MIN_COSINE`.
        max_map_drop (float): largest allowed ``mAP(ref) - mAP(got)``, points of %.

    Returns:
        dict: ``cosine`` {min, mean}, ``pytorch`` / ``engine`` {Rank-1, mAP, mINP} (%),
        ``difference`` (engine - PyTorch), ``thresholds``, ``split`` {queries, gallery,
        map_resolution}, ``passed`` (bool), ``failures`` (list of str), ``note``.

    Raises:
        ValueError: shapes / labels inconsistent, ``num_query`` out of range.
    """
    if min_cosine is None:
        min_cosine = MIN_COSINE.get(precision, MIN_COSINE["fp32"])
    pids, camids = np.asarray(pids), np.asarray(camids)
    n = len(ref)
    if len(pids) != n or len(camids) != n or not 0 < num_query < n:
        raise ValueError(f"{n} feature rows, {len(pids)} identities, {len(camids)} cameras, "
                         f"{num_query} queries: inconsistent")
    cos = cosine_rows(ref, got)
    a = _metrics(ref, pids, camids, num_query, metric)
    b = _metrics(got, pids, camids, num_query, metric)
    diff = {k: b[k] - a[k] for k in a}
    failures = []
    if not cos.min() >= min_cosine:
        failures.append(f"min cosine {cos.min():.6f} < {min_cosine}")
    if not diff["mAP"] >= -max_map_drop:
        failures.append(f"mAP drop {-diff['mAP']:.2f} points > {max_map_drop}")
    return {"precision": precision, "metric": metric,
            "cosine": {"min": float(cos.min()), "mean": float(cos.mean())},
            "pytorch": a, "engine": b, "difference": diff,
            "thresholds": {"min_cosine": float(min_cosine), "max_map_drop": float(max_map_drop)},
            "split": {"queries": int(num_query), "gallery": int(n - num_query),
                      "map_resolution": 100.0 / num_query},
            "passed": not failures, "failures": failures,
            "note": (f"{num_query} queries: one query's AP moves mAP by up to "
                     f"{100.0 / num_query:.1f} points, so the mAP part of the gate is coarse "
                     "on a split this small (the 57-image VeRi sample); the per-image cosine "
                     "is not.")}


def format_report(r: Dict[str, Any]) -> str:
    """The gate's numbers as a few printable lines."""
    lines = [f"accuracy gate ({r['precision']}, {r['split']['queries']} queries / "
             f"{r['split']['gallery']} gallery images): "
             + ("PASSED" if r["passed"] else "FAILED: " + "; ".join(r["failures"])),
             f"  cosine(engine, PyTorch): min {r['cosine']['min']:.6f}, mean "
             f"{r['cosine']['mean']:.6f} (required min >= {r['thresholds']['min_cosine']})"]
    for k in ("Rank-1", "mAP", "mINP"):
        lines.append(f"  {k:<6} PyTorch {r['pytorch'][k]:6.2f}  engine {r['engine'][k]:6.2f}  "
                     f"difference {r['difference'][k]:+.2f}")
    lines.append(f"  allowed mAP drop {r['thresholds']['max_map_drop']} points; {r['note']}")
    return "\n".join(lines)
