"""evaluation/knn.py: the guard of the private oneDNN op, the one TEST.RERANK.KNN mapping, and
the one faiss index builder (``build_index``) shared by the re-ranker and the gallery search.

The backends themselves are checked against faiss in test_rerank.py / test_eval_chunked.py; the
search's use of the builder in test_search.py."""

import logging

import faiss
import numpy as np
import pytest
import torch
from test_rerank import assert_same_neighbours, hard_knn_set
from yacs.config import CfgNode

import fastreid_plugins  # noqa: F401
from fastreid_plugins.config import PLUGIN_DEFAULTS
from fastreid_plugins.errors import ConfigError
from fastreid_plugins.evaluation import knn
from fastreid_plugins.evaluation.chunked import options_from_cfg


def test_private_onednn_linear_op_exists_on_this_torch():
    # fails loudly when a torch upgrade drops the private op the exact k-NN relies on for speed
    # (the search itself then falls back to torch.mm: see the next test)
    op = knn.onednn_linear_op()
    assert op is not None, (
        f"{knn.ONEDNN_LINEAR_OP} is not available on torch {torch.__version__}: the exact CPU "
        f"k-NN falls back to torch.mm (~2x slower on AMD CPUs); update the shim "
        f"fastreid_plugins/evaluation/knn.py:onednn_linear_op")
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(33, 70, generator=g), torch.randn(21, 70, generator=g)
    got = op(a, b, None, "none", [], "")
    torch.testing.assert_close(got, a @ b.t(), rtol=1e-5, atol=1e-4)
    assert knn._gemm_nt(a, b, True).shape == (33, 21)


def test_onednn_op_missing_falls_back_to_torch_mm_with_a_warning(monkeypatch, caplog):
    # a torch without the op (simulated by a version guard it cannot meet): the guard says None,
    # the check warns naming the internal, and the search still gives faiss's neighbours
    monkeypatch.setattr(knn, "_ONEDNN_MIN_TORCH", (99, 0))
    monkeypatch.setattr(knn, "_ONEDNN_OK", None)
    assert knn.onednn_linear_op() is None
    with caplog.at_level(logging.WARNING, logger=knn.__name__):
        assert knn._onednn_available() is False
    assert knn.ONEDNN_LINEAR_OP in caplog.text and "torch.mm" in caplog.text
    x = hard_knn_set(n=300, seed=28)
    assert_same_neighbours(knn._knn_symmetric(x, 10, False, block=64, screen=False),
                           knn.knn_search(x, 10, backend="faiss"), x)


def rerank_node(**keys):
    from fastreid_plugins.config import get_cfg
    cfg = get_cfg()
    cfg.TEST.RERANK.merge_from_other_cfg(CfgNode({"ENABLED": True, **keys}))
    return cfg


@pytest.mark.parametrize("keys, backend, params", [
    ({}, "auto", None),  # the defaults: the exact search
    ({"KNN": "exact", "KNN_NLIST": 7}, "auto", None),
    ({"KNN": "IVF", "KNN_NLIST": 0, "KNN_NPROBE": 5},
     "ivf", {"nlist": None, "nprobe": 5, "ef_search": 128}),
    ({"KNN": "ivf", "KNN_NLIST": 9}, "ivf", {"nlist": 9, "nprobe": 64, "ef_search": 128}),
    ({"KNN": "hnsw", "KNN_EF_SEARCH": 300},
     "hnsw", {"nlist": None, "nprobe": 64, "ef_search": 300}),
])
def test_knn_from_cfg_is_the_mapping_the_evaluator_uses(keys, backend, params):
    cfg = rerank_node(**keys)
    assert knn.knn_from_cfg(cfg) == (backend, params)
    assert backend in knn.KNN_BACKENDS
    opts = options_from_cfg(cfg)["rerank"]
    assert (opts["knn"], opts["knn_params"]) == (backend, params)


def test_knn_from_cfg_rejects_unknown_types():
    with pytest.raises(ConfigError, match=r"TEST.RERANK.KNN must be one of .*'lsh'"):
        knn.knn_from_cfg(rerank_node(KNN="lsh"))


def test_a_config_without_the_plugin_keys_is_refused_by_name():
    from fastreid.config import get_cfg as fastreid_get_cfg
    cfg = fastreid_get_cfg()  # FastReID's own TEST.RERANK: no KNN keys
    cfg.TEST.RERANK.ENABLED = True
    for fn in (knn.knn_from_cfg, options_from_cfg):
        with pytest.raises(ConfigError, match=r"TEST\.RERANK\.KNN.*add_plugins_config"):
            fn(cfg)


# ----------------------------------------------------------------------------- build_index
def clustered(n, d=16, centers=20, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32)
    return c[rng.integers(0, centers, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)


def brute_force(q, x, k, metric):
    """Reference top-k (float64 numpy, ties by lower index)."""
    q, x = q.astype(np.float64), x.astype(np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = -(q @ x.T)
    else:
        d = (q * q).sum(1)[:, None] + (x * x).sum(1)[None] - 2 * q @ x.T
    return np.argsort(d, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("kind, factory, cls", [
    ("exact", "Flat", faiss.IndexFlat),
    ("ivf", "IVF12,SQ8", faiss.IndexIVFScalarQuantizer),  # the re-ranker's approximate kinds
    ("hnsw", "HNSW32,SQ8", faiss.IndexHNSWSQ),
    ("ivf-flat", "IVF12,Flat", faiss.IndexIVFFlat),
    ("ivf-pq", "IVF12,PQ4", faiss.IndexIVFPQ),  # D / 8 sub-vectors
    ("IVF12,PQ8", "IVF12,PQ8", faiss.IndexIVFPQ),  # a factory string is passed through
])
def test_index_kinds_and_factory_strings(kind, factory, cls):
    assert knn.index_factory_string(kind, 32, 500, nlist=12) == factory
    x = clustered(500, d=32)
    index = knn.build_index(x, kind, nlist=12)
    assert isinstance(faiss.downcast_index(index), cls) and index.ntotal == 500


def test_default_nlist_is_4_sqrt_n_with_39_points_per_list():
    assert knn.default_nlist(1_000_000) == 4000
    assert knn.default_nlist(10_000) == 256  # 4 sqrt(n) = 400 > 10,000 // 39
    assert knn.default_nlist(10) == 1
    assert knn.index_factory_string("ivf-flat", 8, 1_000_000) == "IVF4000,Flat"
    assert knn.index_factory_string("ivf-flat", 8, 1_000_000, nlist=0) == "IVF4000,Flat"


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_exact_index_finds_the_brute_force_neighbours(metric):
    x = clustered(700, seed=1) * np.linspace(0.5, 3, 700, dtype=np.float32)[:, None]
    q = clustered(40, seed=2)
    index = knn.build_index(x, "exact", metric)
    got = index.search(knn.prepare_vectors(q, metric), 10)[1]
    assert (got == brute_force(q, x, 10, metric)).mean() > 0.99
    # cosine: inner product of normalised rows (the norms vary 6x here: L2 would rank otherwise)
    assert metric == "euclidean" or (got != brute_force(q, x, 10, "euclidean")).any()


class _Shards:
    """A VectorSource over in-memory shards of uneven sizes; counts the rows it is asked for."""

    def __init__(self, x, sizes):
        self.x, self.dim, self.sizes, self.rows_read = x, x.shape[1], sizes, 0

    def __len__(self):
        return len(self.x)

    def rows(self, indices):
        self.rows_read += len(indices)
        return self.x[indices]

    def batches(self):
        s = 0
        for n in self.sizes:
            yield self.x[s:s + n]
            s += n


def test_a_vector_source_builds_the_same_index_as_the_array():
    x = clustered(3000, seed=3)
    q = clustered(50, seed=4)
    src = _Shards(x, [700, 1, 1299, 1000])
    a = knn.build_index(x, "ivf-flat", "cosine", nlist=16, nprobe=3)
    b = knn.build_index(src, "ivf-flat", "cosine", nlist=16, nprobe=3)
    assert b.ntotal == 3000 and src.rows_read == 3000  # max(40 nlist, 10000) capped at N
    qa = knn.prepare_vectors(q, "cosine")
    np.testing.assert_array_equal(a.search(qa, 10)[1], b.search(qa, 10)[1])
    # a smaller training sample is honoured and seeded
    src.rows_read = 0
    knn.build_index(src, "ivf-flat", nlist=16, train_size=640)
    assert src.rows_read == 640


def test_search_params_default_to_plugin_defaults_and_are_capped(monkeypatch):
    x = clustered(2000, seed=5)
    ivf = knn.build_index(x, "ivf", nlist=20)
    assert faiss.extract_index_ivf(ivf).nprobe == 20  # PLUGIN_DEFAULTS' 64, capped at nlist
    assert knn.set_search_params(ivf, nprobe=3) == {"nprobe": 3}
    assert faiss.extract_index_ivf(ivf).nprobe == 3
    hnsw = knn.build_index(x, "hnsw")
    assert hnsw.hnsw.efSearch == PLUGIN_DEFAULTS["TEST.RERANK.KNN_EF_SEARCH"]
    assert knn.set_search_params(hnsw, ef_search=300) == {"ef_search": 300}
    assert knn.set_search_params(knn.build_index(x, "exact")) == {}
    # the defaults are read from PLUGIN_DEFAULTS, not repeated
    monkeypatch.setitem(PLUGIN_DEFAULTS, "TEST.RERANK.KNN_NPROBE", 5)
    monkeypatch.setitem(PLUGIN_DEFAULTS, "TEST.RERANK.KNN_EF_SEARCH", 77)
    assert faiss.extract_index_ivf(knn.build_index(x, "ivf", nlist=20)).nprobe == 5
    assert knn.build_index(x, "hnsw").hnsw.efSearch == 77


def test_knn_search_approximate_backends_build_through_build_index(monkeypatch):
    """The re-ranker's ivf / hnsw k-NN: indexes from build_index with PLUGIN_DEFAULTS'
    nprobe / efSearch (at least refine * k)."""
    built = []

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    real = knn.build_index
    monkeypatch.setattr(knn, "build_index", spy)
    monkeypatch.setitem(PLUGIN_DEFAULTS, "TEST.RERANK.KNN_NPROBE", 2)
    x = torch.from_numpy(np.random.default_rng(6).standard_normal((1500, 16), np.float32))
    exact = knn.knn_search(x, 10, backend="faiss")
    got = knn.knn_search(x, 10, backend="ivf", nlist=16)
    assert faiss.extract_index_ivf(built[-1]).nprobe == 2 and got.shape == (1500, 10)
    assert 0.3 < np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)]) < 1.0
    knn.knn_search(x, 10, backend="hnsw")
    assert built[-1].hnsw.efSearch == max(PLUGIN_DEFAULTS["TEST.RERANK.KNN_EF_SEARCH"], 20)
    knn.knn_search(x, 100, backend="hnsw", ef_search=50)
    assert built[-1].hnsw.efSearch == 200  # refine (2) x k


def test_build_index_errors_name_the_value():
    x = clustered(100)
    with pytest.raises(ConfigError, match=r"'NoSuch,Index'.*index_factory"):
        knn.build_index(x, "NoSuch,Index")
    with pytest.raises(ConfigError, match=r"IVF500,Flat: 500 IVF lists .*got 100"):
        knn.build_index(x, "ivf-flat", nlist=500)
    with pytest.raises(ConfigError, match="metric"):
        knn.build_index(x, "exact", "manhattan")
    with pytest.raises(ValueError, match=r"\(N, D\) vectors, got shape \(100,\)"):
        knn.build_index(x[:, 0], "exact")
    with pytest.raises(ConfigError, match="dimension 16"):
        knn.index_factory_string("ivf-pq", 16, 100, pq_m=5)
