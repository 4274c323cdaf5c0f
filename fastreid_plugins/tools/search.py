"""Search a gallery of extracted features: faiss exact / approximate k-NN, re-ranking, CSV / JSON.

Usage::

    python -m fastreid_plugins.tools.search --gallery GALLERY_DIR --query QUERY_DIR --topk 10 \\
        [--output results.csv|results.json] [--index-type exact|ivf-flat|ivf-pq|FACTORY] \\
        [--nlist N] [--nprobe 32] [--index gallery.faiss] [--recall-sample 1000] \\
        [--rerank] [--vis N | --vis-queries IMG ...] [--vis-dir vis/]
    # query images instead of features (extracted with the same model first):
    python -m fastreid_plugins.tools.search --gallery GALLERY_DIR --query IMAGES_DIR_OR_LIST \\
        --config-file C.yml --topk 10 MODEL.WEIGHTS model_final.pth

``GALLERY_DIR`` (and a feature ``--query``) is an output folder of
:mod:`fastreid_plugins.tools.extract`. Query and gallery must have the same feature dimension and
metric (else a :class:`~fastreid_plugins.errors.DatasetError` naming both manifests).

Distance: the evaluator's, from the ``TEST.METRIC`` recorded in the gallery's manifest:
``cosine`` (FastReID's default) = ``1 - cos``, computed as faiss inner product of L2-normalised
features; ``euclidean`` = squared L2 (FastReID's ``compute_euclidean_distance``), faiss L2. Results
are in ascending distance, ties by gallery index (the evaluator's stable order).

* ``exact`` (default): the gallery shards are searched one at a time (a faiss ``IndexFlat`` per
  shard) and the running top-K are merged, so memory is one shard plus (Q, K) results, whatever
  the gallery size: a 1,000,000 x 256 gallery is searched in about 0.6 GB peak RSS (test
  ``test_search_1m_gallery_bounded_memory``), less than the gallery itself (1 GB as float32).
* approximate: a faiss ``index_factory`` index (``ivf-flat`` = ``IVF<nlist>,Flat``, ``ivf-pq`` =
  ``IVF<nlist>,PQ<D/8>``, or any factory string), trained on a seeded sample of the gallery, filled
  shard by shard; ``--index PATH`` saves it (with ``PATH.json`` naming the gallery it indexes) and
  later runs reload it. Its recall@K against the exact search is measured on ``--recall-sample``
  queries and printed (and stored in the JSON output).
* ``--rerank``: k-reciprocal re-ranking (Zhong et al., CVPR 2017; the package's sparse re-ranker,
  FastReID's ``TEST.RERANK`` semantics, ``K1`` / ``K2`` / ``LAMBDA`` from the gallery's config)
  of the top ``--rerank-candidates`` of each block of ``--rerank-block`` queries: the neighbour sets
  are computed on those queries plus the union of their candidates (on a gallery that the
  candidates cover entirely and one block, the evaluator's re-ranked distances).
* ``--vis N`` / ``--vis-queries``: rank-list pictures drawn by
  :func:`fastreid_plugins.tools.visualize.draw_ranklist`; there are no identity labels, so every
  border is grey and the captions show file names.
"""

from __future__ import annotations

from typing import (TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple,
                    Union)
import argparse
import csv
import json
import logging
import os
import sys
import time

import numpy as np

from fastreid_plugins.errors import ConfigError, DatasetError, DatasetNotFoundError
from fastreid_plugins.tools.extract import MANIFEST, read_manifest, run_cli

if TYPE_CHECKING:
    import faiss

__all__ = ["FeatureStore", "exact_search", "build_index", "load_or_build_index", "index_search",
           "recall_at_k", "rerank_topk", "search", "main", "UNLABELLED_COLOR"]

logger = logging.getLogger("fastreid_plugins.tools.search")

#: border colour of the rank-list pictures (no identity labels: neither match nor non-match)
UNLABELLED_COLOR = (128, 128, 128)


class FeatureStore:
    """An extraction output folder: shards of features and their image paths.

    Args:
        path (str): the ``--out`` folder of :mod:`fastreid_plugins.tools.extract`.

    Attributes:
        manifest (dict), dim (int), metric (str), num_images (int),
        offsets (list[int]): global index of each shard's first row.

    Raises:
        DatasetNotFoundError: the folder, its manifest or a shard file is missing.
        DatasetError: an unfinished extraction, or an unreadable manifest.
    """

    def __init__(self, path: Union[str, os.PathLike]) -> None:
        self.path = os.fspath(path)
        self.manifest = man = read_manifest(self.path)
        if not man.get("complete"):
            raise DatasetError(
                f"The extraction in {self.path!r} is not complete ({len(man['shards'])} of "
                f"{man.get('num_shards')} shards): run the same extract command again to finish "
                "it.")
        self.dim, self.metric = int(man["dim"]), str(man["metric"]).lower()
        if self.metric not in ("cosine", "euclidean"):
            raise DatasetError(f"{self.manifest_path}: metric {man['metric']!r} is not supported "
                               "(cosine or euclidean).")
        self.shards = man["shards"]
        self.offsets = list(np.cumsum([0] + [s["count"] for s in self.shards])[:-1])
        self.num_images = int(sum(s["count"] for s in self.shards))
        for s in self.shards:
            for key in ("features", "paths"):
                f = os.path.join(self.path, s[key])
                if not os.path.isfile(f):
                    raise DatasetNotFoundError(f"{f!r} (listed in {self.manifest_path}) is "
                                               "missing.")

    @property
    def manifest_path(self):
        return os.path.join(self.path, MANIFEST)

    def __len__(self) -> int:
        return self.num_images

    def shard(self, k: int) -> np.ndarray:
        """(count, D) float32 features of shard ``k``.

        Raises:
            DatasetError: the file's shape does not match the manifest.
        """
        f = os.path.join(self.path, self.shards[k]["features"])
        x = np.load(f)
        if x.ndim != 2 or x.shape != (self.shards[k]["count"], self.dim):
            raise DatasetError(f"{f!r} holds an array of shape {x.shape}, the manifest says "
                               f"({self.shards[k]['count']}, {self.dim}).")
        return np.ascontiguousarray(x, dtype=np.float32)

    def iter_shards(self) -> Iterator[Tuple[int, np.ndarray]]:
        """Yield ``(offset, (count, D) float32 features)`` shard by shard (one in memory)."""
        for k, off in enumerate(self.offsets):
            if self.shards[k]["count"]:
                yield int(off), self.shard(k)

    def features(self) -> np.ndarray:
        """All (N, D) float32 features (for query sets; a gallery is searched shard-wise)."""
        parts = [x for _, x in self.iter_shards()]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def paths(self, indices: Optional[Union[np.ndarray, Sequence[int]]] = None) -> List[str]:
        """Image paths of global ``indices`` (all when None), reading only the shards needed."""
        if indices is None:
            out = []
            for s in self.shards:
                out.extend(self._shard_paths(s))
            return out
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty(len(indices), dtype=object)
        shard_of = np.searchsorted(np.asarray(self.offsets), indices, side="right") - 1
        for k in np.unique(shard_of[indices >= 0]):
            lines = self._shard_paths(self.shards[k])
            sel = np.flatnonzero(shard_of == k)
            for j in sel:
                out[j] = lines[indices[j] - self.offsets[k]]
        return list(out)

    def _shard_paths(self, s):
        with open(os.path.join(self.path, s["paths"]), encoding="utf-8") as f:
            return f.read().splitlines()


# ----------------------------------------------------------------------------- distances
def _prepare(x, metric):
    """float32 C-contiguous copy; L2-normalised rows for cosine (F.normalize's eps)."""
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if metric == "cosine":
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def _flat_index(dim, metric):
    import faiss

    return faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)


def _to_distance(scores, metric):
    """faiss scores -> the evaluator's distance (cosine: 1 - ip; euclidean: squared L2)."""
    return (1.0 - scores).astype(np.float32) if metric == "cosine" else scores.astype(np.float32)


def _merge(best_d, best_i, d, i, k):
    """Top-k of two (Q, *) candidate lists, ascending distance, ties by lower index."""
    d = np.concatenate([best_d, d], axis=1)
    i = np.concatenate([best_i, i], axis=1)
    d = np.where(i < 0, np.inf, d)
    order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)


def exact_search(gallery: FeatureStore, queries: np.ndarray, k: int, metric: Optional[str] = None,
                 progress: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` gallery neighbours of every query, one gallery shard at a time.

    Args:
        gallery (FeatureStore): the gallery.
        queries (np.ndarray): (Q, D) query features (raw, as extracted).
        k (int): neighbours per query (capped at the gallery size).
        metric (str or None): ``cosine`` / ``euclidean`` (default: the gallery's).
        progress (bool): tqdm bar over the shards.

    Returns:
        tuple: ``(dist, index)``: (Q, k) float32 distances (the evaluator's) ascending, and
        (Q, k) int64 global gallery indices.
    """
    metric = metric or gallery.metric
    q = _prepare(queries, metric)
    k = min(int(k), len(gallery))
    best_d = np.full((len(q), 0), np.inf, np.float32)
    best_i = np.full((len(q), 0), -1, np.int64)
    shards = gallery.iter_shards()
    if progress:
        from tqdm import tqdm

        shards = tqdm(shards, total=len(gallery.shards), desc="exact search (gallery shards)",
                      unit="shard", dynamic_ncols=True)
    for off, g in shards:
        index = _flat_index(gallery.dim, metric)
        index.add(_prepare(g, metric))
        del g
        s, i = index.search(q, min(k, index.ntotal))
        del index
        best_d, best_i = _merge(best_d, best_i, _to_distance(s, metric), i + off, k)
    return best_d, best_i


def _nlist(n):
    return int(max(1, min(4 * np.sqrt(n), n // 39 or 1)))


def factory_string(index_type, dim, num_gallery, nlist=None, pq_m=None):
    """faiss ``index_factory`` string of ``--index-type`` (``ivf-flat``, ``ivf-pq``, or raw).

    Raises:
        ConfigError: ``ivf-pq`` with a dimension that ``pq_m`` does not divide.
    """
    nlist = nlist or _nlist(num_gallery)
    if index_type == "ivf-flat":
        return f"IVF{nlist},Flat"
    if index_type == "ivf-pq":
        m = pq_m or next(m for m in (dim // 8, dim // 4, dim // 2, dim) if m and dim % m == 0)
        if dim % m:
            raise ConfigError(f"--pq-m {m} must divide the feature dimension {dim}")
        return f"IVF{nlist},PQ{m}"
    return index_type


def build_index(gallery: FeatureStore, factory: str, metric: Optional[str] = None,
                train_size: Optional[int] = None, seed: int = 0,
                progress: bool = False) -> faiss.Index:
    """A trained and filled faiss index of ``gallery`` (filled shard by shard).

    Args:
        gallery (FeatureStore): the gallery.
        factory (str): faiss ``index_factory`` string, e.g. ``IVF1024,Flat`` / ``IVF1024,PQ32``.
        metric (str or None): default the gallery's.
        train_size (int or None): training sample (default ``max(50 nlist, 10000)``, capped at G).
        seed (int): sampling seed.

    Raises:
        ConfigError: faiss refuses the factory string.
    """
    import faiss

    metric = metric or gallery.metric
    fm = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    try:
        index = faiss.index_factory(gallery.dim, factory, fm)
    except RuntimeError as e:
        raise ConfigError(f"--index-type {factory!r} is not a faiss index_factory string: "
                          f"{str(e).splitlines()[0]}") from e
    n = len(gallery)
    if not index.is_trained:
        ivf = faiss.try_extract_index_ivf(index)
        want = min(n, train_size or max(50 * (ivf.nlist if ivf is not None else 1), 10000))
        rows = np.sort(np.random.default_rng(seed).choice(n, want, replace=False))
        sample = _prepare(_gather(gallery, rows), metric)
        t0 = time.time()
        index.train(sample)
        logger.info(f"trained {factory} on {len(sample)} gallery vectors in "
                    f"{time.time() - t0:.1f} s")
        del sample
    for _, g in gallery.iter_shards():
        index.add(_prepare(g, metric))
    return index


def _index_meta(gallery, factory):
    return {"gallery": os.path.abspath(gallery.path), "num_images": len(gallery),
            "dim": gallery.dim, "metric": gallery.metric, "factory": factory,
            "weights_sha256": gallery.manifest.get("weights_sha256"),
            "shards": [[s["features"], s["count"]] for s in gallery.shards]}


def load_or_build_index(gallery: FeatureStore, factory: str, path: Optional[str] = None,
                        progress: bool = False, seed: int = 0) -> faiss.Index:
    """Load the index at ``path`` if it exists (it must index ``gallery``), else build it (and
    save it to ``path`` with ``path.json``).

    Raises:
        DatasetError: the saved index was built for another gallery / factory.
    """
    import faiss

    meta = _index_meta(gallery, factory)
    if path and os.path.isfile(path):
        mpath = path + ".json"
        saved = None
        if os.path.isfile(mpath):
            with open(mpath, encoding="utf-8") as f:
                saved = json.load(f)
        diff = [k for k in meta if k != "gallery" and (saved or {}).get(k) != meta[k]]
        if saved is None or diff:
            raise DatasetError(f"--index {path!r} was built for another gallery or index type "
                               f"({'no ' + mpath if saved is None else ', '.join(diff)} "
                               "differ); delete it or pass another --index path.")
        index = faiss.read_index(path)
        logger.info(f"loaded index {path} ({index.ntotal} vectors, {factory})")
        return index
    t0 = time.time()
    index = build_index(gallery, factory, progress=progress, seed=seed)
    logger.info(f"built {factory} over {index.ntotal} vectors in {time.time() - t0:.1f} s")
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        faiss.write_index(index, tmp)
        os.replace(tmp, path)
        with open(path + ".json", "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
    return index


def index_search(index: faiss.Index, queries: np.ndarray, k: int, metric: str,
                 nprobe: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(dist, index)`` of ``index.search`` as the evaluator's distance, ties by index."""
    import faiss

    if nprobe:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.nprobe = int(nprobe)
    k = min(int(k), index.ntotal)
    s, i = index.search(_prepare(queries, metric), k)
    d = _to_distance(s, metric)
    return _merge(d[:, :0], i[:, :0], d, i.astype(np.int64), k)


def recall_at_k(approx_index: np.ndarray, exact_index: np.ndarray) -> float:
    """Mean over queries of |approximate top-K n exact top-K| / K (recall@K)."""
    k = exact_index.shape[1]
    hits = [len(set(a[a >= 0].tolist()) & set(e.tolist())) for a, e in zip(approx_index,
                                                                             exact_index)]
    return float(np.mean(hits) / k) if len(hits) else float("nan")


def rerank_topk(gallery: FeatureStore, queries: np.ndarray, dist: np.ndarray, index: np.ndarray,
                k: int, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                metric: Optional[str] = None, block: int = 64) -> Tuple[np.ndarray, np.ndarray]:
    """k-reciprocal re-ranking of each query's candidates (the package's sparse re-ranker).

    For each block of ``block`` queries, the Jaccard distances are computed on those queries and
    the union U of their candidate lists (``index``), then ``(1 - lambda) d_J + lambda d`` is
    sorted (Zhong et al. CVPR 2017, Eq. 12; FastReID's ``TEST.RERANK`` arithmetic).

    Args:
        gallery (FeatureStore); queries (np.ndarray): (Q, D) raw query features.
        dist, index (np.ndarray): (Q, C) candidate distances / gallery indices (C >= k).
        k (int): results kept per query. k1, k2, lambda_value: ``TEST.RERANK.K1/K2/LAMBDA``.

    Returns:
        tuple: ``(dist, index)``, (Q, k) re-ranked distances (ascending) and gallery indices.

    Raises:
        ConfigError: ``k1`` larger than a block's queries + candidates.
    """
    from fastreid_plugins.evaluation.sparse_rerank import sparse_rerank

    metric = metric or gallery.metric
    k = min(int(k), index.shape[1])
    out_d = np.full((len(queries), k), np.inf, np.float32)
    out_i = np.full((len(queries), k), -1, np.int64)
    for s in range(0, len(queries), block):
        e = min(len(queries), s + block)
        cand = np.unique(index[s:e][index[s:e] >= 0])
        if e - s + len(cand) < k1:
            raise ConfigError(f"TEST.RERANK.K1={k1} needs at least {k1} queries + candidates; "
                              f"this block has {e - s + len(cand)}: raise --rerank-candidates or "
                              "lower TEST.RERANK.K1.")
        gf = _gather(gallery, cand)
        qf = np.asarray(queries[s:e], np.float32)
        if metric == "cosine":
            qn, gn = _prepare(qf, metric), _prepare(gf, metric)
            d = 1.0 - qn @ gn.T
        else:
            d = (qf * qf).sum(1)[:, None] + (gf * gf).sum(1)[None, :] - 2.0 * (qf @ gf.T)
        import torch

        rr = sparse_rerank(torch.from_numpy(qf), torch.from_numpy(gf), d.astype(np.float32), k1,
                           k2, lambda_value, normalize=metric == "cosine")
        # only each query's own candidates are ranked (others are not in its candidate list)
        own = np.zeros(rr.shape, dtype=bool)
        pos = np.searchsorted(cand, np.where(index[s:e] >= 0, index[s:e], cand[0]))
        np.put_along_axis(own, pos, index[s:e] >= 0, axis=1)
        rr = np.where(own, rr, np.inf)
        gi = np.broadcast_to(cand[None, :], rr.shape)
        kk = min(k, rr.shape[1])
        out_d[s:e, :kk], out_i[s:e, :kk] = _merge(rr[:, :0], gi[:, :0].astype(np.int64),
                                                  rr.astype(np.float32), gi.astype(np.int64), kk)
    out_i[~np.isfinite(out_d)] = -1
    return out_d, out_i


def _gather(gallery, indices):
    """(len(indices), D) float32 features of sorted global ``indices``, shard by shard."""
    out = np.empty((len(indices), gallery.dim), np.float32)
    offsets = np.asarray(gallery.offsets)
    shard_of = np.searchsorted(offsets, indices, side="right") - 1
    for k in np.unique(shard_of):
        sel = np.flatnonzero(shard_of == k)
        out[sel] = gallery.shard(int(k))[indices[sel] - offsets[k]]
    return out


# ----------------------------------------------------------------------------- queries
class _QuerySet:
    """Query features + paths + provenance (a feature folder or extracted images)."""

    def __init__(self, features, paths, source, manifest):
        self.features, self.paths, self.source, self.manifest = features, paths, source, manifest


def load_queries(query, gallery, config_file=None, opts=(), batch_size=None, num_workers=0,
                 on_error="raise"):
    """Query features from an extraction folder, or from images extracted with ``config_file``.

    Raises:
        DatasetNotFoundError: ``query`` does not exist.
        DatasetError: no image; query and gallery differ in feature dimension or metric.
        ConfigError: images given without ``--config-file``.
    """
    if os.path.isdir(query) and os.path.isfile(os.path.join(query, MANIFEST)):
        store = FeatureStore(query)
        qs = _QuerySet(store.features(), store.paths(), store.manifest_path, store.manifest)
    else:
        from fastreid_plugins.tools.extract import (IMAGE_EXTENSIONS, FeatureExtractor, count_images,
                                              iter_image_paths)

        if os.path.isfile(query) and query.lower().endswith(IMAGE_EXTENSIONS):
            paths = [query]
        else:
            count_images(query)
            paths = list(iter_image_paths(query))
        if not config_file:
            raise ConfigError(f"--query {query!r} holds images, not features: pass "
                              "--config-file (and MODEL.WEIGHTS) to extract them.")
        ext = FeatureExtractor(config_file, opts=opts, batch_size=batch_size,
                               num_workers=num_workers)
        feats, kept = ext.extract(paths, on_error=on_error, return_index=True)
        desc = ext.describe()
        qs = _QuerySet(feats, [paths[i] for i in kept], f"{query} (config {config_file})",
                       {"dim": feats.shape[1], "metric": desc["metric"],
                        "weights_sha256": desc["weights_sha256"]})
        if gallery.manifest.get("weights_sha256") != desc["weights_sha256"]:
            logger.warning(f"the query model ({desc['weights']}) is not the one that extracted "
                           f"the gallery ({gallery.manifest.get('weights')}): distances between "
                           "features of different models are meaningless.")
    if int(qs.manifest["dim"]) != gallery.dim:
        raise DatasetError(f"Feature dimension mismatch: query {qs.source} has D="
                           f"{qs.manifest['dim']}, gallery {gallery.manifest_path} has D="
                           f"{gallery.dim}: extract both with the same model.")
    if str(qs.manifest["metric"]).lower() != gallery.metric:
        raise DatasetError(f"Metric mismatch: query {qs.source} uses TEST.METRIC "
                           f"{qs.manifest['metric']!r}, gallery {gallery.manifest_path} "
                           f"{gallery.metric!r}.")
    if len(qs.features) == 0:
        raise DatasetError(f"--query {query!r}: no query features.")
    return qs


# ----------------------------------------------------------------------------- output
def write_results(path, query_paths, gallery_paths, dist, index, extra=None):
    """Write the rank lists as CSV (``query,rank,gallery,distance``) or JSON (by extension).

    Raises:
        ConfigError: another extension.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".csv", ".json"):
        raise ConfigError(f"--output must end in .csv or .json, got {path!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        if ext == ".csv":
            w = csv.writer(f)
            w.writerow(["query", "rank", "gallery", "distance"])
            for qi, q in enumerate(query_paths):
                for r, (d, g) in enumerate(zip(dist[qi], index[qi]), 1):
                    if g >= 0:
                        w.writerow([q, r, gallery_paths[qi][r - 1], f"{d:.6g}"])
        else:
            json.dump(dict(extra or {}, results=[
                {"query": q, "ranking": [{"rank": r, "gallery": gp, "gallery_index": int(g),
                                          "distance": float(d)}
                                         for r, (d, g, gp) in enumerate(
                                             zip(dist[qi], index[qi], gallery_paths[qi]), 1)
                                         if g >= 0]}
                for qi, q in enumerate(query_paths)]), f, indent=1)
    os.replace(tmp, path)


def draw_results(out_dir, query_paths, gallery_paths, dist, chosen, size):
    """Rank-list pictures of the ``chosen`` query indices with visualize's ``draw_ranklist``.

    Returns:
        list[str]: the written PNG files.
    """
    from PIL import ImageDraw

    from fastreid_plugins.tools import visualize as vis

    os.makedirs(out_dir, exist_ok=True)
    height, width = size
    files = []
    for n, qi in enumerate(chosen):
        gal = [{"path": gp, "pid": _short(gp), "camid": "", "dist": float(d), "match": False}
               for gp, d in zip(gallery_paths[qi], dist[qi]) if gp is not None]
        img, _, boxes = vis.draw_ranklist({"path": query_paths[qi], "pid": _short(
            query_paths[qi]), "camid": ""}, gal, height, width)
        draw = ImageDraw.Draw(img)
        for x0, y0, x1, y1 in boxes:  # no labels: neither green (match) nor red (non-match)
            for t in range(vis.BORDER):
                draw.rectangle([x0 + t, y0 + t, x1 - 1 - t, y1 - 1 - t],
                               outline=UNLABELLED_COLOR)
        stem = os.path.splitext(os.path.basename(query_paths[qi]))[0]
        f = os.path.join(out_dir, f"search_{n:03d}_{stem}.png")
        img.save(f)
        files.append(f)
    return files


def _short(path, n=14):
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem if len(stem) <= n else stem[:n - 1] + "~"


# ----------------------------------------------------------------------------- main
def search(gallery: FeatureStore, queries: np.ndarray, topk: int, index_type: str = "exact",
           index_path: Optional[str] = None, nlist: Optional[int] = None, nprobe: int = 32,
           pq_m: Optional[int] = None, recall_sample: int = 1000, rerank: bool = False,
           rerank_candidates: int = 100, rerank_block: int = 64, seed: int = 0,
           progress: bool = False) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
    """Top-``topk`` gallery neighbours of ``queries`` (see the module docstring).

    Args:
        gallery (FeatureStore); queries (np.ndarray): (Q, D) raw features.
        topk (int): results per query.
        index_type (str): ``exact``, ``ivf-flat``, ``ivf-pq`` or a faiss factory string.
        index_path (str or None): save / reload the approximate index here.
        nlist, nprobe, pq_m: IVF lists (default ``4 sqrt(G)``), lists searched, PQ sub-vectors.
        recall_sample (int): queries whose approximate results are compared with exact search.
        rerank (bool): re-rank the top ``rerank_candidates`` per query (blocks of
            ``rerank_block`` queries) with the config's ``TEST.RERANK.K1/K2/LAMBDA``.

    Returns:
        tuple: ``(dist, index, info)``: (Q, topk) float32 distances ascending, (Q, topk) int64
        gallery indices (-1 = none), and a dict with ``recall_at_k``, timings, the index type.

    Raises:
        ConfigError: ``topk < 1``, bad factory string.
    """
    if topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {topk}")
    metric = gallery.metric
    want = max(topk, rerank_candidates) if rerank else topk
    info = {"metric": metric, "index_type": index_type, "num_gallery": len(gallery),
            "num_queries": len(queries), "topk": topk}
    t0 = time.time()
    if index_type == "exact":
        dist, index = exact_search(gallery, queries, want, progress=progress)
    else:
        factory = factory_string(index_type, gallery.dim, len(gallery), nlist, pq_m)
        info["factory"] = factory
        idx = load_or_build_index(gallery, factory, index_path, progress=progress, seed=seed)
        info["build_or_load_s"] = time.time() - t0
        t0 = time.time()
        dist, index = index_search(idx, queries, want, metric, nprobe)
        info["nprobe"] = nprobe
        if recall_sample:
            rng = np.random.default_rng(seed)
            sel = np.sort(rng.choice(len(queries), min(recall_sample, len(queries)),
                                     replace=False))
            _, ex = exact_search(gallery, queries[sel], topk)
            info["recall_at_k"] = recall_at_k(index[sel, :topk], ex)
            info["recall_queries"] = len(sel)
            print(f"recall@{topk} of {factory} (nprobe {nprobe}) vs exact search on "
                  f"{len(sel)} queries: {info['recall_at_k']:.4f}", file=sys.stderr)
    info["search_s"] = time.time() - t0
    if rerank:
        rr = gallery.manifest.get("rerank") or {"k1": 20, "k2": 6, "lambda": 0.3}
        dist, index = rerank_topk(gallery, queries, dist, index, topk, rr["k1"], rr["k2"],
                                  rr["lambda"], metric, rerank_block)
        info["rerank"] = dict(rr, candidates=want, block=rerank_block)
    return dist[:, :topk], index[:, :topk], info


def build_parser():
    p = argparse.ArgumentParser(prog="python -m fastreid_plugins.tools.search",
                                description="Search a gallery of extracted re-id features.")
    p.add_argument("--gallery", required=True, metavar="DIR", help="extraction --out folder")
    p.add_argument("--query", required=True, metavar="FEATURES|IMAGES",
                   help="an extraction folder, or images (folder / list / file) to extract "
                        "with --config-file")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--config-file", default=None, help="model config (query images only)")
    p.add_argument("--output", default=None, help="results .csv or .json (default: CSV on "
                                                  "stdout)")
    p.add_argument("--index-type", default="exact",
                   help="exact | ivf-flat | ivf-pq | a faiss index_factory string")
    p.add_argument("--index", default=None, metavar="PATH", help="save / reload the index")
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4 sqrt(G))")
    p.add_argument("--nprobe", type=int, default=32, help="IVF lists searched per query")
    p.add_argument("--pq-m", type=int, default=None, help="PQ sub-vectors (default D/8)")
    p.add_argument("--recall-sample", type=int, default=1000,
                   help="queries for the recall@K check of an approximate index (0 = off)")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking of the top-K")
    p.add_argument("--rerank-candidates", type=int, default=100)
    p.add_argument("--rerank-block", type=int, default=64)
    p.add_argument("--vis", type=int, default=0, metavar="N", help="pictures of the first N "
                                                                    "queries")
    p.add_argument("--vis-queries", nargs="+", default=None, metavar="IMG",
                   help="pictures of these queries (paths or file names)")
    p.add_argument("--vis-dir", default="vis")
    p.add_argument("--vis-size", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of "
                   "--config-file (MODEL.WEIGHTS path/to/model.pth)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the search CLI; returns ``{"dist", "index", "query_paths", "gallery_paths", "info",
    "vis"}``.

    Raises:
        UserError: bad arguments or input (missing folders, dimension / metric mismatch, ...).
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    gallery = FeatureStore(args.gallery)
    if not os.path.exists(args.query):
        raise DatasetNotFoundError(f"--query not found: {args.query!r}")
    qs = load_queries(args.query, gallery, args.config_file, args.opts, args.batch_size,
                      args.num_workers)
    dist, index, info = search(
        gallery, qs.features, args.topk, args.index_type, args.index, args.nlist, args.nprobe,
        args.pq_m, args.recall_sample, args.rerank, args.rerank_candidates, args.rerank_block,
        args.seed, progress=not args.no_progress)
    flat = gallery.paths(index.reshape(-1))
    gpaths = [flat[i * index.shape[1]:(i + 1) * index.shape[1]] for i in range(len(index))]
    if args.output:
        write_results(args.output, qs.paths, gpaths, dist, index, {"info": info})
        logger.info(f"top-{args.topk} of {len(qs.paths)} queries written to {args.output}")
    else:
        w = csv.writer(sys.stdout)
        w.writerow(["query", "rank", "gallery", "distance"])
        for qi, q in enumerate(qs.paths):
            for r, (d, g) in enumerate(zip(dist[qi], index[qi]), 1):
                if g >= 0:
                    w.writerow([q, r, gpaths[qi][r - 1], f"{d:.6g}"])
    chosen = list(range(min(args.vis, len(qs.paths))))
    if args.vis_queries:
        for v in args.vis_queries:
            hits = [i for i, p in enumerate(qs.paths)
                    if p == v or os.path.basename(p) == os.path.basename(v)]
            if not hits:
                raise DatasetError(f"--vis-queries: {v!r} is not among the queries of "
                                   f"{args.query!r}")
            chosen += [h for h in hits if h not in chosen]
    vis = []
    if chosen:
        size = args.vis_size or _input_size(gallery.manifest)
        vis = draw_results(args.vis_dir, qs.paths, gpaths, dist, chosen, size)
        logger.info(f"{len(vis)} rank-list pictures written to {args.vis_dir}")
    return {"dist": dist, "index": index, "query_paths": qs.paths, "gallery_paths": gpaths,
            "info": info, "vis": vis}


def _input_size(manifest):
    size = manifest.get("input_size") or [128, 128]
    return int(size[0]), int(size[-1])


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
