"""Evaluation: FastReID's evaluator and re-ranking without run-time compilation or CUDA.

Targets ``fastreid.evaluation.reid_evaluation.ReidEvaluator`` and
``fastreid.utils.compute_dist.compute_jaccard_distance``.
"""

from __future__ import annotations

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

import functools
import logging

import torch

from .. import upstream
from .base import describe, patch_attr

__all__ = ["apply"]

logger = logging.getLogger(__name__)

describe("ReidEvaluator.no_compile", concern="evaluation", changes_models=False,
         why="ReidEvaluator runs `make` inside site-packages at construction and sys.exit(1)s "
             "on failure. Never compile at run time (the plugins' evaluator uses a vectorised "
             "ranker, fastreid_plugins.evaluation.rank).")
describe("rerank.cpu", concern="evaluation", changes_models=False,
         why="compute_jaccard_distance (TEST.RERANK) forces .cuda() and faiss-GPU: without "
             "CUDA / faiss GPUs it runs faiss-CPU (search_option 3).")


def _patch_evaluator_compile() -> None:
    def _compile_dependencies(self):
        try:
            from fastreid.evaluation.rank_cylib.rank_cy import evaluate_cy  # noqa: F401
        except ImportError:
            logger.info("FastReID's Cython ranker is not built; not compiling it at run time "
                        "(fastreid_plugins' vectorised ranker is used by VehicleReidEvaluator).")

    upstream.replace_private_method(
        "ReidEvaluator._compile_dependencies",
        lambda owner, name: patch_attr(owner, name, "ReidEvaluator._compile_dependencies",
                                       lambda original: _compile_dependencies,
                                       tag="ReidEvaluator.no_compile"))


def _patch_rerank() -> None:
    import faiss
    import fastreid.utils.compute_dist as cd

    def wrap(original):
        @functools.wraps(original)
        def compute_jaccard_distance(features, k1=20, k2=6, search_option=0, fp16=False):
            if not torch.cuda.is_available() or getattr(faiss, "get_num_gpus", lambda: 0)() == 0:
                search_option = 3
                features = features.cpu().contiguous()
            return original(features, k1=k1, k2=k2, search_option=search_option, fp16=fp16)
        return compute_jaccard_distance

    patch_attr(cd, "compute_jaccard_distance", "compute_jaccard_distance", wrap,
               tag="rerank.cpu")


def apply() -> None:
    """Apply this module's patches (idempotent)."""
    _patch_evaluator_compile()
    _patch_rerank()
