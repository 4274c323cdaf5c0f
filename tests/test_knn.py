"""evaluation/knn.py: the guard of the private oneDNN op and the one TEST.RERANK.KNN mapping.

The backends themselves are checked against faiss in test_rerank.py / test_eval_chunked.py."""

import logging

import pytest
import torch
from yacs.config import CfgNode

import fastreid_plugins  # noqa: F401
from fastreid_plugins.evaluation import knn
from fastreid_plugins.evaluation.chunked import options_from_cfg
from fastreid_plugins.errors import ConfigError

from test_rerank import assert_same_neighbours, hard_knn_set


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
