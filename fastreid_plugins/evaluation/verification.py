"""Verification metrics ("same vehicle or not?"): ROC, TAR at fixed FAR, EER and AUC, streamed.

Pairs: every (query, gallery) pair under the junk rule of CMC / mAP
(:mod:`fastreid_plugins.evaluation.rank`): a gallery image with the query's identity *and* camera
is left out; one with the query's identity from another camera is a **positive** pair, one of
another identity a **negative** pair. Under the VehicleID protocol the pairs are those of each
trial's query/gallery draw (every image its own camera: nothing is left out). A pair is
*accepted* ("same vehicle") when its distance is ``<= t`` for a threshold ``t``:

* TAR(t) (true accept rate) = accepted positives / positives; FAR(t) (false accept rate) =
  accepted negatives / negatives; the ROC is TAR against FAR over all ``t``.
* TAR@FAR=f: the largest TAR of a ROC point whose FAR is ``<= f`` (no interpolation: the
  threshold reported with it reaches that TAR at a FAR that does not exceed ``f`` on these pairs).
* EER: the rate where FAR = 1 - TAR (false reject rate), linearly interpolated between the two
  ROC points around the crossing (the threshold likewise).
* AUC: area under the ROC, trapezoidal (ties count half, as ``sklearn.metrics.roc_auc_score``).

Bounded memory. The pairs of a VERI-Wild-Large evaluation (10,000 x 128,517 = 1.3e9) do not fit,
so each block of query rows is reduced to two fixed-bin histograms (positives, negatives) of
``n_bins`` bins over ``[lo, hi]``: ``[0, 2]`` for the cosine distance, ``[0, (max|q| + max|g|)^2]``
for the squared euclidean distance, ``[0, max(1, hi_d)]`` after re-ranking (Zhong et al. Eq. 12
mixes a Jaccard distance in [0, 1] with the original one). A value outside is counted in the
first / last bin. The ROC points are then exact at the bin edges (thresholds ``lo + k w``,
``w = (hi - lo) / n_bins``, the **bin error**): TAR@FAR's threshold is off by at most ``w`` from
the exact one, its TAR by at most the share of positives within ``w`` of that threshold; EER and
AUC interpolate linearly inside a bin (as if positives and negatives of a bin were spread
uniformly: AUC is off by at most ``sum_k pos_k neg_k / (2 P N)``). Memory: ``2 n_bins`` int64
counts (1 MiB at the default 65,536 bins) plus the evaluator's row group.

When all the pairs fit (``Q G <= exact_pairs``), the distances themselves are kept and the
metrics are exact (the ROC of ``sklearn.metrics.roc_curve`` on ``-distance``).

Reference: the ROC / EER / TAR@FAR conventions of face verification (e.g. IJB-C, Maze et al.
ICB 2018); FastReID's ``demo/plot_roc_with_pickle.py`` plots the same ROC from a full matrix.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..config import PLUGIN_DEFAULTS
from ..errors import ConfigError

__all__ = ["PairHistogram", "distance_range", "roc_summary", "FARS", "DEFAULT_BINS",
           "DEFAULT_EXACT_PAIRS", "VERIFICATION_KEYS", "plot_verification", "scalar_results",
           "json_summaries", "dense_histograms", "histograms_for", "load_threshold",
           "camera_number", "result_thresholds"]

#: the FAR operating points reported (TAR@FAR)
FARS: Tuple[float, ...] = (1e-2, 1e-3, 1e-4)
DEFAULT_BINS = PLUGIN_DEFAULTS["TEST.VERIFICATION.BINS"]
DEFAULT_EXACT_PAIRS = PLUGIN_DEFAULTS["TEST.VERIFICATION.EXACT_PAIRS"]
#: the scalar keys (in %) the evaluator adds to its results (console table, tensorboard)
VERIFICATION_KEYS: Tuple[str, ...] = tuple(f"TAR@{_f:.0e}".replace("e-0", "e-") for _f in FARS) \
    + ("EER", "AUC")
#: points of the ROC stored in the results JSON (log-spaced in FAR)
ROC_POINTS = 200


def distance_range(metric: str, q_norm_max: float = 0.0, g_norm_max: float = 0.0,
                   rerank: bool = False) -> Tuple[float, float]:
    """Histogram range ``(lo, hi)`` of a metric's distances (see the module docstring).

    Args:
        metric (str): ``cosine`` (``1 - cos``, in [0, 2]) or ``euclidean`` (squared, FastReID's).
        q_norm_max, g_norm_max (float): largest query / gallery feature norm (euclidean).
        rerank (bool): the distances are re-ranked ones (Eq. 12: up to ``max(1, hi)``).

    Raises:
        ValueError: another metric.
    """
    if metric == "cosine":
        hi = 2.0
    elif metric == "euclidean":
        hi = float(q_norm_max + g_norm_max) ** 2
    else:
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    if rerank:
        hi = max(1.0, hi)
    return 0.0, max(hi, 1e-12)


class PairHistogram:
    """Positive / negative pair distances of an evaluation, accumulated block by block.

    Args:
        lo, hi (float): histogram range (:func:`distance_range`).
        n_bins (int): number of bins (bin error ``(hi - lo) / n_bins``).
        exact (bool): also keep the distances (exact metrics; only where all pairs fit).

    Raises:
        ValueError: ``n_bins < 2`` or ``hi <= lo``.
    """

    def __init__(self, lo: float, hi: float, n_bins: int = DEFAULT_BINS,
                 exact: bool = False) -> None:
        if int(n_bins) < 2 or not hi > lo:
            raise ValueError(f"need n_bins >= 2 and hi > lo, got n_bins={n_bins}, "
                             f"range=({lo}, {hi})")
        self.lo, self.hi, self.n_bins = float(lo), float(hi), int(n_bins)
        self.width = (self.hi - self.lo) / self.n_bins
        self.pos = np.zeros(self.n_bins, dtype=np.int64)
        self.neg = np.zeros(self.n_bins, dtype=np.int64)
        self.exact = bool(exact)
        self._pos_d: List[np.ndarray] = []
        self._neg_d: List[np.ndarray] = []

    def add(self, dist: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
            q_camids: np.ndarray, g_camids: np.ndarray) -> None:
        """Count the pairs of a block of query rows.

        Args:
            dist (np.ndarray): (b, G) distances; q_pids, q_camids: (b,); g_pids, g_camids: (G,).
        """
        r, c = np.nonzero(g_pids[None, :] == q_pids[:, None])  # positives and junk
        self.add_sparse(dist, r, c, g_camids[c] != q_camids[r])

    def add_sparse(self, dist: np.ndarray, r: np.ndarray, c: np.ndarray,
                   keep: np.ndarray) -> None:
        """:meth:`add` from the same-identity entries ``(r, c)`` of ``dist`` (row / column
        index lists) and which of them are positives (``keep``; the others are junk): the
        ranker's index lists (:func:`~fastreid_plugins.evaluation.rank.rank_block`), so that
        one pass over a block gives both."""
        x = dist - np.asarray(self.lo, dist.dtype) if self.lo else dist
        x = x * np.asarray(1.0 / self.width, dist.dtype)  # a new array: ``dist`` is untouched
        np.clip(x, 0, self.n_bins - 1, out=x)
        idx = x.astype(np.int32)
        del x
        same_bins = idx[r, c]
        # every pair counted as a negative, then the same-identity ones taken out again
        self.neg += np.bincount(idx.ravel(), minlength=self.n_bins)
        self.neg -= np.bincount(same_bins, minlength=self.n_bins)
        self.pos += np.bincount(same_bins[keep], minlength=self.n_bins)
        if self.exact:
            self._pos_d.append(np.asarray(dist[r[keep], c[keep]], dtype=np.float64))
            neg = np.ones(dist.shape, dtype=bool)
            neg[r, c] = False
            self._neg_d.append(np.asarray(dist[neg], dtype=np.float64))

    @property
    def num_pos(self) -> int:
        return int(self.pos.sum())

    @property
    def num_neg(self) -> int:
        return int(self.neg.sum())

    def merge(self, other: "PairHistogram") -> "PairHistogram":
        """Add ``other``'s counts (same range and bins) to this one (exact only if both are)."""
        if (other.lo, other.hi, other.n_bins) != (self.lo, self.hi, self.n_bins):
            raise ValueError("cannot merge histograms of different ranges / bins")
        self.pos += other.pos
        self.neg += other.neg
        self.exact = self.exact and other.exact
        self._pos_d += other._pos_d
        self._neg_d += other._neg_d
        return self

    def distances(self) -> Tuple[np.ndarray, np.ndarray]:
        """The kept positive and negative distances (``exact`` only).

        Raises:
            ValueError: the histogram was not built with ``exact=True``.
        """
        if not self.exact:
            raise ValueError("distances are kept only with exact=True")
        return (np.concatenate(self._pos_d) if self._pos_d else np.zeros(0),
                np.concatenate(self._neg_d) if self._neg_d else np.zeros(0))

    def roc(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(far, tar, threshold)`` ROC points, threshold ascending from accepting nothing.

        Exact mode: one point per distinct distance (accept ``d <= threshold``), as
        ``sklearn.metrics.roc_curve(y, -d, drop_intermediate=False)``. Histogram mode: one point
        per bin edge (accept ``d < lo + k w``; the last edge accepts everything).

        Raises:
            ValueError: no positive or no negative pair.
        """
        if self.num_pos == 0 or self.num_neg == 0:
            raise ValueError(f"verification needs positive and negative pairs, got "
                             f"{self.num_pos} positive and {self.num_neg} negative")
        if self.exact:
            pd, nd = self.distances()
            d = np.concatenate([pd, nd])
            y = np.concatenate([np.ones(len(pd), bool), np.zeros(len(nd), bool)])
            order = np.argsort(d, kind="stable")
            d, y = d[order], y[order]
            last = np.r_[np.flatnonzero(np.diff(d)), len(d) - 1]  # last index of each value
            tp = np.cumsum(y)[last]
            fp = (last + 1) - tp
            thr = np.r_[-np.inf, d[last]]
        else:
            tp, fp = np.cumsum(self.pos), np.cumsum(self.neg)
            thr = np.r_[self.lo, self.lo + self.width * np.arange(1, self.n_bins + 1)]
            thr[-1] = np.inf  # the last bin also holds the values above hi
        tar = np.r_[0, tp] / self.num_pos
        far = np.r_[0, fp] / self.num_neg
        return far, tar, thr

    def summary(self, fars: Sequence[float] = FARS) -> Dict[str, Any]:
        """The metrics (rates as fractions in [0, 1]) and a ROC of at most ``ROC_POINTS`` points.

        Returns:
            dict: ``tar_at_far`` {far: TAR}, ``threshold_at_far`` {far: threshold}, ``eer``,
            ``eer_threshold``, ``auc``, ``num_pos``, ``num_neg``, ``far_resolution``
            (``1 / num_neg``: a smaller FAR means "no negative accepted"), ``exact``, ``bin_width``
            (0 when exact), ``range``, ``roc`` {``far``, ``tar``, ``threshold``} lists.
        """
        far, tar, thr = self.roc()
        out = roc_summary(far, tar, thr, fars)
        # below one negative in num_neg, a FAR cannot be told from 0: TAR@FAR there is the TAR
        # of accepting no negative at all
        out.update(num_pos=self.num_pos, num_neg=self.num_neg, exact=self.exact,
                   far_resolution=1.0 / self.num_neg,
                   bin_width=0.0 if self.exact else self.width, range=[self.lo, self.hi],
                   n_bins=self.n_bins)
        return out


def roc_summary(far: np.ndarray, tar: np.ndarray, thr: np.ndarray,
                fars: Sequence[float] = FARS) -> Dict[str, Any]:
    """TAR@FAR, EER and AUC of ROC points sorted by ascending threshold (see the module docstring).

    Args:
        far, tar (np.ndarray): (K,) non-decreasing rates in [0, 1], starting at (0, 0).
        thr (np.ndarray): (K,) the threshold of each point.
        fars (sequence): FAR operating points.
    """
    out: Dict[str, Any] = {"tar_at_far": {}, "threshold_at_far": {}}
    for f in fars:
        k = int(np.searchsorted(far, f, side="right")) - 1  # last point with FAR <= f
        out["tar_at_far"][f] = float(tar[k])
        out["threshold_at_far"][f] = float(thr[k])
    frr = 1.0 - tar
    gap = far - frr  # increasing from -1 to >= 0
    j = int(np.searchsorted(gap, 0.0, side="left"))  # first point with FAR >= FRR
    if j == 0:
        eer, eer_t = 0.0, float(thr[0])
    else:
        a, b = gap[j - 1], gap[j]
        s = 0.0 if b == a else -a / (b - a)
        eer = float(far[j - 1] + s * (far[j] - far[j - 1]))
        t0, t1 = thr[j - 1], thr[j]
        eer_t = float(t1 if not np.isfinite(t0) else t0 if not np.isfinite(t1)
                      else t0 + s * (t1 - t0))
    out["eer"], out["eer_threshold"] = eer, eer_t
    out["auc"] = float(np.trapezoid(tar, far)) if hasattr(np, "trapezoid") \
        else float(np.trapz(tar, far))
    # a compact ROC for the JSON / plot: the points closest to a log-spaced FAR grid
    grid = np.unique(np.r_[0, np.logspace(-6, 0, ROC_POINTS - 1)])
    keep = np.unique(np.clip(np.searchsorted(far, grid, side="right") - 1, 0, len(far) - 1))
    out["roc"] = {"far": far[keep].tolist(), "tar": tar[keep].tolist(),
                  "threshold": [float(x) if np.isfinite(x) else None for x in thr[keep]]}
    return out


def scalar_results(summary: Dict[str, Any]) -> Dict[str, float]:
    """The evaluator's scalar keys (:data:`VERIFICATION_KEYS`, in %) of a :meth:`summary`."""
    res = {k: summary["tar_at_far"][f] * 100 for k, f in zip(VERIFICATION_KEYS, FARS)}
    res["EER"] = summary["eer"] * 100
    res["AUC"] = summary["auc"] * 100
    return res


def plot_verification(hist: PairHistogram, summary: Dict[str, Any], path: str, title: str = "",
                      far: float = 1e-3, plot_bins: int = 200) -> str:
    """One PNG: positive / negative distance histograms (densities) with the threshold at
    ``far``, and the ROC with a log FAR axis (matplotlib, Agg backend).

    Returns:
        str: ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # coarser bins for the picture: sum groups of the fine bins
    group = max(1, hist.n_bins // plot_bins)
    n = hist.n_bins // group * group
    pos = hist.pos[:n].reshape(-1, group).sum(1)
    neg = hist.neg[:n].reshape(-1, group).sum(1)
    pos[-1] += hist.pos[n:].sum()
    neg[-1] += hist.neg[n:].sum()
    edges = hist.lo + hist.width * group * np.arange(len(pos) + 1)
    used = np.flatnonzero((pos + neg) > 0)
    lo_i, hi_i = (used[0], used[-1] + 1) if len(used) else (0, len(pos))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    w = edges[1] - edges[0]
    for counts, name, color in ((neg, "negative pairs", "tab:red"),
                                (pos, "positive pairs", "tab:green")):
        dens = counts / max(1, counts.sum()) / w
        ax1.stairs(dens[lo_i:hi_i], edges[lo_i:hi_i + 1], label=f"{name} ({counts.sum():,})",
                   color=color, fill=True, alpha=0.4)
    thr = summary["threshold_at_far"].get(far)
    if thr is not None and np.isfinite(thr):
        ax1.axvline(thr, color="k", ls="--",
                    label=f"threshold {thr:.4g} (FAR {far:g}, TAR "
                          f"{summary['tar_at_far'][far]:.3f})")
    ax1.set_xlabel("distance")
    ax1.set_ylabel("density")
    ax1.legend(fontsize=8)
    roc = summary["roc"]
    f, t = np.asarray(roc["far"]), np.asarray(roc["tar"])
    ok = f > 0
    ax2.plot(f[ok], t[ok], color="tab:blue")
    ax2.set_xscale("log")
    ax2.set_xlim(max(1e-6, 0.5 / max(1, summary["num_neg"])), 1)
    ax2.set_ylim(0, 1.01)
    ax2.set_xlabel("FAR (false accept rate, log)")
    ax2.set_ylabel("TAR (true accept rate)")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.set_title(f"AUC {summary['auc']:.4f}, EER {summary['eer']:.4f}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def json_summaries(summaries: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """:meth:`PairHistogram.summary` dicts with string FAR keys (``"0.001"``), for JSON."""
    out = {}
    for name, s in summaries.items():
        s = dict(s)
        for k in ("tar_at_far", "threshold_at_far"):
            s[k] = {f"{f:g}": (v if np.isfinite(v) else None) for f, v in s[k].items()}
        out[name] = s
    return out


def dense_histograms(dist: Any, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
                     g_camids: np.ndarray, metric: str,
                     opts: Dict[str, Any]) -> Dict[str, PairHistogram]:
    """``{"<metric>+rerank": PairHistogram}`` of a full (Q, G) re-ranked distance matrix (the
    evaluator's ``TEST.RERANK.TYPE fastreid`` path), counted in row groups."""
    dist = dist.cpu().numpy() if hasattr(dist, "cpu") else np.asarray(dist)
    hi = max(1.0, float(dist.max()) if dist.size else 1.0)
    exact = dist.size <= int(opts.get("exact_pairs", DEFAULT_EXACT_PAIRS))
    h = PairHistogram(0.0, hi, int(opts.get("n_bins", DEFAULT_BINS)), exact=exact)
    step = max(1, (1 << 21) // max(1, dist.shape[1]))
    for r in range(0, len(dist), step):
        h.add(dist[r:r + step], q_pids[r:r + step], g_pids, q_camids[r:r + step], g_camids)
    return {f"{metric}+rerank": h}


def histograms_for(metrics: Sequence[str], rerank: bool, n_bins: int, exact: bool,
                   norms: Optional[Dict[str, float]] = None) -> Dict[str, PairHistogram]:
    """One :class:`PairHistogram` per distance: each metric of ``metrics`` and, with
    ``rerank``, ``<metrics[0]>+rerank`` (the re-ranked distances of the run's metric)."""
    norms = norms or {}
    qn, gn = norms.get("q", 0.0), norms.get("g", 0.0)
    out = {m: PairHistogram(*distance_range(m, qn, gn), n_bins=n_bins, exact=exact)
           for m in metrics}
    if rerank:
        lo, hi = distance_range(metrics[0], qn, gn, rerank=True)
        out[f"{metrics[0]}+rerank"] = PairHistogram(lo, hi, n_bins=n_bins, exact=exact)
    return out


def load_threshold(spec: str, metric: str, model_sha256: Optional[str] = None
                   ) -> Tuple[float, Dict[str, Any]]:
    """The threshold of ``spec``, a number or a threshold file of :func:`calibrate`.

    Args:
        spec (str): ``"0.35"`` or a path to a threshold JSON.
        metric (str): the metric of the features it is applied to.
        model_sha256 (str or None): their model's SHA-256 (None: unknown, not checked).

    Returns:
        tuple: ``(threshold, record)`` (record ``{"threshold": value}`` for a number).

    Raises:
        ConfigError: neither a number nor a readable threshold file (of
            ``python -m fastreid_plugins.tools.calibrate``); a file of another metric or another
            model (both named).
    """
    try:
        return float(spec), {"threshold": float(spec), "source": "value"}
    except ValueError:
        pass
    if not os.path.isfile(spec):
        raise ConfigError(f"--threshold {spec!r} is neither a number nor a threshold file "
                          "(python -m fastreid_plugins.tools.calibrate writes one).")
    try:
        with open(spec, encoding="utf-8") as f:
            rec = json.load(f)
        t = float(rec["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--threshold {spec!r} is not a threshold file: {e}") from None
    if rec.get("metric") != metric:
        raise ConfigError(f"--threshold {spec!r} was calibrated for metric {rec.get('metric')!r}"
                          f", these features use {metric!r}: calibrate again with them.")
    file_sha = rec.get("model_sha256")
    if file_sha and model_sha256 and file_sha != model_sha256:
        raise ConfigError(f"--threshold {spec!r} was calibrated for the model with SHA-256 "
                          f"{file_sha[:16]}... ({rec.get('weights', 'weights unknown')}), these "
                          f"features come from {model_sha256[:16]}...: calibrate again with "
                          "this model.")
    return t, dict(rec, source=os.path.abspath(spec))


_QUERY_CAMERA = re.compile(r"^\d+_c(\d+)")
_CAMERA = re.compile(r"^c?(\d+)$")


def camera_number(value: Any, from_name: bool = False) -> Optional[int]:
    """The camera id of a gallery ``camera`` value (``"c002"`` or ``2`` -> 2) or, with
    ``from_name``, of a VeRi / VERI-Wild style file name (``0002_c002_...`` -> 2), the ids that
    ``tools.calibrate`` keys its per-camera-pair thresholds with; None when it has none."""
    if value is None:
        return None
    if from_name:
        m = _QUERY_CAMERA.match(os.path.basename(str(value)))
    else:
        m = _CAMERA.match(str(value))
    return int(m.group(1)) if m else None


def result_thresholds(record: Dict[str, Any], query_paths: Sequence[str],
                      gallery_cameras: Sequence[Sequence[Any]]) -> np.ndarray:
    """The threshold of every (query, result) of a search, (Q, K) float64.

    ``record`` is :func:`load_threshold`'s. Its ``per_camera_pair`` thresholds (``tools.calibrate
    --per-camera-pair``: keys ``"a-b"``, a <= b) apply where the query's camera (from its
    VeRi-style file name) and the result's (``gallery_cameras[q][r]``: ``"c002"``, 2 or a
    VeRi-style path) are both known and the pair was calibrated; the global threshold elsewhere
    (also the value of a pair calibrated with too few pairs: ``"fallback": true``).
    """
    glob = float(record["threshold"])
    k = max((len(row) for row in gallery_cameras), default=0)
    out = np.full((len(query_paths), k), glob, np.float64)
    pairs = record.get("per_camera_pair") or {}
    if not pairs:
        return out
    for qi, qp in enumerate(query_paths):
        qc = camera_number(qp, from_name=True)
        if qc is None:
            continue
        for r, gc in enumerate(gallery_cameras[qi]):
            gc = camera_number(gc) if camera_number(gc) is not None else camera_number(
                gc, from_name=True)
            if gc is None:
                continue
            hit = pairs.get(f"{min(qc, gc)}-{max(qc, gc)}")
            if hit is not None:
                out[qi, r] = float(hit["threshold"])
    return out
