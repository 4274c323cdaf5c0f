"""Re-id evaluator for vehicle datasets: Rank-k, mAP and mINP, VehicleID's multi-trial protocol.

Reference:
    - Metrics: see :mod:`fastreid_plugins.evaluation.rank` (Zheng et al. ICCV 2015; Ye et al.
      TPAMI 2021 for mINP; MFG-Net Eq. 4-6).
    - VehicleID protocol: Liu et al., "Deep Relative Distance Learning: Tell the Difference
      Between Similar Vehicles", CVPR 2016: for each test identity one image is drawn at random
      into the gallery and the rest are queries; results are averaged over repeated draws.
"""

from __future__ import annotations

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

import copy
import json
import logging
import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from fastreid.evaluation.evaluator import DatasetEvaluator
from fastreid.evaluation.query_expansion import aqe
from fastreid.utils import comm
from fastreid.utils.compute_dist import build_dist

from ..config import require_plugins_config
from .chunked import evaluate_chunked, options_from_cfg
from .rank import evaluate_rank
from .rerank import rerank_distance, rerank_type
from .verification import (
    FARS,
    VERIFICATION_KEYS,
    dense_histograms,
    json_summaries,
    plot_verification,
    scalar_results,
)

if TYPE_CHECKING:
    from fastreid.config import CfgNode
    from numpy.typing import ArrayLike

logger = logging.getLogger(__name__)

__all__ = ["VehicleReidEvaluator", "metrics_from_distmat", "metrics_from_curves",
           "vehicleid_split"]


def metrics_from_distmat(dist: Union[np.ndarray, torch.Tensor], q_pids: ArrayLike,
                         g_pids: ArrayLike, q_camids: ArrayLike,
                         g_camids: ArrayLike) -> Dict[str, float]:
    """Rank-1/5/10, mAP, mINP (all in %) and FastReID's ``metric`` = (mAP + Rank-1) / 2.

    Args:
        dist (np.ndarray): (Q, G) distances.
        q_pids, q_camids (np.ndarray): (Q,) labels; g_pids, g_camids (np.ndarray): (G,) labels.

    Returns:
        OrderedDict: ``Rank-1``, ``Rank-5``, ``Rank-10``, ``mAP``, ``mINP``, ``metric``.
    """
    return metrics_from_curves(*evaluate_rank(dist, q_pids, g_pids, q_camids, g_camids))


def metrics_from_curves(cmc: np.ndarray, all_ap: Union[np.ndarray, Sequence[float]],
                        all_inp: Union[np.ndarray, Sequence[float]]) -> Dict[str, float]:
    """The reported metrics (all in %) from the ranking curves of
    :func:`~fastreid_plugins.evaluation.rank.evaluate_rank` /
    :func:`~fastreid_plugins.evaluation.chunked.evaluate_chunked`.

    Rank-k = CMC at k (the last CMC value where the gallery is shorter than k); mAP = mean AP;
    mINP = mean INP (Ye et al. TPAMI 2021; MFG-Net Eq. 5); ``metric`` = (mAP + Rank-1) / 2,
    FastReID's model-selection score.

    Args:
        cmc (np.ndarray): (M,) cumulative match curve in [0, 1], averaged over valid queries.
        all_ap (np.ndarray): (Q',) average precision of each valid query, in [0, 1].
        all_inp (np.ndarray): (Q',) inverse negative penalty of each valid query, in [0, 1].

    Returns:
        OrderedDict: ``Rank-1``, ``Rank-5``, ``Rank-10``, ``mAP``, ``mINP``, ``metric``.
    """
    res = OrderedDict()
    for r in (1, 5, 10):
        res[f"Rank-{r}"] = float(cmc[min(r, len(cmc)) - 1]) * 100
    res["mAP"] = float(np.mean(all_ap)) * 100
    res["mINP"] = float(np.mean(all_inp)) * 100
    res["metric"] = (res["mAP"] + res["Rank-1"]) / 2
    return res


def vehicleid_split(pids: ArrayLike,
                    rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One VehicleID trial: one random image per identity into the gallery, the rest queries.

    Args:
        pids (np.ndarray): (N,) identity of every test image.
        rng (np.random.Generator): source of randomness (seeded by the caller).

    Returns:
        tuple: ``(query_idx, gallery_idx)`` index arrays; ``gallery_idx`` has one entry per
        identity, ``query_idx`` all other images.
    """
    pids = np.asarray(pids)
    order = rng.permutation(len(pids))
    _, first = np.unique(pids[order], return_index=True)
    gallery = np.sort(order[first])
    mask = np.ones(len(pids), dtype=bool)
    mask[gallery] = False
    return np.flatnonzero(mask), gallery


def _to_tensorboard(tag, png):
    """Put a picture into FastReID's current event storage (written to tensorboard by the
    trainer's ``TensorboardXWriter``); nothing outside training (no storage)."""
    from fastreid.utils.events import get_event_storage

    try:
        storage = get_event_storage()
    except AssertionError:  # no EventStorage: --eval-only, a tool
        return
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB")).transpose(2, 0, 1).copy()
    storage.put_image(tag, img)


class VehicleReidEvaluator(DatasetEvaluator):
    """Collects features and reports Rank-1/5/10, mAP and mINP; writes them as JSON.

    Two protocols:

    * ``"standard"`` (VeRi-776, VERI-Wild, VRIC, ...): the first ``num_query`` processed images are
      queries, the rest gallery; same-pid same-camid gallery images are junk (FastReID's rule).
    * ``"vehicleid"``: all processed images form the test set; ``TEST.VEHICLEID.NUM_TRIALS`` seeded
      draws (seed ``TEST.VEHICLEID.SEED + t``) of one gallery image per identity; the results are
      the mean over trials, with ``<metric>_std`` for the standard deviation.

    ``TEST.AQE`` and ``TEST.RERANK`` work as in FastReID's ``ReidEvaluator`` (on the CPU when there
    is no GPU). Both protocols are evaluated query-chunked
    (:func:`fastreid_plugins.evaluation.chunked.evaluate_chunked`, blocks sized by
    ``TEST.EVAL_MEMORY_GB``): no (Q, G) matrix is built, except with ``TEST.RERANK.TYPE fastreid``
    (FastReID's dense re-ranking, N x N by construction).

    mINP with one true match per query (VehicleID's protocol, VRIC): INP = G / X (MFG-Net Eq. 5)
    with G = 1 and X = the rank of that match, which is also that query's AP (1 / rank), so mINP
    equals mAP. MFG-Net's Tables 6-7 report mINP below Rank-1 (and below mAP) on VehicleID and
    VRIC, which Eq. 5 cannot give under these protocols. A one-line note is logged with such
    results.

    Args:
        cfg (CfgNode): full config.
        num_query (int): number of query images (standard protocol).
        output_dir (str): where ``<dataset>_results.json`` is written ("" = do not write).
        dataset_name (str): name used in the JSON file name and in the results.
        protocol (str): ``"standard"`` or ``"vehicleid"``.

    Raises:
        ConfigError: ``cfg`` was built without ``add_plugins_config`` (names the missing keys).
        ValueError: an unknown ``protocol``.
    """

    def __init__(self, cfg: CfgNode, num_query: int, output_dir: Optional[str] = None,
                 dataset_name: str = "", protocol: str = "standard") -> None:
        require_plugins_config(cfg, "VehicleReidEvaluator")
        if protocol not in ("standard", "vehicleid"):
            raise ValueError(f"protocol must be 'standard' or 'vehicleid', got {protocol!r}")
        self.cfg = cfg
        self._num_query = num_query
        self._output_dir = output_dir
        self._dataset_name = dataset_name
        self._protocol = protocol
        self._predictions = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: Dict[str, Any], outputs: torch.Tensor) -> None:
        """Store one batch. ``outputs`` is the model's (B, D) feature tensor.

        Raises:
            TypeError: ``outputs`` is not a (B, D) tensor.
            FloatingPointError: a feature holds inf/NaN (the image paths are named).
        """
        if not isinstance(outputs, torch.Tensor) or outputs.dim() != 2:
            raise TypeError("The model must return a (B, D) feature tensor in eval mode, got "
                            f"{type(outputs).__name__} {getattr(outputs, 'shape', '')}")
        bad = ~torch.isfinite(outputs.detach()).all(dim=1)
        if bad.any():  # a diverged model: metrics of NaN distances would be meaningless
            paths = [p for p, b in zip(inputs.get("img_paths", []), bad.tolist()) if b][:5]
            raise FloatingPointError(
                f"The model returned non-finite (inf/NaN) features for {int(bad.sum())} of "
                f"{len(bad)} images of this batch (e.g. {paths}): its weights are probably "
                "non-finite (a diverged training); refusing to compute metrics.")
        self._predictions.append({
            "feats": outputs.detach().to("cpu", torch.float32),
            "pids": inputs["targets"].cpu(),
            "camids": inputs["camids"].cpu(),
        })

    def _gather(self):
        preds = self._predictions
        if comm.get_world_size() > 1:
            comm.synchronize()
            preds = sum(comm.gather(preds, dst=0), [])
            if not comm.is_main_process():
                return None
        feats = torch.cat([p["feats"] for p in preds])
        pids = torch.cat([p["pids"] for p in preds]).numpy()
        camids = torch.cat([p["camids"] for p in preds]).numpy()
        return feats, pids, camids

    def _distance(self, qf, gf):
        """(Q, G) distances of FastReID's ``ReidEvaluator`` with ``TEST.RERANK.TYPE fastreid``:
        AQE (if enabled), ``build_dist``, then FastReID's dense re-ranking."""
        cfg = self.cfg
        if cfg.TEST.AQE.ENABLED:
            qf, gf = aqe(qf, gf, cfg.TEST.AQE.QE_TIME, cfg.TEST.AQE.QE_K, cfg.TEST.AQE.ALPHA)
        return rerank_distance(cfg, qf, gf, build_dist(qf, gf, cfg.TEST.METRIC))

    def _split_metrics(self, qf, gf, q_pids, g_pids, q_camids, g_camids, norm_max=None,
                       n_splits=1):
        """Metrics of one query/gallery split: query-chunked (never a (Q, G) array), except for
        ``TEST.RERANK.TYPE fastreid`` (dense N x N by construction: the full-matrix path).
        Returns ``(metrics, histograms)``: the verification pair histograms by distance name
        (None unless ``TEST.VERIFICATION.ENABLED``)."""
        opts = options_from_cfg(self.cfg)
        vopts = opts.pop("verification", None)
        if vopts is not None and norm_max is not None:
            vopts["norm_max"] = norm_max
        if vopts is not None:  # the kept distances of all splits together stay within the bound
            vopts["exact_pairs"] = int(vopts["exact_pairs"]) // n_splits
        if self.cfg.TEST.RERANK.ENABLED and rerank_type(self.cfg) == "fastreid":
            dist = self._distance(qf, gf)
            hists = None
            if vopts is not None:
                hists = dense_histograms(dist, q_pids, g_pids, q_camids, g_camids,
                                         self.cfg.TEST.METRIC, vopts)
            return metrics_from_distmat(dist, q_pids, g_pids, q_camids, g_camids), hists
        res = evaluate_chunked(qf, gf, q_pids, g_pids, q_camids, g_camids,
                               progress=comm.is_main_process(), verification=vopts, **opts)
        return (metrics_from_curves(res["cmc"], res["all_ap"], res["all_inp"]),
                res.get("verification"))

    def evaluate(self) -> Dict[str, float]:
        gathered = self._gather()
        if gathered is None:
            return {}
        feats, pids, camids = gathered
        if self._protocol == "standard":
            nq = self._num_query
            results, hists = self._split_metrics(feats[:nq], feats[nq:], pids[:nq], pids[nq:],
                                                 camids[:nq], camids[nq:])
        else:
            results, hists = self._evaluate_vehicleid(feats, pids)
        self._verification = None
        if hists:
            results, self._verification = self._add_verification(results, hists)
        one_match = self._protocol == "vehicleid" or \
            np.all(np.unique(pids[nq:], return_counts=True)[1] == 1)
        if one_match:
            logger.info("One gallery match per query: mINP = mAP here (INP = AP = 1/rank, Eq. 5).")
        self._results = results
        self._write_json(results)
        return copy.deepcopy(results)

    def _evaluate_vehicleid(self, feats, pids):
        n_trials = self.cfg.TEST.VEHICLEID.NUM_TRIALS
        seed = self.cfg.TEST.VEHICLEID.SEED
        if n_trials < 1:
            raise ValueError(f"TEST.VEHICLEID.NUM_TRIALS must be >= 1, got {n_trials}")
        per_trial, hists = [], None
        # one histogram range for every trial (merged below): the largest norm of all features
        norm_max = float(feats.norm(dim=1).max()) if len(feats) else 0.0
        for t in range(n_trials):
            q, g = vehicleid_split(pids, np.random.default_rng(seed + t))
            # every image is its own "camera" in VehicleID: no junk removal
            res, h = self._split_metrics(feats[q], feats[g], pids[q], pids[g],
                                         np.zeros(len(q)), np.ones(len(g)), norm_max=norm_max,
                                         n_splits=n_trials)
            per_trial.append(res)
            if h is not None:  # the verification pairs of all trials, pooled
                hists = h if hists is None else {k: hists[k].merge(v) for k, v in h.items()}
        results = OrderedDict()
        for k in per_trial[0]:
            results[k] = float(np.mean([r[k] for r in per_trial]))
        for k in ("Rank-1", "Rank-5", "mAP"):
            results[f"{k}_std"] = float(np.std([r[k] for r in per_trial]))
        logger.info(f"VehicleID protocol: {n_trials} trials (seeds {seed}..{seed + n_trials - 1})")
        return results, hists

    def _main_distance(self):
        """The name of the distance the ranking metrics use (``<metric>[+rerank]``)."""
        return self.cfg.TEST.METRIC + ("+rerank" if self.cfg.TEST.RERANK.ENABLED else "")

    def _add_verification(self, results, hists):
        """Scalar verification keys (of the ranking's distance) into ``results``; the full
        summaries by distance; the PNGs into the output folder."""
        summaries = OrderedDict((k, h.summary()) for k, h in hists.items())
        main = self._main_distance()
        results = OrderedDict(results)
        results.update(scalar_results(summaries[main]))
        s = summaries[main]
        how = "exact" if s["exact"] else "bin width {:.3g}".format(s["bin_width"])
        logger.info(f"Verification ({main}, {s['num_pos']:,} positive / {s['num_neg']:,} "
                    f"negative pairs, {how}): "
                    + ", ".join(f"{k} {results[k]:.2f}%" for k in VERIFICATION_KEYS))
        if s["far_resolution"] > min(FARS):
            logger.info(f"{s['num_neg']:,} negative pairs: a FAR below {s['far_resolution']:.2g} "
                        "reads as 'no negative accepted' (the TAR@FAR there are equal).")
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            name = self._dataset_name or "test"
            far = float(self.cfg.TEST.VERIFICATION.FAR)
            for k, h in hists.items():
                if far not in summaries[k]["threshold_at_far"]:
                    summaries[k] = h.summary(tuple(FARS) + (far,))
                suffix = "" if k == main else "_" + k.replace("+", "_")
                path = os.path.join(self._output_dir, f"{name}_verification{suffix}.png")
                try:
                    plot_verification(h, summaries[k], path, f"{name}: {k}", far=far)
                except ImportError as e:  # matplotlib missing: the numbers are still written
                    logger.warning(f"no verification picture ({e})")
                    continue
                _to_tensorboard(f"{name}/verification{suffix}", path)
        return results, summaries

    def _write_json(self, results):
        if not self._output_dir:
            return
        os.makedirs(self._output_dir, exist_ok=True)
        name = self._dataset_name or "test"
        path = os.path.join(self._output_dir, f"{name}_results.json")
        out = {"dataset": name, "protocol": self._protocol, **results}
        if getattr(self, "_verification", None):
            out["verification"] = json_summaries(self._verification)
        with open(path, "w") as f:
            json.dump(out, f, indent=2)
        logger.info(f"Evaluation results written to {path}")
