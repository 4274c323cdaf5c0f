"""Search a gallery of extracted features: faiss exact / approximate k-NN, re-ranking, CSV / JSON.

Usage::

    python -m fastreid_plugins.tools.search --gallery GALLERY_DIR --query QUERY_DIR --topk 10 \\
        [--output results.csv|results.json] \\
        [--index-type exact|ivf|hnsw|ivf-flat|ivf-pq|FACTORY] [--nlist N] [--nprobe 64] \\
        [--ef-search 128] [--pq-m M] [--index gallery.faiss] [--recall-sample 1000] \\
        [--rerank] [--vis N | --vis-queries IMG ...] [--vis-dir vis/] [--debug] \\
        [--threshold threshold.json|VALUE]
    # query images instead of features (extracted with the same model first):
    python -m fastreid_plugins.tools.search --gallery GALLERY_DIR --query IMAGES_DIR_OR_LIST \\
        --config-file C.yml --topk 10 MODEL.WEIGHTS model_final.pth

``GALLERY_DIR`` (and a feature ``--query``) is an output folder of
:mod:`fastreid_plugins.tools.extract`. Query and gallery must have the same feature dimension and
metric (else a :class:`~fastreid_plugins.errors.DatasetError` naming both manifests). A user
error ends in one ``Error:`` block and exit status 2 (:func:`fastreid_plugins.cli.run_cli`;
``--debug`` for the traceback).

Distance: the evaluator's, from the ``TEST.METRIC`` recorded in the gallery's manifest:
``cosine`` (FastReID's default) = ``1 - cos``, computed as faiss inner product of L2-normalised
features; ``euclidean`` = squared L2 (FastReID's ``compute_euclidean_distance``), faiss L2. Results
are in ascending distance, ties by gallery index (the evaluator's stable order).

Every faiss index is built by :func:`fastreid_plugins.evaluation.knn.build_index`, the builder of
the re-ranker's approximate k-NN too, and the defaults of ``--index-type``, ``--nlist``,
``--nprobe`` and ``--ef-search`` are the re-ranker's, ``fastreid_plugins.config.PLUGIN_DEFAULTS``
(``TEST.RERANK.KNN``, ``KNN_NLIST``, ``KNN_NPROBE``, ``KNN_EF_SEARCH``).

* ``exact`` (default): the gallery shards are searched one at a time (a faiss flat index per
  shard) and the running top-K are merged, so memory is one shard plus (Q, K) results, whatever
  the gallery size: a 1,000,000 x 256 gallery is searched in about 0.6 GB peak RSS (test
  ``test_search_1m_gallery_bounded_memory``), less than the gallery itself (1 GB as float32).
* approximate: ``ivf`` (``IVF<nlist>,SQ8``) and ``hnsw`` (``HNSW32,SQ8``), the re-ranker's
  ``TEST.RERANK.KNN`` kinds; ``ivf-flat`` (``IVF<nlist>,Flat``), ``ivf-pq`` (``IVF<nlist>,PQ<M>``)
  or any faiss ``index_factory`` string: trained on a seeded sample of the gallery, filled shard
  by shard; ``--index PATH`` saves it (with ``PATH.json`` naming the gallery it indexes) and
  later runs reload it. Its recall@K against the exact search is measured on ``--recall-sample``
  queries and printed (and stored in the JSON output).
* ``--rerank``: k-reciprocal re-ranking (Zhong et al., CVPR 2017; the package's sparse re-ranker,
  FastReID's ``TEST.RERANK`` semantics, ``K1`` / ``K2`` / ``LAMBDA`` from the gallery's config,
  else the default config's) of the top ``--rerank-candidates`` of each block of
  ``--rerank-block`` queries: the neighbour sets are computed on those queries plus the union of
  their candidates (on a gallery that the candidates cover entirely and one block, the
  evaluator's re-ranked distances).
* ``--threshold FILE|VALUE``: open-set search. Only the results with ``distance <= threshold``
  are kept; a query with none is answered ``no match``; the CSV gains a ``decision`` column, the
  JSON a ``decision`` per query and result (:func:`write_results`); the pictures mark the
  threshold. A file of ``python -m fastreid_plugins.tools.calibrate`` must have the gallery's
  metric and model (SHA-256 of the manifest's weights), else a ``ConfigError`` names both. Its
  per-camera-pair thresholds (``--per-camera-pair``) apply to a result where the query's and the
  gallery image's cameras are both read from VeRi-style file names (``<pid>_c<cam>_...``) and
  the pair was calibrated; the global threshold elsewhere
  (:func:`fastreid_plugins.evaluation.verification.result_thresholds`).
* ``--vis N`` / ``--vis-queries``: rank-list pictures drawn by
  :func:`fastreid_plugins.tools.visualize.draw_ranklist`; there are no identity labels, so every
  border is grey and the captions show file names.

Importing this module imports no torch, faiss, numpy or FastReID model code (they are imported
where they are used), so ``--help`` and argument errors are fast.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import os
import sys
import time
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    Iterator,
    List,
    Optional,
    Sequence,
    TextIO,
    Tuple,
    Union,
)

from fastreid_plugins.errors import ConfigError, DatasetError, DatasetNotFoundError
from fastreid_plugins.tools.extract import (
    IMAGE_EXTENSIONS,
    MANIFEST,
    count_images,
    engine_key,
    iter_image_paths,
    read_manifest,
)

if TYPE_CHECKING:
    import faiss
    import numpy as np

__all__ = ["FeatureStore", "exact_search", "build_gallery_index", "load_or_build_index",
           "index_search", "recall_at_k", "rerank_topk", "search", "main", "build_parser",
           "UNLABELLED_COLOR", "RECALL_SAMPLE", "RERANK_CANDIDATES", "RERANK_BLOCK", "TOPK"]

logger = logging.getLogger("fastreid_plugins.tools.search")

#: border colour of the rank-list pictures (no identity labels: neither match nor non-match)
UNLABELLED_COLOR = (128, 128, 128)
#: results per query (``--topk``)
TOPK = 10
#: queries whose approximate results are compared with the exact search (``--recall-sample``)
RECALL_SAMPLE = 1000
#: re-ranked candidates per query and queries per re-ranking block (``--rerank-candidates`` /
#: ``--rerank-block``)
RERANK_CANDIDATES, RERANK_BLOCK = 100, 64


def _knn_default(key: str) -> Any:
    """``PLUGIN_DEFAULTS["TEST.RERANK.<key>"]``, the k-NN defaults the evaluator reads."""
    from fastreid_plugins.config import PLUGIN_DEFAULTS

    return PLUGIN_DEFAULTS[f"TEST.RERANK.{key}"]


def _rerank_defaults() -> Dict[str, Any]:
    """``TEST.RERANK.K1 / K2 / LAMBDA`` of the default config (for a gallery whose manifest
    records none: features written by ``save_feature_shards`` without ``rerank=``)."""
    from fastreid_plugins.config import get_cfg

    rr = get_cfg().TEST.RERANK
    return {"k1": int(rr.K1), "k2": int(rr.K2), "lambda": float(rr.LAMBDA)}


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
        counts = [int(s["count"]) for s in self.shards]
        self.offsets = list(itertools.accumulate([0] + counts[:-1])) if counts else []
        self.num_images = sum(counts)
        for s in self.shards:
            for key in ("features", "paths"):
                f = os.path.join(self.path, s[key])
                if not os.path.isfile(f):
                    raise DatasetNotFoundError(f"{f!r} (listed in {self.manifest_path}) is "
                                               "missing.")

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.path, MANIFEST)

    def __len__(self) -> int:
        return self.num_images

    def shard(self, k: int) -> np.ndarray:
        """(count, D) float32 features of shard ``k``.

        Raises:
            DatasetError: the file's shape does not match the manifest.
        """
        import numpy as np

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
        import numpy as np

        parts = [x for _, x in self.iter_shards()]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def paths(self, indices: Optional[Union[np.ndarray, Sequence[int]]] = None) -> List[str]:
        """Image paths of global ``indices`` (all when None; None at an index < 0), reading only
        the shards needed."""
        import numpy as np

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


class _GallerySource:
    """A :class:`FeatureStore` as a :class:`~fastreid_plugins.evaluation.knn.VectorSource`:
    rows gathered shard by shard, blocks = shards (raw features; ``build_index`` prepares them
    for the metric)."""

    def __init__(self, gallery):
        self.gallery, self.dim = gallery, gallery.dim

    def __len__(self):
        return len(self.gallery)

    def rows(self, indices):
        return _gather(self.gallery, indices)

    def batches(self):
        for _, x in self.gallery.iter_shards():
            yield x


# ----------------------------------------------------------------------------- distances
def exact_search(gallery: FeatureStore, queries: np.ndarray, k: int, metric: Optional[str] = None,
                 progress: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` gallery neighbours of every query, one gallery shard at a time.

    Each shard is indexed by ``build_index(shard, "exact", metric)`` (a faiss flat index) and
    searched; the running (Q, k) lists are merged.

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
    from fastreid_plugins.evaluation.knn import exact_topk

    shards = gallery.iter_shards()
    if progress:
        from tqdm import tqdm

        shards = tqdm(shards, total=len(gallery.shards), desc="exact search (gallery shards)",
                      unit="shard", dynamic_ncols=True)
    return exact_topk(queries, shards, min(int(k), len(gallery)), metric or gallery.metric)


def build_gallery_index(gallery: FeatureStore, index_type: str, metric: Optional[str] = None,
                        nlist: Optional[int] = None, pq_m: Optional[int] = None,
                        train_size: Optional[int] = None, seed: int = 0,
                        progress: bool = False) -> faiss.Index:
    """A trained and filled faiss index of ``gallery``, read shard by shard, made by
    :func:`fastreid_plugins.evaluation.knn.build_index`.

    Args:
        gallery (FeatureStore): the gallery.
        index_type (str): a kind of :data:`fastreid_plugins.evaluation.knn.INDEX_KINDS` or a
            faiss ``index_factory`` string, e.g. ``IVF1024,Flat`` / ``IVF1024,PQ32``.
        metric (str or None): default the gallery's.
        nlist, pq_m (int or None): IVF lists (None or 0: ``4 sqrt(G)``), PQ sub-vectors.
        train_size (int or None): training sample (default ``max(40 nlist, 10000)``, capped at
            G). seed (int): sampling seed.

    Raises:
        ConfigError: faiss refuses the factory string; more lists than gallery images.
    """
    from fastreid_plugins.evaluation.knn import build_index

    metric = metric or gallery.metric
    t0 = time.time()
    index = build_index(_GallerySource(gallery), index_type, metric, nlist=nlist, pq_m=pq_m,
                        train_size=train_size, seed=seed, progress=progress,
                        desc=f"index {index_type} (gallery shards)")
    logger.info(f"built {index_type} over {index.ntotal} vectors in {time.time() - t0:.1f} s")
    return index


def _index_meta(gallery, factory):
    return {"gallery": os.path.abspath(gallery.path), "num_images": len(gallery),
            "dim": gallery.dim, "metric": gallery.metric, "factory": factory,
            "weights_sha256": gallery.manifest.get("weights_sha256"),
            "shards": [[s["features"], s["count"]] for s in gallery.shards]}


def load_or_build_index(gallery: FeatureStore, factory: str, path: Optional[str] = None,
                        progress: bool = False, seed: int = 0) -> faiss.Index:
    """Load the index at ``path`` if it exists (it must index ``gallery``), else build it with
    :func:`build_gallery_index` (and save it to ``path`` with ``path.json``).

    Args:
        factory (str): the faiss ``index_factory`` string
            (:func:`fastreid_plugins.evaluation.knn.index_factory_string`).

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
    index = build_gallery_index(gallery, factory, progress=progress, seed=seed)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        faiss.write_index(index, tmp)
        os.replace(tmp, path)
        with open(path + ".json", "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
    return index


def index_search(index: faiss.Index, queries: np.ndarray, k: int, metric: str,
                 nprobe: Optional[int] = None, ef_search: Optional[int] = None
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """``(dist, index)`` of ``index.search`` as the evaluator's distance, ties by index.

    Args:
        index (faiss.Index): from :func:`build_gallery_index` / :func:`load_or_build_index`.
        queries (np.ndarray): (Q, D) raw query features. k (int): neighbours per query.
        metric (str): the gallery's. nprobe, ef_search (int or None): IVF lists searched, HNSW
            beam (at least ``k``); None: ``PLUGIN_DEFAULTS`` (see
            :func:`fastreid_plugins.evaluation.knn.set_search_params`).

    Returns:
        tuple: (Q, k) float32 distances ascending and (Q, k) int64 gallery indices (-1: none).
    """
    from fastreid_plugins.evaluation.knn import set_search_params

    ef = ef_search if ef_search is not None else _knn_default("KNN_EF_SEARCH")
    set_search_params(index, nprobe, max(int(ef), min(int(k), index.ntotal)))
    return _index_search(index, queries, k, metric)


def _index_search(index, queries, k, metric):
    """:func:`index_search` with the index's search parameters as they are."""
    import numpy as np

    from fastreid_plugins.evaluation.knn import merge_topk, prepare_vectors, scores_to_distance

    k = min(int(k), index.ntotal)
    s, i = index.search(prepare_vectors(queries, metric), k)
    d = scores_to_distance(s, metric)
    return merge_topk(d[:, :0], i[:, :0], d, i.astype(np.int64), k)


def recall_at_k(approx_index: np.ndarray, exact_index: np.ndarray) -> float:
    """Mean over queries of |approximate top-K n exact top-K| / K (recall@K)."""
    import numpy as np

    k = exact_index.shape[1]
    hits = [len(set(a[a >= 0].tolist()) & set(e.tolist())) for a, e in zip(approx_index,
                                                                             exact_index)]
    return float(np.mean(hits) / k) if len(hits) else float("nan")


def rerank_topk(gallery: FeatureStore, queries: np.ndarray, dist: np.ndarray, index: np.ndarray,
                k: int, k1: Optional[int] = None, k2: Optional[int] = None,
                lambda_value: Optional[float] = None, metric: Optional[str] = None,
                block: int = RERANK_BLOCK) -> Tuple[np.ndarray, np.ndarray]:
    """k-reciprocal re-ranking of each query's candidates (the package's sparse re-ranker).

    For each block of ``block`` queries, the Jaccard distances are computed on those queries and
    the union U of their candidate lists (``index``), then ``(1 - lambda) d_J + lambda d`` is
    sorted (Zhong et al. CVPR 2017, Eq. 12; FastReID's ``TEST.RERANK`` arithmetic).

    Args:
        gallery (FeatureStore); queries (np.ndarray): (Q, D) raw query features.
        dist, index (np.ndarray): (Q, C) candidate distances / gallery indices (C >= k).
        k (int): results kept per query. k1, k2, lambda_value: ``TEST.RERANK.K1/K2/LAMBDA``
            (None: the default config's).

    Returns:
        tuple: ``(dist, index)``, (Q, k) re-ranked distances (ascending) and gallery indices.

    Raises:
        ConfigError: ``k1`` larger than a block's queries + candidates.
    """
    import numpy as np
    import torch

    from fastreid_plugins.evaluation.knn import merge_topk, prepare_vectors
    from fastreid_plugins.evaluation.sparse_rerank import sparse_rerank

    defaults = _rerank_defaults() if None in (k1, k2, lambda_value) else {}
    k1 = defaults["k1"] if k1 is None else k1
    k2 = defaults["k2"] if k2 is None else k2
    lambda_value = defaults["lambda"] if lambda_value is None else lambda_value
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
            qn, gn = prepare_vectors(qf, metric), prepare_vectors(gf, metric)
            d = 1.0 - qn @ gn.T
        else:
            d = (qf * qf).sum(1)[:, None] + (gf * gf).sum(1)[None, :] - 2.0 * (qf @ gf.T)
        rr = sparse_rerank(torch.from_numpy(qf), torch.from_numpy(gf), d.astype(np.float32), k1,
                           k2, lambda_value, normalize=metric == "cosine")
        # only each query's own candidates are ranked (others are not in its candidate list)
        own = np.zeros(rr.shape, dtype=bool)
        pos = np.searchsorted(cand, np.where(index[s:e] >= 0, index[s:e], cand[0]))
        np.put_along_axis(own, pos, index[s:e] >= 0, axis=1)
        rr = np.where(own, rr, np.inf)
        gi = np.broadcast_to(cand[None, :], rr.shape)
        kk = min(k, rr.shape[1])
        out_d[s:e, :kk], out_i[s:e, :kk] = merge_topk(
            rr[:, :0], gi[:, :0].astype(np.int64), rr.astype(np.float32), gi.astype(np.int64), kk)
    out_i[~np.isfinite(out_d)] = -1
    return out_d, out_i


def _gather(gallery, indices):
    """(len(indices), D) float32 features of sorted global ``indices``, shard by shard."""
    import numpy as np

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


def _extract_queries(query, gallery, config_file, opts, batch_size, num_workers, on_error):
    """A :class:`_QuerySet` of the images ``query`` (a file, folder or list) extracted with
    ``config_file``'s model."""
    from fastreid_plugins.tools.extract import FeatureExtractor

    if os.path.isfile(query) and query.lower().endswith(IMAGE_EXTENSIONS):
        paths = [query]
    else:
        count_images(query)
        paths = list(iter_image_paths(query))
    if not config_file:
        raise ConfigError(f"--query {query!r} holds images, not features: pass "
                          "--config-file (and MODEL.WEIGHTS) to extract them.")
    ext = FeatureExtractor(config_file, opts=opts, batch_size=batch_size, num_workers=num_workers)
    feats, kept = ext.extract(paths, on_error=on_error, return_index=True)
    desc = ext.describe()
    if gallery.manifest.get("weights_sha256") != desc["weights_sha256"]:
        logger.warning(f"the query model ({desc['weights']}) is not the one that extracted "
                       f"the gallery ({gallery.manifest.get('weights')}): distances between "
                       "features of different models are meaningless.")
    return _QuerySet(feats, [paths[i] for i in kept], f"{query} (config {config_file})",
                     {"dim": feats.shape[1], "metric": desc["metric"],
                      "weights_sha256": desc["weights_sha256"], "engine": desc["engine"]})


def _check_same_engine(qs, gallery):
    """Refuse query and gallery features of different engines / precisions (e.g. an int8
    OpenVINO gallery and fp32 PyTorch queries): their distances are not comparable, like
    features of different models.

    Raises:
        DatasetError: the manifests' ``(format, precision)`` differ.
    """
    q, g = engine_key(qs.manifest), engine_key(gallery.manifest)
    if q != g:
        raise DatasetError(
            f"Engine mismatch: query {qs.source} was extracted with {q[0]} {q[1]}, gallery "
            f"{gallery.manifest_path} with {g[0]} {g[1]}: features of different engines or "
            "precisions are not comparable. Extract both with the same engine "
            f"(`python -m fastreid_plugins.tools.extract --backend {g[0]}"
            + ("" if g[0] == "torch" else " ENGINE") + "`).")


def load_queries(query: str, gallery: FeatureStore, config_file: Optional[str] = None,
                 opts: Sequence[str] = (), batch_size: Optional[int] = None,
                 num_workers: int = 0, on_error: str = "raise") -> _QuerySet:
    """Query features from an extraction folder, or from images extracted with ``config_file``.

    Returns:
        an object with ``features`` ((Q, D) float32), ``paths`` (Q str), ``source`` (str) and
        ``manifest`` (dict with ``dim``, ``metric``).

    Raises:
        DatasetNotFoundError: ``query`` does not exist.
        DatasetError: no image; query and gallery differ in feature dimension, metric or
            engine / precision (``engine`` of the manifests).
        ConfigError: images given without ``--config-file``.
    """
    if os.path.isdir(query) and os.path.isfile(os.path.join(query, MANIFEST)):
        store = FeatureStore(query)
        qs = _QuerySet(store.features(), store.paths(), store.manifest_path, store.manifest)
    else:
        qs = _extract_queries(query, gallery, config_file, opts, batch_size, num_workers,
                              on_error)
    if int(qs.manifest["dim"]) != gallery.dim:
        raise DatasetError(f"Feature dimension mismatch: query {qs.source} has D="
                           f"{qs.manifest['dim']}, gallery {gallery.manifest_path} has D="
                           f"{gallery.dim}: extract both with the same model.")
    if str(qs.manifest["metric"]).lower() != gallery.metric:
        raise DatasetError(f"Metric mismatch: query {qs.source} uses TEST.METRIC "
                           f"{qs.manifest['metric']!r}, gallery {gallery.manifest_path} "
                           f"{gallery.metric!r}.")
    _check_same_engine(qs, gallery)
    if len(qs.features) == 0:
        raise DatasetError(f"--query {query!r}: no query features.")
    return qs


# ----------------------------------------------------------------------------- output
def _thr(threshold, qi, r):
    """The threshold of result ``r`` of query ``qi``: ``threshold`` is one number or a (Q, K)
    array (per-camera-pair thresholds,
    :func:`fastreid_plugins.evaluation.verification.result_thresholds`)."""
    if threshold is None or isinstance(threshold, (int, float)):
        return threshold
    return float(threshold[qi][r])


def _write_csv(f: TextIO, query_paths, gallery_paths, dist, index, threshold=None):
    """``query,rank,gallery,distance`` rows of the rank lists (gallery index -1 = none); with a
    ``threshold`` (a number or a (Q, K) array), a ``decision`` column: ``match`` for the results
    within it (the others are left out) and one ``no match`` row (rank 0) for a query without
    any."""
    w = csv.writer(f)
    w.writerow(["query", "rank", "gallery", "distance"]
               + (["decision"] if threshold is not None else []))
    for qi, q in enumerate(query_paths):
        n = 0
        for r, (d, g) in enumerate(zip(dist[qi], index[qi]), 1):
            if g >= 0 and (threshold is None or d <= _thr(threshold, qi, r - 1)):
                w.writerow([q, r, gallery_paths[qi][r - 1], f"{d:.6g}"]
                           + (["match"] if threshold is not None else []))
                n += 1
        if threshold is not None and n == 0:
            best = f"{dist[qi][0]:.6g}" if len(index[qi]) and index[qi][0] >= 0 else ""
            w.writerow([q, 0, "", best, "no match"])


def write_results(path: str, query_paths: Sequence[str],
                  gallery_paths: Sequence[Sequence[Optional[str]]], dist: np.ndarray,
                  index: np.ndarray, extra: Optional[Dict[str, Any]] = None,
                  threshold: Any = None, ids: Optional[Sequence[Sequence[str]]] = None) -> None:
    """Write the rank lists as CSV (``query,rank,gallery,distance``) or JSON (by extension).

    With ``threshold`` (open-set search: one number, or a (Q, K) array of per-result
    thresholds), only the results with ``distance <= threshold`` are written, with their
    decision (``match``); a query with none gets ``no match`` (CSV: one row of rank 0 with the
    nearest distance; JSON: ``"decision": "no match"``, an empty ranking and
    ``nearest_distance``). ``ids`` (per query, per result): the JSON gives ``id`` (a vector
    gallery's image ids) instead of ``gallery_index``.

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
            _write_csv(f, query_paths, gallery_paths, dist, index, threshold)
        else:
            json.dump(dict(extra or {}, results=[
                _json_result(q, dist[qi], index[qi], gallery_paths[qi],
                             None if threshold is None else [
                                 _thr(threshold, qi, r) for r in range(len(dist[qi]))],
                             ids[qi] if ids is not None else None)
                for qi, q in enumerate(query_paths)]), f, indent=1)
    os.replace(tmp, path)


def _json_result(query, dist, index, gallery_paths, threshold, ids=None):
    """One query's JSON record (see :func:`write_results`; ``threshold``: per result)."""
    ranking = [dict({"rank": r, "gallery": gp, "distance": float(d)},
                    **({"id": ids[r - 1]} if ids is not None else {"gallery_index": int(g)}))
               for r, (d, g, gp) in enumerate(zip(dist, index, gallery_paths), 1)
               if g >= 0 and (threshold is None or d <= threshold[r - 1])]
    if threshold is None:
        return {"query": query, "ranking": ranking}
    for item in ranking:
        item["decision"] = "match"
        item["threshold"] = float(threshold[item["rank"] - 1])
    out = {"query": query, "decision": "match" if ranking else "no match", "ranking": ranking}
    if not ranking and len(index) and index[0] >= 0:
        out["nearest_distance"] = float(dist[0])
    return out


def draw_results(out_dir: str, query_paths: Sequence[str],
                 gallery_paths: Sequence[Sequence[Optional[str]]], dist: np.ndarray,
                 chosen: Sequence[int], size: Tuple[int, int],
                 threshold: Any = None) -> List[str]:
    """Rank-list pictures of the ``chosen`` query indices with visualize's ``draw_ranklist``;
    with ``threshold``, the top-K stay drawn and visualize's ``mark_threshold`` marks where the
    accepted results end ("no match" when none is).

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
        if threshold is not None:
            t = [_thr(threshold, qi, r) for r in range(len(gal))]
            vis.mark_threshold(img, boxes, [g["dist"] for g in gal],
                               t[0] if len(set(t)) == 1 else t)
        stem = os.path.splitext(os.path.basename(query_paths[qi]))[0]
        f = os.path.join(out_dir, f"search_{n:03d}_{stem}.png")
        img.save(f)
        files.append(f)
    return files


def _short(path, n=14):
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem if len(stem) <= n else stem[:n - 1] + "~"


# ----------------------------------------------------------------------------- main
def _approximate(gallery, queries, want, topk, index_type, index_path, nlist, nprobe, ef_search,
                 pq_m, recall_sample, seed, progress, info):
    """Search through a faiss index (built or reloaded); its recall@``topk`` against the exact
    search on ``recall_sample`` queries printed to stderr and stored in ``info``."""
    import numpy as np

    from fastreid_plugins.evaluation.knn import index_factory_string, set_search_params

    t0 = time.time()
    factory = index_factory_string(index_type, gallery.dim, len(gallery), nlist, pq_m)
    info["factory"] = factory
    idx = load_or_build_index(gallery, factory, index_path, progress=progress, seed=seed)
    info["build_or_load_s"] = time.time() - t0
    params = set_search_params(idx, nprobe, max(int(ef_search), want))
    info.update(params)
    dist, index = _index_search(idx, queries, want, gallery.metric)
    if recall_sample:
        rng = np.random.default_rng(seed)
        sel = np.sort(rng.choice(len(queries), min(recall_sample, len(queries)), replace=False))
        _, ex = exact_search(gallery, queries[sel], topk)
        info["recall_at_k"] = recall_at_k(index[sel, :topk], ex)
        info["recall_queries"] = len(sel)
        said = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in params.items())
        print(f"recall@{topk} of {factory}{f' ({said})' if said else ''} vs exact search on "
              f"{len(sel)} queries: {info['recall_at_k']:.4f}", file=sys.stderr)
    return dist, index


def search(gallery: FeatureStore, queries: np.ndarray, topk: int = TOPK,
           index_type: Optional[str] = None, index_path: Optional[str] = None,
           nlist: Optional[int] = None, nprobe: Optional[int] = None,
           pq_m: Optional[int] = None, recall_sample: int = RECALL_SAMPLE, rerank: bool = False,
           rerank_candidates: int = RERANK_CANDIDATES, rerank_block: int = RERANK_BLOCK,
           seed: int = 0, progress: bool = False,
           ef_search: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
    """Top-``topk`` gallery neighbours of ``queries`` (see the module docstring).

    Args:
        gallery (FeatureStore); queries (np.ndarray): (Q, D) raw features.
        topk (int): results per query.
        index_type (str or None): ``exact`` or an index kind / faiss factory string of
            :func:`fastreid_plugins.evaluation.knn.build_index`; None:
            ``PLUGIN_DEFAULTS["TEST.RERANK.KNN"]``.
        index_path (str or None): save / reload the approximate index here.
        nlist, nprobe, ef_search, pq_m: IVF lists (None or 0: ``4 sqrt(G)``), lists searched,
            HNSW beam, PQ sub-vectors; None: ``PLUGIN_DEFAULTS["TEST.RERANK.KNN_*"]``.
        recall_sample (int): queries whose approximate results are compared with exact search.
        rerank (bool): re-rank the top ``rerank_candidates`` per query (blocks of
            ``rerank_block`` queries) with the gallery config's ``TEST.RERANK.K1/K2/LAMBDA``.

    Returns:
        tuple: ``(dist, index, info)``: (Q, topk) float32 distances ascending, (Q, topk) int64
        gallery indices (-1 = none), and a dict with ``recall_at_k``, timings, the index type.

    Raises:
        ConfigError: ``topk < 1``, a bad index type / factory string, ``nlist`` above G.
    """
    if topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {topk}")
    index_type = index_type or _knn_default("KNN")
    nlist = nlist if nlist is not None else _knn_default("KNN_NLIST")
    nprobe = nprobe if nprobe is not None else _knn_default("KNN_NPROBE")
    ef_search = ef_search if ef_search is not None else _knn_default("KNN_EF_SEARCH")
    want = max(topk, rerank_candidates) if rerank else topk
    info = {"metric": gallery.metric, "index_type": index_type, "num_gallery": len(gallery),
            "num_queries": len(queries), "topk": topk}
    t0 = time.time()
    if index_type == "exact":
        dist, index = exact_search(gallery, queries, want, progress=progress)
    else:
        dist, index = _approximate(gallery, queries, want, topk, index_type, index_path, nlist,
                                   nprobe, ef_search, pq_m, recall_sample, seed, progress, info)
    info["search_s"] = time.time() - t0 - info.get("build_or_load_s", 0.0)
    if rerank:
        rr = gallery.manifest.get("rerank") or _rerank_defaults()
        dist, index = rerank_topk(gallery, queries, dist, index, topk, rr["k1"], rr["k2"],
                                  rr["lambda"], gallery.metric, rerank_block)
        info["rerank"] = dict(rr, candidates=want, block=rerank_block)
    return dist[:, :topk], index[:, :topk], info


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m fastreid_plugins.tools.search`` (the k-NN defaults read
    from ``PLUGIN_DEFAULTS``)."""
    p = argparse.ArgumentParser(prog="python -m fastreid_plugins.tools.search",
                                description="Search a gallery of extracted re-id features.")
    p.add_argument("--gallery", required=True, metavar="DIR", help="extraction --out folder")
    p.add_argument("--query", required=True, metavar="FEATURES|IMAGES",
                   help="an extraction folder, or images (folder / list / file) to extract "
                        "with --config-file")
    p.add_argument("--topk", type=int, default=TOPK)
    p.add_argument("--config-file", default=None, help="model config (query images only)")
    p.add_argument("--output", default=None, help="results .csv or .json (default: CSV on "
                                                  "stdout)")
    p.add_argument("--index-type", default=_knn_default("KNN"),
                   help="exact | ivf | hnsw | ivf-flat | ivf-pq | a faiss index_factory string "
                        "(default %(default)s: TEST.RERANK.KNN's default)")
    p.add_argument("--index", default=None, metavar="PATH", help="save / reload the index")
    p.add_argument("--nlist", type=int, default=_knn_default("KNN_NLIST"),
                   help="IVF lists (default %(default)s = 4 sqrt(G))")
    p.add_argument("--nprobe", type=int, default=_knn_default("KNN_NPROBE"),
                   help="IVF lists searched per query (default %(default)s)")
    p.add_argument("--ef-search", type=int, default=_knn_default("KNN_EF_SEARCH"),
                   help="HNSW search beam (default %(default)s, at least the results asked)")
    p.add_argument("--pq-m", type=int, default=None, help="PQ sub-vectors (default D/8)")
    p.add_argument("--recall-sample", type=int, default=RECALL_SAMPLE,
                   help="queries for the recall@K check of an approximate index (0 = off)")
    p.add_argument("--threshold", default=None, metavar="FILE|VALUE",
                   help="open-set search: keep the results with distance <= the threshold (a "
                        "number, or a file of python -m fastreid_plugins.tools.calibrate: same "
                        "metric and model required), 'no match' for a query with none")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking of the top-K")
    p.add_argument("--rerank-candidates", type=int, default=RERANK_CANDIDATES)
    p.add_argument("--rerank-block", type=int, default=RERANK_BLOCK)
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
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of a user error (taken by cli.run_cli)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of "
                   "--config-file (MODEL.WEIGHTS path/to/model.pth)")
    return p


def _chosen_queries(paths, vis, vis_queries, query):
    """Query indices to draw: the first ``vis``, then those named by ``vis_queries``.

    Raises:
        DatasetError: a ``--vis-queries`` entry that is no query.
    """
    chosen = list(range(min(vis, len(paths))))
    for v in vis_queries or ():
        hits = [i for i, p in enumerate(paths)
                if p == v or os.path.basename(p) == os.path.basename(v)]
        if not hits:
            raise DatasetError(f"--vis-queries: {v!r} is not among the queries of {query!r}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the search CLI; returns ``{"dist", "index", "query_paths", "gallery_paths", "info",
    "vis"}``.

    Raises:
        UserError: bad arguments or input (missing folders, dimension / metric mismatch, ...);
            :func:`fastreid_plugins.cli.run_cli` prints it as one ``Error:`` block.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    gallery = FeatureStore(args.gallery)
    threshold = _threshold(args.threshold, gallery, args.rerank)
    if not os.path.exists(args.query):
        raise DatasetNotFoundError(f"--query not found: {args.query!r}")
    qs = load_queries(args.query, gallery, args.config_file, args.opts, args.batch_size,
                      args.num_workers)
    dist, index, info = search(
        gallery, qs.features, args.topk, args.index_type, args.index, args.nlist, args.nprobe,
        args.pq_m, args.recall_sample, args.rerank, args.rerank_candidates, args.rerank_block,
        args.seed, progress=not args.no_progress, ef_search=args.ef_search)
    flat = gallery.paths(index.reshape(-1))
    gpaths = [flat[i * index.shape[1]:(i + 1) * index.shape[1]] for i in range(len(index))]
    t = None
    if threshold is not None:
        t = threshold[0]
        info["threshold"] = threshold[1]
        if threshold[1].get("per_camera_pair"):  # per result: the pair's or the global one
            from fastreid_plugins.evaluation.verification import result_thresholds

            t = result_thresholds(threshold[1], qs.paths, gpaths)
        info["no_match"] = int(sum(1 for qi in range(len(dist))
                                   if not ((dist[qi] <= t if isinstance(t, float) else
                                            dist[qi] <= t[qi]) & (index[qi] >= 0)).any()))
        said = "" if isinstance(t, float) else " (global; per camera pair where calibrated)"
        logger.info(f"threshold {threshold[0]:.6g}{said}: {info['no_match']} of {len(dist)} "
                    "queries without a match")
    if args.output:
        write_results(args.output, qs.paths, gpaths, dist, index, {"info": info}, threshold=t)
        logger.info(f"top-{args.topk} of {len(qs.paths)} queries written to {args.output}")
    else:
        _write_csv(sys.stdout, qs.paths, gpaths, dist, index, t)
    chosen = _chosen_queries(qs.paths, args.vis, args.vis_queries, args.query)
    vis = []
    if chosen:
        size = args.vis_size or _input_size(gallery.manifest)
        vis = draw_results(args.vis_dir, qs.paths, gpaths, dist, chosen, size, t)
        logger.info(f"{len(vis)} rank-list pictures written to {args.vis_dir}")
    return {"dist": dist, "index": index, "query_paths": qs.paths, "gallery_paths": gpaths,
            "info": info, "vis": vis}


def _threshold(spec, gallery, rerank):
    """``(value, record)`` of ``--threshold`` (None without one), checked against the gallery's
    metric and model (:func:`fastreid_plugins.evaluation.verification.load_threshold`).

    Raises:
        ConfigError: a bad value / file, another metric or model, or ``--rerank`` with a file
            calibrated on plain distances.
    """
    if spec is None:
        return None
    from fastreid_plugins.evaluation.verification import load_threshold

    value, rec = load_threshold(spec, gallery.metric, gallery.manifest.get("weights_sha256"))
    if rerank and rec.get("source") != "value":
        raise ConfigError(f"--threshold {spec!r} was calibrated on {gallery.metric} distances, "
                          "not re-ranked ones: drop --rerank or pass a value.")
    return value, rec


def _input_size(manifest):
    size = manifest.get("input_size") or [128, 128]
    return int(size[0]), int(size[-1])


if __name__ == "__main__":
    from fastreid_plugins.cli import run_cli

    run_cli(main, sys.argv[1:])
