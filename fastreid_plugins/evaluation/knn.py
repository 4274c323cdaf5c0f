"""k nearest neighbours of a feature set among itself: every k-NN backend of the re-ranking.

The k-reciprocal re-ranking (:mod:`fastreid_plugins.evaluation.sparse_rerank`; Zhong et al.,
"Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017, Eq. 3-4) starts from
the ``k1`` nearest neighbours (squared L2, the point itself included) of every point of
query + gallery. Its cost at benchmark size is this search: O(N^2 D), 138,517 x 2048 at VERI-Wild
Large. FastReID 1.4.0 gets the table from faiss (``compute_jaccard_distance``); here:

* ``"faiss"``: faiss' exact L2 search (``faiss.knn``; a GPU index when faiss sees a GPU).
* ``"torch"``: exact, in torch. On the CPU a symmetric blocked search computes each block pair of
  ``X X^T`` once (half of faiss's multiply-adds; same neighbours up to the order of distances
  equal within float32 rounding) with oneDNN's float32 GEMM (:func:`onednn_linear_op`, a private
  torch op behind a version guard), or, on CPUs with native bfloat16, through a bfloat16 screen
  whose candidates are re-scored in float32 and certified row by row (:func:`_knn_screened`). On
  CUDA, a chunked matrix-product search.
* ``"auto"``: the exact backend for the machine: ``"torch"`` on a CPU-only machine above 4,096
  points or with a CUDA device and a CPU-only faiss, ``"faiss"`` otherwise.
* ``"ivf"`` / ``"hnsw"``: faiss's approximate indexes (8-bit scalar-quantised vectors, candidates
  re-scored exactly), for the largest benchmarks.

Configuration: ``TEST.RERANK.KNN`` (``exact`` / ``ivf`` / ``hnsw``) with ``KNN_NLIST``,
``KNN_NPROBE``, ``KNN_EF_SEARCH`` is turned into a backend and its options in one place,
:func:`knn_from_cfg`; their defaults are :data:`fastreid_plugins.config.PLUGIN_DEFAULTS`.

Every faiss index of the package is made by :func:`build_index` (kinds :data:`INDEX_KINDS` or a
faiss ``index_factory`` string; trained on a seeded sample, filled block by block from an array
or a :class:`VectorSource`) and tuned by :func:`set_search_params`: the approximate backends
above and the gallery search of :mod:`fastreid_plugins.tools.search` (whose ``--index-type``,
``--nlist``, ``--nprobe``, ``--ef-search`` defaults are the same ``PLUGIN_DEFAULTS`` keys).
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    Optional,
    Protocol,
    Tuple,
    Union,
)

import numpy as np
import torch

from ..config import PLUGIN_DEFAULTS, require_plugins_config
from ..errors import ConfigError

if TYPE_CHECKING:
    import faiss
    from fastreid.config import CfgNode

logger = logging.getLogger(__name__)

__all__ = ["knn_search", "knn_from_cfg", "KNN_BACKENDS", "KNN_TYPES", "row_sq_norms",
           "row_norms", "onednn_linear_op", "ONEDNN_LINEAR_OP", "build_index",
           "set_search_params", "index_factory_string", "default_nlist", "prepare_vectors",
           "VectorSource", "INDEX_KINDS", "METRICS", "HNSW_M", "scores_to_distance", "merge_topk",
           "exact_topk"]

# faiss' exhaustive search processes queries in blocks of this many rows; searching in chunks
# that are multiples of it reproduces a single search call exactly
_FAISS_QUERY_BLOCK = 4096
# rows per block of the symmetric exact CPU search (a (4096, 4096) float32 block is 64 MB)
_SYMMETRIC_BLOCK = 4096

#: index kinds of :func:`build_index` (anything else is read as a faiss ``index_factory`` string)
INDEX_KINDS = ("exact", "ivf", "hnsw", "ivf-flat", "ivf-pq")
#: distances: ``euclidean`` = squared L2 (faiss L2); ``cosine`` = faiss inner product of
#: L2-normalised rows (the evaluator's ``TEST.METRIC`` names)
METRICS = ("euclidean", "cosine")
#: HNSW graph degree (links per vector) of the ``hnsw`` kind
HNSW_M = 32
#: k-means iterations of an IVF coarse quantizer: 10 on >= 40 points per list takes seconds, not
#: minutes, at VERI-Wild Large size (faiss's default is 25)
KMEANS_ITERS = 10
#: IVF training sample: ``max(TRAIN_PER_LIST * nlist, TRAIN_MIN)`` vectors (faiss warns below 39
#: per list; a PQ sub-quantizer's 256 centroids want ~10,000); without IVF: ``TRAIN_OTHER``
TRAIN_PER_LIST, TRAIN_MIN, TRAIN_OTHER = 40, 10000, 65536
#: rows added to an index per call
ADD_BLOCK = 16384


def _progress(iterable, enabled, desc):
    """``iterable`` wrapped in a transient tqdm bar labelled ``desc`` when ``enabled``."""
    if not enabled:
        return iterable
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (a log file gets no "0%|" lines)
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, disable=None)


def row_sq_norms(x: torch.Tensor, step: int = 8192) -> torch.Tensor:
    """(N,) ``(x * x).sum(1)`` computed over row blocks: no (N, D) temporary (1 GB at VERI-Wild
    Large size); the same values, row by row."""
    return torch.cat([(x[s:s + step] * x[s:s + step]).sum(1) for s in range(0, len(x), step)]) \
        if len(x) else x.new_zeros(0)


def row_norms(x: torch.Tensor, step: int = 8192) -> torch.Tensor:
    """(N, 1) ``x.norm(p=2, dim=1, keepdim=True)`` (F.normalize's norm) over row blocks."""
    return torch.cat([x[s:s + step].norm(p=2, dim=1, keepdim=True)
                      for s in range(0, len(x), step)]) if len(x) else x.new_zeros(0, 1)


def _faiss_gpu_count():
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a dependency
        return 0
    return getattr(faiss, "get_num_gpus", lambda: 0)()


KNN_BACKENDS = ("auto", "faiss", "torch", "ivf", "hnsw")


def knn_search(features: torch.Tensor, k: int, backend: str = "auto",
               device: Optional[Union[str, torch.device]] = None, progress: bool = False,
               nlist: Optional[int] = None, nprobe: Optional[int] = None, hnsw_m: int = HNSW_M,
               ef_search: Optional[int] = None, refine: int = 2) -> np.ndarray:
    """k nearest neighbours of every row of ``features`` among all rows (itself included).

    Exact by default; ``"ivf"`` / ``"hnsw"`` are faiss's approximate indexes, for the largest
    benchmarks where the exact O(N^2 D) search dominates the re-ranking time. Both store the
    vectors 8-bit scalar-quantised (N x D bytes, a quarter of the float32 features, instead of a
    full float copy) and return the ``k`` best of ``refine * k`` candidates re-scored exactly
    (float32 squared L2), so only candidates the index misses are lost.

    Reference:
        FastReID 1.4.0's ``compute_jaccard_distance`` takes the same (N, k1) table from faiss
        (``search_raw_array_pytorch`` / ``GpuIndexFlatL2``); IVF: Jegou et al., "Product
        Quantization for Nearest Neighbor Search", TPAMI 2011; HNSW: Malkov and Yashunin, TPAMI
        2020; both as implemented by faiss (Johnson et al., "Billion-scale similarity search
        with GPUs", IEEE Trans. Big Data 2019).

    Args:
        features (torch.Tensor): (N, D) float features.
        k (int): number of neighbours per row (``k <= N``).
        backend (str): ``"faiss"`` (exact L2, GPU index when faiss sees a GPU), ``"torch"`` (exact
            ``||x||^2 + ||y||^2 - 2 x.y`` with ``topk`` on ``device``; on the CPU each block pair
            of ``X X^T`` is computed once, half of faiss's multiply-adds, through a certified
            bfloat16 screen where the CPU has native bfloat16: :func:`_knn_symmetric`),
            ``"auto"`` (``"torch"`` on a CPU-only machine above one block of rows, or with a
            CPU-only faiss and a CUDA ``device``; faiss otherwise), ``"ivf"`` (faiss
            ``IndexIVFScalarQuantizer``: ``nlist`` k-means cells, ``nprobe`` searched) or
            ``"hnsw"`` (faiss ``IndexHNSWSQ``: ``hnsw_m`` links, ``ef_search``).
        device (str or torch.device): device of the torch backend (default: CUDA if available).
        progress (bool): show a tqdm bar.
        nlist (int): IVF cells (None or 0: :func:`default_nlist`); nprobe (int): cells searched
            per query (None: ``PLUGIN_DEFAULTS["TEST.RERANK.KNN_NPROBE"]``).
        hnsw_m (int), ef_search (int): HNSW graph degree and search beam width (None:
            ``PLUGIN_DEFAULTS["TEST.RERANK.KNN_EF_SEARCH"]``; at least ``refine * k``).
        refine (int): candidates per neighbour re-scored exactly by the approximate backends.

    Returns:
        np.ndarray: (N, k) int64 neighbour indices, nearest first (squared L2).

    Raises:
        ValueError: unknown backend, or ``k > N``; ConfigError (a ``ValueError``): ``nlist``
            larger than N.
    """
    if backend not in KNN_BACKENDS:
        raise ValueError(f"knn backend must be one of {KNN_BACKENDS}, got {backend!r}")
    n = features.shape[0]
    if k > n:
        raise ValueError(f"k={k} neighbours requested among only {n} features")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if backend == "auto":
        cpu_large = device.type == "cpu" and n > _SYMMETRIC_BLOCK and _faiss_gpu_count() == 0
        gpu_no_faiss = device.type == "cuda" and _faiss_gpu_count() == 0
        backend = "torch" if (cpu_large or gpu_no_faiss) else "faiss"
    if backend == "torch":
        if device.type == "cpu":
            return _knn_symmetric(features, k, progress)
        return _knn_torch(features, k, device, progress)
    if backend in ("ivf", "hnsw"):
        return _knn_approximate(features, k, backend, progress, nlist, nprobe, hnsw_m,
                                ef_search, refine)
    return _knn_faiss(features, k, progress)


# TEST.RERANK.KNN -> knn_search backend: "exact" is the exact search best for the machine
KNN_TYPES = {"exact": "auto", "ivf": "ivf", "hnsw": "hnsw"}


def knn_from_cfg(cfg: CfgNode) -> Tuple[str, Optional[Dict[str, Any]]]:
    """The k-NN backend and its options for ``TEST.RERANK``: the one place that reads the keys.

    ``TEST.RERANK.KNN`` (keys added by :func:`fastreid_plugins.config.add_plugins_config`):
    ``"exact"`` -> backend ``"auto"`` (faiss or the symmetric torch search, whichever is exact
    and faster on this machine: see :func:`knn_search`), ``"ivf"`` -> ``"ivf"`` with
    ``KNN_NLIST`` (0 = ``4 sqrt(N)``) and ``KNN_NPROBE``, ``"hnsw"`` -> ``"hnsw"`` with
    ``KNN_EF_SEARCH`` (defaults: :data:`fastreid_plugins.config.PLUGIN_DEFAULTS`).

    Args:
        cfg (CfgNode): a config with ``TEST.RERANK``.

    Returns:
        tuple: ``(backend, params)``: a key of :data:`KNN_BACKENDS` and the keyword arguments of
        :func:`knn_search` for it (``None`` for the exact search).

    Raises:
        ConfigError (a ``ValueError``): ``TEST.RERANK.KNN`` is not one of ``exact``, ``ivf``,
            ``hnsw``; or the config was built without ``add_plugins_config``.
    """
    require_plugins_config(cfg, "TEST.RERANK.KNN")
    rr = cfg.TEST.RERANK
    knn = str(rr.KNN).lower()
    if knn not in KNN_TYPES:
        raise ConfigError(f"TEST.RERANK.KNN must be one of {tuple(KNN_TYPES)}, got {rr.KNN!r}")
    if knn == "exact":
        return KNN_TYPES[knn], None
    params = {"nlist": rr.KNN_NLIST or None, "nprobe": rr.KNN_NPROBE,
              "ef_search": rr.KNN_EF_SEARCH}
    return KNN_TYPES[knn], params


def _knn_approximate(features, k, backend, progress, nlist, nprobe, hnsw_m, ef_search, refine):
    x = np.ascontiguousarray(features.detach().cpu().numpy(), dtype=np.float32)
    n = x.shape[0]
    index = build_index(x, backend, "euclidean", nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m,
                        progress=progress, desc=f"re-ranking: k-NN index ({backend})")
    if backend == "hnsw":
        ef = ef_search if ef_search is not None else _knn_default("KNN_EF_SEARCH")
        set_search_params(index, ef_search=max(int(ef), refine * k))
    kc = int(min(n, max(k, refine * k)))
    xt = torch.from_numpy(x)
    sq = row_sq_norms(xt)
    out = np.empty((n, k), dtype=np.int64)
    chunk = 256  # (chunk, kc, D) gathered candidates: 84 MB at kc = 40, D = 2048
    for s in _progress(range(0, n, chunk), progress, f"re-ranking: k-NN search ({backend})"):
        e = min(n, s + chunk)
        cand = torch.from_numpy(index.search(x[s:e], kc)[1])  # (b, kc), -1 where too few
        cand_ok = cand >= 0
        c = cand.clamp_min(0)
        dots = torch.bmm(xt[c], xt[s:e, :, None])[..., 0]  # (b, kc) exact re-scoring
        dist = sq[s:e, None] + sq[c] - 2 * dots
        dist[~cand_ok] = float("inf")
        best = dist.topk(k, dim=1, largest=False, sorted=True).indices
        out[s:e] = torch.gather(c, 1, best).numpy()
    return out


# ---------------------------------------------------------------- faiss indexes: one builder
def _knn_default(key):
    """``PLUGIN_DEFAULTS["TEST.RERANK.<key>"]``: the one place of the k-NN defaults."""
    return PLUGIN_DEFAULTS[f"TEST.RERANK.{key}"]


class VectorSource(Protocol):
    """N vectors read in pieces (e.g. the shards of a search gallery), for :func:`build_index`.

    Attributes:
        dim (int): the dimension D.
    """

    dim: int

    def __len__(self) -> int:
        """N."""

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """(len(indices), D) float rows of the ascending global row ``indices`` (int64)."""

    def batches(self) -> Iterator[np.ndarray]:
        """Every row once, in order, as (b, D) float blocks."""


class _ArraySource:
    """An (N, D) array as a :class:`VectorSource` (blocks of :data:`ADD_BLOCK` rows)."""

    def __init__(self, x):
        self.x, self.dim = x, x.shape[1]

    def __len__(self):
        return self.x.shape[0]

    def rows(self, indices):
        return self.x[indices]

    def batches(self):
        for s in range(0, len(self), ADD_BLOCK):
            yield self.x[s:s + ADD_BLOCK]


def prepare_vectors(x: np.ndarray, metric: str) -> np.ndarray:
    """The (N, D) rows faiss indexes / searches for ``metric``: float32, C-contiguous; for
    ``cosine`` a copy with rows L2-normalised (``F.normalize``'s eps 1e-12), so that faiss's inner
    product is ``cos`` (``x`` itself is left alone); for ``euclidean`` ``x`` unchanged (no copy
    when it is float32 C-contiguous already).

    Raises:
        ConfigError: ``metric`` is not one of :data:`METRICS`.
    """
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {METRICS}, got {metric!r}")
    if metric == "euclidean":
        return np.ascontiguousarray(x, dtype=np.float32)
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def scores_to_distance(scores: np.ndarray, metric: str) -> np.ndarray:
    """faiss scores of :func:`prepare_vectors`' rows -> the evaluator's distance, float32
    (``cosine``: 1 - inner product; ``euclidean``: faiss's squared L2 as it is)."""
    return (1.0 - scores).astype(np.float32) if metric == "cosine" else scores.astype(np.float32)


def merge_topk(best_d: np.ndarray, best_i: np.ndarray, d: np.ndarray, i: np.ndarray,
               k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of two (Q, *) candidate lists (distances, int64 indices; index -1 = none, ranked
    last), ascending distance, ties by lower index."""
    d = np.concatenate([best_d, d], axis=1)
    i = np.concatenate([best_i, i], axis=1)
    d = np.where(i < 0, np.inf, d)
    order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)


def exact_topk(queries: np.ndarray, batches: Iterable[Tuple[int, np.ndarray]], k: int,
               metric: str) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` neighbours of ``queries`` in a gallery read batch by batch: each batch is
    indexed by ``build_index(batch, "exact", metric)`` (a faiss flat index), searched, and
    merged into the running lists (:func:`merge_topk`), so only one batch is held at a time.

    Args:
        queries (np.ndarray): (Q, D) query features (raw, as extracted).
        batches (iterable): ``(offset, vectors)`` pairs, ``vectors`` (n, D) raw gallery features
            whose global indices start at ``offset``.
        k (int): neighbours per query (fewer where the gallery is smaller).
        metric (str): ``cosine`` or ``euclidean``.

    Returns:
        tuple: ``(dist, index)``: (Q, k') float32 evaluator distances ascending and (Q, k') int64
        global indices, k' = min(k, gallery size).
    """
    q = prepare_vectors(queries, metric)
    best_d = np.full((len(q), 0), np.inf, np.float32)
    best_i = np.full((len(q), 0), -1, np.int64)
    for off, g in batches:
        index = build_index(g, "exact", metric)
        del g
        s, i = index.search(q, min(int(k), index.ntotal))
        del index
        best_d, best_i = merge_topk(best_d, best_i, scores_to_distance(s, metric), i + off, k)
    return best_d, best_i


def default_nlist(n: int) -> int:
    """IVF lists for ``n`` vectors when none is given (``TEST.RERANK.KNN_NLIST 0``, search
    ``--nlist 0``): ``round(4 sqrt(n))``, at most ``n // 39`` (faiss's minimum of 39 training
    points per list), at least 1."""
    return int(max(1, min(n // 39, round(4 * np.sqrt(n)))))


def index_factory_string(kind: str, dim: int, num_vectors: int, nlist: Optional[int] = None,
                         pq_m: Optional[int] = None, hnsw_m: int = HNSW_M) -> str:
    """The faiss ``index_factory`` string of an index kind.

    ``exact`` -> ``Flat``; ``ivf`` -> ``IVF<nlist>,SQ8`` and ``hnsw`` -> ``HNSW<hnsw_m>,SQ8``
    (8-bit scalar-quantised vectors: the re-ranker's approximate k-NN); ``ivf-flat`` ->
    ``IVF<nlist>,Flat``; ``ivf-pq`` -> ``IVF<nlist>,PQ<pq_m>``; anything else is returned as is
    (a factory string for faiss to parse).

    Args:
        kind (str): one of :data:`INDEX_KINDS`, or a factory string.
        dim (int): D. num_vectors (int): N (for the default ``nlist``).
        nlist (int or None): IVF lists (None or 0: :func:`default_nlist`).
        pq_m (int or None): PQ sub-vectors (default: the first of D/8, D/4, D/2, D dividing D).
        hnsw_m (int): HNSW links per vector.

    Raises:
        ConfigError: ``ivf-pq`` with a ``pq_m`` that does not divide ``dim``.
    """
    nlist = int(nlist or default_nlist(num_vectors))
    if kind == "exact":
        return "Flat"
    if kind == "ivf":
        return f"IVF{nlist},SQ8"
    if kind == "hnsw":
        return f"HNSW{int(hnsw_m)},SQ8"
    if kind == "ivf-flat":
        return f"IVF{nlist},Flat"
    if kind == "ivf-pq":
        m = pq_m or next(m for m in (dim // 8, dim // 4, dim // 2, dim) if m and dim % m == 0)
        if m < 1 or dim % m:
            raise ConfigError(f"PQ sub-vectors (pq_m / --pq-m) {m} must divide the feature "
                              f"dimension {dim}")
        return f"IVF{nlist},PQ{m}"
    return kind


def build_index(vectors: Union[np.ndarray, VectorSource], kind: str = "exact",
                metric: str = "euclidean", nlist: Optional[int] = None,
                nprobe: Optional[int] = None, pq_m: Optional[int] = None, hnsw_m: int = HNSW_M,
                ef_search: Optional[int] = None, train_size: Optional[int] = None,
                kmeans_iters: int = KMEANS_ITERS, seed: int = 0, progress: bool = False,
                desc: Optional[str] = None) -> faiss.Index:
    """A trained and filled faiss index of ``vectors``: the one builder of the package.

    An index that needs training (IVF, PQ, SQ) is trained on a seeded sample of ``train_size``
    rows (default ``max(40 nlist, 10000)`` with IVF, else 65,536; capped at N), read through
    ``vectors.rows``; then every row is added block by block (``vectors.batches``), so a
    :class:`VectorSource` is never held whole. Rows are prepared for ``metric`` by
    :func:`prepare_vectors` (queries must be too).

    Args:
        vectors (np.ndarray or VectorSource): (N, D) float vectors.
        kind (str): one of :data:`INDEX_KINDS` or a faiss ``index_factory`` string
            (:func:`index_factory_string`).
        metric (str): ``euclidean`` (faiss L2: squared distances) or ``cosine`` (faiss inner
            product of normalised rows: scores ``cos``).
        nlist (int or None): IVF lists (None or 0: :func:`default_nlist` of N).
        nprobe (int or None): IVF lists searched per query (None:
            ``PLUGIN_DEFAULTS["TEST.RERANK.KNN_NPROBE"]``; capped at nlist).
        pq_m (int or None): PQ sub-vectors of ``ivf-pq``. hnsw_m (int): HNSW links per vector.
        ef_search (int or None): HNSW search beam (None:
            ``PLUGIN_DEFAULTS["TEST.RERANK.KNN_EF_SEARCH"]``).
        train_size (int or None): training sample size. kmeans_iters (int): IVF k-means
            iterations. seed (int): sampling seed.
        progress (bool): tqdm bar over the added blocks, labelled ``desc``.

    Returns:
        faiss.Index: searchable (``index.search(prepare_vectors(q, metric), k)``); faiss returns
        squared L2 distances (``euclidean``) or inner products (``cosine``).

    Raises:
        ConfigError: an unknown metric; a kind that is neither in :data:`INDEX_KINDS` nor a faiss
            factory string; more IVF lists than vectors; a bad ``pq_m``.
        ValueError: an array that is not 2-D.
    """
    import faiss

    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {METRICS}, got {metric!r}")
    if not hasattr(vectors, "batches"):
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise ValueError(f"build_index takes (N, D) vectors, got shape {vectors.shape}")
        vectors = _ArraySource(vectors)
    src = vectors
    n, dim = len(src), int(src.dim)
    factory = index_factory_string(kind, dim, n, nlist, pq_m, hnsw_m)
    fm = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    try:
        index = faiss.index_factory(dim, factory, fm)
    except RuntimeError as e:
        raise ConfigError(f"index type {kind!r} is neither one of {INDEX_KINDS} nor a faiss "
                          f"index_factory string: {str(e).splitlines()[0]}") from e
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.nlist > n:
        raise ConfigError(f"{factory}: {ivf.nlist} IVF lists (nlist / --nlist) need at least as "
                          f"many vectors, got {n}: lower nlist (0 = {default_nlist(n)} here)")
    if not index.is_trained:
        if ivf is not None:
            ivf.cp.niter = int(kmeans_iters)
            want = max(TRAIN_PER_LIST * ivf.nlist, TRAIN_MIN)
        else:
            want = TRAIN_OTHER
        want = min(n, int(train_size or want))
        rows = np.sort(np.random.default_rng(seed).choice(n, want, replace=False))
        sample = prepare_vectors(src.rows(rows), metric)
        index.train(sample)
        logger.debug("trained %s on %d of %d vectors", factory, len(sample), n)
        del sample  # 40 nlist x D floats: 0.5 GB at VERI-Wild Large size
    for block in _progress(src.batches(), progress, desc or f"faiss index {factory}"):
        index.add(prepare_vectors(block, metric))
    set_search_params(index, nprobe, ef_search)
    return index


def set_search_params(index: faiss.Index, nprobe: Optional[int] = None,
                      ef_search: Optional[int] = None) -> Dict[str, int]:
    """Set the search-time parameters of an index from :func:`build_index` (or read back with
    ``faiss.read_index``): an IVF index's ``nprobe`` (capped at its ``nlist``), an HNSW index's
    ``efSearch``; the defaults are ``PLUGIN_DEFAULTS["TEST.RERANK.KNN_NPROBE" / "KNN_EF_SEARCH"]``.
    Other indexes have none (exact ones).

    Returns:
        dict: the values set, ``{"nprobe": ...}`` / ``{"ef_search": ...}`` (empty for others).
    """
    import faiss

    out = {}
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        want = nprobe if nprobe is not None else _knn_default("KNN_NPROBE")
        ivf.nprobe = out["nprobe"] = int(max(1, min(int(want), ivf.nlist)))
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        want = ef_search if ef_search is not None else _knn_default("KNN_EF_SEARCH")
        hnsw.efSearch = out["ef_search"] = int(max(1, want))
    return out


def _knn_faiss(features, k, progress):
    import faiss

    x = np.ascontiguousarray(features.detach().cpu().numpy(), dtype=np.float32)
    n, d = x.shape
    if _faiss_gpu_count() > 0:  # pragma: no cover - needs faiss-gpu
        res = faiss.StandardGpuResources()
        index = faiss.GpuIndexFlatL2(res, d)
        index.add(x)
        search = lambda q: index.search(q, k)[1]  # noqa: E731
    elif hasattr(faiss, "knn"):
        search = lambda q: faiss.knn(q, x, k)[1]  # noqa: E731  (no copy of the database)
    else:  # pragma: no cover - old faiss
        index = faiss.IndexFlatL2(d)
        index.add(x)
        search = lambda q: index.search(q, k)[1]  # noqa: E731
    chunk = 4 * _FAISS_QUERY_BLOCK
    starts = list(range(0, n, chunk))
    if len(starts) > 1 and n - starts[-1] < _FAISS_QUERY_BLOCK:
        starts.pop()  # the tail joins the previous chunk (same blocks as one big call)
    bounds = list(zip(starts, starts[1:] + [n]))
    out = np.empty((n, k), dtype=np.int64)
    for s, e in _progress(bounds, progress, "re-ranking: k-NN (faiss)"):
        out[s:e] = search(x[s:e])
    return out


@torch.no_grad()
def _knn_torch(features, k, device, progress):
    x = features.to(device, torch.float32)
    sq = row_sq_norms(x)
    n = x.shape[0]
    chunk = max(1, min(n, (1 << 26) // max(n, 1)))  # (chunk, N) float32 block <= 256 MB
    out = np.empty((n, k), dtype=np.int64)
    for s in _progress(range(0, n, chunk), progress, "re-ranking: k-NN (torch)"):
        e = min(n, s + chunk)
        d = torch.addmm(sq[s:e, None] + sq[None, :], x[s:e], x.t(), beta=1, alpha=-2)
        out[s:e] = d.topk(k, dim=1, largest=False, sorted=True).indices.cpu().numpy()
    return out



def _merge_into_topk(best_d, best_i, rows, cols, vals, rows_sorted=False):
    """Merge candidate neighbours into running top-k lists, in place.

    Args:
        best_d (torch.Tensor): (N, k) float32 distances of each row's current list, ascending.
        best_i (torch.Tensor): (N, k) int64 their column indices.
        rows, cols (torch.Tensor): (M,) int64 row and column index of each candidate.
        vals (torch.Tensor): (M,) float32 candidate distances.
        rows_sorted (bool): ``rows`` is already ascending (``nonzero``'s row-major order).

    Each affected row keeps the k smallest of its current list and its candidates, ascending
    (a top-k of the row's list padded with its candidates: no sort of all M candidates).
    """
    if rows.numel() == 0:
        return
    k = best_d.shape[1]
    if not rows_sorted:
        order = torch.argsort(rows, stable=True)
        rows, cols, vals = rows[order], cols[order], vals[order]
    uniq, counts = torch.unique_consecutive(rows, return_counts=True)
    m = uniq.numel()
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(m).repeat_interleave(counts)
    pos = k + torch.arange(rows.numel()) - first[slot]
    width = k + int(counts.max())
    pad_d = torch.full((m, width), float("inf"))
    pad_i = torch.full((m, width), -1, dtype=torch.int64)
    pad_d[:, :k], pad_i[:, :k] = best_d[uniq], best_i[uniq]
    pad_d[slot, pos], pad_i[slot, pos] = vals, cols
    v, j = pad_d.topk(k, dim=1, largest=False, sorted=True)
    best_d[uniq], best_i[uniq] = v, torch.gather(pad_i, 1, j)


# ---------------------------------------------------------------- private torch internal
# The package's one use of a private torch op: oneDNN's float32 GEMM, the op Inductor lowers CPU
# linears to: ``mkldnn::_linear_pointwise(Tensor X, Tensor W, Tensor? B, str attr, Scalar?[]
# scalars, str? algorithm)``, declared in aten/src/ATen/native/mkldnn/
# RegisterMkldnnOpContextClass.cpp, CPU kernel in .../mkldnn/Linear.cpp (since torch 2.0).
# tests/test_knn.py fails, naming it, when the installed torch no longer has it.
ONEDNN_LINEAR_OP = "torch.ops.mkldnn._linear_pointwise"
_ONEDNN_MIN_TORCH = (2, 0)
_ONEDNN_OK = None


def _torch_version():
    return tuple(int(v) for v in re.findall(r"\d+", torch.__version__.split("+")[0])[:2])


def onednn_linear_op() -> Optional[Callable[..., torch.Tensor]]:
    """The private op ``torch.ops.mkldnn._linear_pointwise`` if this torch has it, else None.

    The only place of the package that reaches it. Called as ``op(a, b, None, "none", [], "")``
    with (m, D) ``a`` and (n, D) ``b`` float32 dense CPU tensors it returns the (m, n) float32
    ``a @ b.T`` (a linear layer without bias or post-op), float32 accumulation.

    Returns:
        callable or None: None on torch older than 2.0 (the op came with Inductor's CPU linear
        fusion), without oneDNN (``torch.backends.mkldnn.is_available()``), or when a later
        torch drops or renames it.
    """
    if _torch_version() < _ONEDNN_MIN_TORCH or not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # torch.ops raises AttributeError for unknown ops
        return None


def _onednn_available():
    """Whether :func:`onednn_linear_op` runs here and agrees with ``torch.mm``; checked once per
    process.

    On this project's 2-core AMD CPU it computes ``A B^T`` about 2x faster than ``torch.mm``
    (MKL's float32 GEMM takes a slower code path on AMD CPUs), in float32 with float32
    accumulation. It is a private op: if it is missing, fails, or disagrees with ``torch.mm``
    beyond float32 rounding, the search falls back to ``torch.mm`` and says so (a warning).
    """
    global _ONEDNN_OK
    if _ONEDNN_OK is None:
        op, why = onednn_linear_op(), None
        if op is None:
            why = "is not available"
        else:
            try:
                g = torch.Generator().manual_seed(0)
                a, b = torch.randn(67, 130, generator=g), torch.randn(45, 130, generator=g)
                got = op(a, b, None, "none", [], "")
                ref = torch.mm(a, b.t())
                if not (got.shape == ref.shape and not got.is_mkldnn
                        and torch.allclose(got, ref, rtol=1e-5, atol=1e-4)):
                    why = "disagrees with torch.mm"
            except Exception as e:  # noqa: BLE001 - any failure means "not usable here"
                why = f"fails ({type(e).__name__}: {e})"
        _ONEDNN_OK = why is None
        if why:
            logger.warning("k-NN: %s (oneDNN's float32 GEMM, a private torch op) %s on torch %s; "
                           "the exact search uses torch.mm instead (same neighbours, up to ~2x "
                           "slower on AMD CPUs)", ONEDNN_LINEAR_OP, why, torch.__version__)
    return _ONEDNN_OK


def _gemm_nt(a, b, onednn):
    """(m, n) float32 ``a @ b.T`` for (m, D) ``a`` and (n, D) ``b`` (oneDNN or ``torch.mm``)."""
    if onednn:
        return onednn_linear_op()(a, b, None, "none", [], "")
    return torch.mm(a, b.t())


def _topk_merge(best_d, best_i, d, offset):
    """The (b, kk) lists ``best_d`` / ``best_i`` merged with the kk smallest keys of the (b, c)
    block ``d`` (whose column j is index ``offset + j``): new (b, kk) lists, ascending."""
    kk = best_d.shape[1]
    v, i = d.topk(min(kk, d.shape[1]), dim=1, largest=False, sorted=False)
    cat_d = torch.cat([best_d, v.to(best_d.dtype)], 1)
    cat_i = torch.cat([best_i, i + offset], 1)
    v2, j = cat_d.topk(kk, dim=1, largest=False, sorted=True)
    return v2, torch.gather(cat_i, 1, j)


def _symmetric_topk(n, kk, left, right, gemm, progress, desc, block):
    """Running top-``kk`` smallest keys of every row of a symmetric (N, N) key matrix whose block
    (I, J) is ``gemm(left(I), right(J))`` (``I``, ``J``: row slices); each block pair is computed
    once (J >= I) and updates the rows of I and, transposed, the rows of J.

    Returns:
        tuple: (N, kk) float32 keys (ascending) and (N, kk) int64 column indices.
    """
    best_d = torch.full((n, kk), float("inf"))
    best_i = torch.full((n, kk), -1, dtype=torch.int64)
    starts = list(range(0, n, block))
    sparse_limit = 2 * kk  # candidates per row above which a dense top-k merge is cheaper

    def merge(s, e, d, t):  # d: (e - s, c) keys of rows s:e to columns t:t + c
        best_d[s:e], best_i[s:e] = _topk_merge(best_d[s:e], best_i[s:e], d, t)

    step = iter(_progress(range(len(starts) * (len(starts) + 1) // 2), progress, desc))
    for a in range(len(starts)):
        s, e = starts[a], min(n, starts[a] + block)
        xa = left(slice(s, e))
        for b in range(a, len(starts)):
            t, f = starts[b], min(n, starts[b] + block)
            d = gemm(xa, right(slice(t, f)))
            # only keys below a row's current kk-th can enter its list: once the lists fill up
            # they are few, and merging them replaces two (b, c) top-k passes (and a transposed
            # copy); the first blocks, where most keys qualify, use top-k
            # (keys are stored as float32; those of a bfloat16 GEMM are bfloat16 values, so the
            # threshold converts exactly and the comparison stays in the GEMM's dtype)
            mask = d < best_d[s:e, kk - 1:kk].to(d.dtype)
            if int(torch.count_nonzero(mask)) > sparse_limit * (e - s):
                merge(s, e, d, t)
            else:
                r, c = mask.nonzero(as_tuple=True)
                _merge_into_topk(best_d, best_i, r + s, c + t, d[r, c].float(), rows_sorted=True)
            if b != a:
                mask = d < best_d[t:f, kk - 1][None, :].to(d.dtype)
                if int(torch.count_nonzero(mask)) > sparse_limit * (f - t):
                    merge(t, f, d.t().contiguous(), s)
                else:
                    r, c = mask.nonzero(as_tuple=True)
                    _merge_into_topk(best_d, best_i, c + t, r + s, d[r, c].float())
            del d, mask
            next(step, None)
    return best_d, best_i


def _exact_blocks(x, sq):
    """``left`` / ``right`` block builders whose product is the float32 squared L2 distance:
    ``[x_i, ||x_i||^2, 1] . [-2 x_j, 1, ||x_j||^2] = ||x_i||^2 + ||x_j||^2 - 2 x_i . x_j`` (no
    separate pass adding the norms; scaling by -2 is exact in floating point)."""
    dim = x.shape[1]

    def left(rows):  # rows: a slice or an index tensor
        xr = x[rows]
        out = torch.empty(len(xr), dim + 2)
        out[:, :dim] = xr
        out[:, dim] = sq[rows]
        out[:, dim + 1] = 1.0
        return out

    def right(rows):
        xr = x[rows]
        out = torch.empty(len(xr), dim + 2)
        torch.mul(xr, -2.0, out=out[:, :dim])
        out[:, dim] = 1.0
        out[:, dim + 1] = sq[rows]
        return out

    return left, right


@torch.no_grad()
def _knn_symmetric(features, k, progress, block=None, onednn=None, screen=None):
    """Exact k-NN of the set against itself computing each block pair of ``X X^T`` once.

    The squared distances of block pair (I, J), J >= I, update the running top-k of the rows of I
    and (transposed) of the rows of J: half the multiply-adds of a full search (the O(N^2 D)
    product dominates the re-ranking time at VERI-Wild Large size). Float32 distances come out of
    one GEMM of augmented rows (:func:`_exact_blocks`), oneDNN's where it is available
    (:func:`_onednn_available`; ``onednn`` forces it on or off). Where the CPU multiplies bfloat16
    natively, a bfloat16 screen with certified float32 re-scoring gives the same neighbours in
    about half the time (:func:`_knn_screened`; ``screen`` forces it on or off).
    """
    x = features.detach().to("cpu", torch.float32).contiguous()
    n = x.shape[0]
    block = block or _SYMMETRIC_BLOCK
    onednn = _onednn_available() if onednn is None else bool(onednn)
    screen = _bf16_native() if screen is None else bool(screen)
    sq = row_sq_norms(x)
    if screen and n > 2 * k:
        return _knn_screened(x, sq, k, progress, block, onednn)
    left, right = _exact_blocks(x, sq)
    _, best_i = _symmetric_topk(n, k, left, right, lambda u, v: _gemm_nt(u, v, onednn),
                                progress, "re-ranking: k-NN (exact, symmetric)", block)
    return best_i.numpy()


_BF16_NATIVE = None


def _bf16_native():
    """Whether the CPU has native bfloat16 dot products (``avx512_bf16`` or ``amx_bf16`` in
    ``/proc/cpuinfo``), where oneDNN's bfloat16 GEMM is ~2x its float32 one; elsewhere bfloat16
    is emulated and slower than float32, and the screen is not used."""
    global _BF16_NATIVE
    if _BF16_NATIVE is None:
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((line for line in f if line.startswith("flags")), "").split()
            _BF16_NATIVE = bool({"avx512_bf16", "amx_bf16"} & set(flags))
        except OSError:
            _BF16_NATIVE = False
    return _BF16_NATIVE


def _bf16(t):
    return t.to(torch.bfloat16)


@torch.no_grad()
def _screen_blocks(x, sq, k, onednn, sample=512):
    """The bfloat16 screen of :func:`_knn_screened`: ``mu``, the block builders and the per-row
    error bound.

    Returns:
        tuple: ``mu`` (float), ``left(rows)`` -> (R, D + 4) bfloat16
        ``[x~_i, hi_i, lo_i, 1, 1]``, ``right(rows)`` -> (R, D + 4) bfloat16
        ``[-x~_j, -1, -1, -hi_j, -lo_j]`` (their product is the key
        ``s~_ij ~ d_ij / 2 - mu``), and (N,) float64 ``E`` such that for every pair
        ``|2 mu + 2 s~_ij - d_ij| <= 2 E_i + 2^-6 |s~_ij|`` (``d_ij`` in exact arithmetic from
        the float32 features and norms).
    """
    n, dim = x.shape
    f64 = torch.float64
    # per-row norms |x|, |x~|, |x - x~| (float64 of float32 rows: no cancellation)
    xn = sq.double().sqrt()
    bn = torch.empty(n, dtype=f64)
    rn = torch.empty(n, dtype=f64)
    for s0 in range(0, n, 8192):
        xb = x[s0:s0 + 8192]
        xt = _bf16(xb).double()
        bn[s0:s0 + 8192] = xt.norm(dim=1)
        rn[s0:s0 + 8192] = (xb.double() - xt).norm(dim=1)
    # mu: half the median k-th neighbour distance of a sample of rows (exact float32)
    rows = torch.from_numpy(np.sort(np.random.default_rng(0).choice(n, min(n, sample),
                                                                    replace=False)))
    mu = float(_knn_rows_exact(x, sq, rows, k, onednn)[0][:, -1].double().median()) / 2
    a = mu / 2 - sq.double() / 2
    hi = _bf16(a)
    lo = _bf16(a - hi.double())
    ea = (a - hi.double() - lo.double()).abs()
    hl = hi.double().abs() + lo.double().abs()
    terms = dim + 4
    gamma = terms * 2.0 ** -24 / (1 - terms * 2.0 ** -24)
    err = (xn * rn.max() + rn * bn.max() + ea + ea.max()
           + gamma * (bn * bn.max() + hl + hl.max()) + 1e-30)

    def left(rows):  # rows: a slice or an index tensor
        xr = x[rows]
        out = torch.empty(len(xr), dim + 4, dtype=torch.bfloat16)
        out[:, :dim] = xr
        out[:, dim], out[:, dim + 1] = hi[rows], lo[rows]
        out[:, dim + 2:] = 1.0
        return out

    def right(rows):
        xr = x[rows]
        out = torch.empty(len(xr), dim + 4, dtype=torch.bfloat16)
        out[:, :dim].copy_(xr).neg_()  # rounding to bfloat16, then an exact negation
        out[:, dim:dim + 2] = -1.0
        out[:, dim + 2], out[:, dim + 3] = -hi[rows], -lo[rows]
        return out

    return mu, left, right, err


@torch.no_grad()
def _knn_screened(x, sq, k, progress, block, onednn, margin=None, sample=512):
    """Exact k-NN through a bfloat16 screen with a certificate, float32 search where it fails.

    1. Screen: the symmetric blocked search of :func:`_symmetric_topk` on bfloat16 copies keeps
       the ``kc = k + margin`` best columns of every row by the key
       ``s_ij = -(x_i . x_j + a_i + a_j) = d_ij / 2 - mu`` (``a_i = mu / 2 - ||x_i||^2 / 2``,
       split into two bfloat16 terms; ``mu`` is half the median k-th neighbour distance of a
       sample of rows, so that keys near the neighbourhood boundary are small and their
       bfloat16 rounding is fine). The GEMM accumulates in float32; its output is bfloat16.
    2. Re-scoring: the float32 squared distances of the ``kc`` candidates (one sampled dense-dense
       product); the ``k`` smallest are the answer of the row if it is certified.
    3. Certificate: every error of the screen is bounded per row: input rounding
       ``|x_i.x_j - x~_i.x~_j| <= |x_i| |r_j| + |r_i| |x~_j|`` (``r = x - x~``), the split of
       ``a``, float32 accumulation ``gamma_(D+4) sum |terms|``, and the bfloat16 output
       ``2^-7 |s~|``. A column outside the screen has ``s~_ij >= beta_i`` (the row's kc-th key),
       hence ``d_ij >= L_i = 2 mu + 2 beta_i - 2^-6 |beta_i| - 2 E_i``. If the k-th re-scored
       distance is ``<= L_i`` no column outside the screen can be nearer: the row is exact.
    4. Rows not certified are searched again in float32 against all N points.

    Returns:
        np.ndarray: (N, k) int64 neighbour indices, nearest first (float32 squared L2).
    """
    n = x.shape[0]
    kc = int(min(n, k + (margin if margin is not None else k)))
    mu, left, right, err = _screen_blocks(x, sq, k, onednn, sample)
    keys, cand = _symmetric_topk(n, kc, left, right, lambda u, v: torch.mm(u, v.t()), progress,
                                 "re-ranking: k-NN (bf16 screen, symmetric)", block)
    beta = keys[:, -1].double()
    bound = 2 * mu + 2 * beta - 2.0 ** -6 * beta.abs() - 2 * err
    # re-scoring: float32 distances of the kc candidates of every row (CSR: sorted columns)
    cand = cand.sort(dim=1).values
    crow = torch.arange(0, n * kc + 1, kc)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        pattern = torch.sparse_csr_tensor(crow, cand.reshape(-1), torch.zeros(n * kc),
                                          size=(n, n), check_invariants=False)
        dots = torch.sparse.sampled_addmm(pattern, x, x.t(), beta=0.0).values().view(n, kc)
    dist = sq[:, None] + sq[cand] - 2 * dots
    best_d, j = dist.topk(k, dim=1, largest=False, sorted=True)
    out = torch.gather(cand, 1, j)
    bad = torch.nonzero(best_d[:, -1].double() > bound).flatten()
    if bad.numel():
        out[bad] = _knn_rows_exact(x, sq, bad, k, onednn)[1]
    logger.info("k-NN: bfloat16 screen certified %d of %d rows; %d searched again in float32",
                n - bad.numel(), n, bad.numel())
    _knn_screened.last_uncertified = int(bad.numel())
    return out.numpy()


_knn_screened.last_uncertified = None


@torch.no_grad()
def _knn_rows_exact(x, sq, rows, k, onednn, block=None):
    """Exact float32 k-NN of the given rows against all rows of ``x``.

    Returns:
        tuple: (R, k) float32 squared distances (ascending) and (R, k) int64 indices.
    """
    n = x.shape[0]
    block = block or _SYMMETRIC_BLOCK
    left, right = _exact_blocks(x, sq)
    out_d = torch.empty(len(rows), k)
    out_i = torch.empty(len(rows), k, dtype=torch.int64)
    for s in range(0, len(rows), block):
        lr = left(rows[s:s + block])
        best_d = torch.full((len(lr), k), float("inf"))
        best_i = torch.full((len(lr), k), -1, dtype=torch.int64)
        for t in range(0, n, block):
            d = _gemm_nt(lr, right(slice(t, t + block)), onednn)
            best_d, best_i = _topk_merge(best_d, best_i, d, t)
        out_d[s:s + block], out_i[s:s + block] = best_d, best_i
    return out_d, out_i
