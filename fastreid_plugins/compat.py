"""Compatibility patches that make FastReID 1.4.0 work on Python 3.11, torch 2.x and CPU-only hosts.

FastReID 1.4.0 (PyPI) was written for torch 1.x on CUDA. On Python 3.11 / torch 2.14 without a GPU
it fails to import, silently trains nothing, and dies in several CUDA-only code paths. Every patch
here is applied from our side (FastReID's files are never edited or copied), idempotently (applying
twice is a no-op), and only where it is needed, so the same code runs on a FastReID git checkout on
``PYTHONPATH`` and on a CUDA machine.

Two stages:

* :func:`apply_import_shims` must run *before* ``fastreid.data`` is imported: it provides the
  removed ``torch._six.string_classes`` and ``collections.Mapping`` names.
* :func:`apply` patches the imported FastReID modules (optimizer, loaders, AMP, evaluator, re-ranking,
  checkpoints, in-place normalisation, pretrained backbone weights).

``fastreid_plugins/__init__.py`` calls both once. :data:`APPLIED` lists the names of the patches
that were applied (tests use it, and :data:`ORIGINALS` keeps the unpatched callables so each test
can show the failure the patch fixes). :func:`patch_attr` is the one way a patch replaces a FastReID
attribute here and in :mod:`fastreid_plugins.data.validation` (one marker, one :data:`ORIGINALS`).
"""

import collections
import collections.abc
import functools
import importlib
import logging
import os
import pickle
import sys
import types
import warnings
import zipfile

import torch
from .errors import CheckpointUnpicklingError, CorruptCheckpointError  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

APPLIED = []
ORIGINALS = {}

_MARK = "_fastreid_plugins_patched"


def _cuda():
    return torch.cuda.is_available()


def _mark(fn):
    setattr(fn, _MARK, True)
    return fn


def _is_patched(obj, name):
    return getattr(getattr(obj, name, None), _MARK, False)


def patch_attr(owner, name, key, make_wrapper, *, modules=(), tag=None, applied=None):
    """Replace ``owner.<name>`` by ``make_wrapper(original)``, once (idempotent).

    The shape every simple patch shares: if ``owner.<name>`` already carries the patch marker, do
    nothing; otherwise keep the original in :data:`ORIGINALS` under ``key``, mark the wrapper,
    assign it to ``owner`` and to every module named in ``modules`` that holds the original object
    (FastReID re-exports many functions, ``from .build import build_optimizer``, so a patch must
    reach every module that bound the name at import time), and record ``tag`` in ``applied``
    (default :data:`APPLIED`) unless it is already there.

    Args:
        owner: the module or class holding the attribute.
        name (str): the attribute.
        key (str): the :data:`ORIGINALS` key for the unpatched attribute.
        make_wrapper (callable): ``original -> replacement``; called only when patching.
        modules (Sequence[str]): further module names that re-export the attribute.
        tag (str): the name recorded in ``applied`` (``None``: record nothing).
        applied (list): the list of applied patch names (default :data:`APPLIED`).

    Returns:
        bool: True if this call applied the patch, False if it was already in place.
    """
    if _is_patched(owner, name):
        return False
    original = getattr(owner, name)
    ORIGINALS[key] = original
    new = _mark(make_wrapper(original))
    setattr(owner, name, new)
    for mod_name in modules:
        mod = sys.modules.get(mod_name)
        if mod is not None and getattr(mod, name, None) is original:
            setattr(mod, name, new)
    applied = APPLIED if applied is None else applied
    if tag is not None and tag not in applied:
        applied.append(tag)
    return True


# --------------------------------------------------------------------------------------------
# Stage 1: import shims
# --------------------------------------------------------------------------------------------
def apply_import_shims():
    """Provide names removed from Python 3.10+ and torch 2.x that FastReID imports.

    * ``from torch._six import string_classes`` (fastreid/data/build.py)
    * ``from collections import Mapping`` (fastreid/data/build.py, evaluation/testing.py)
    """
    if "torch._six" not in sys.modules:
        try:
            importlib.import_module("torch._six")  # torch < 2.0 still has it
        except ImportError:
            six = types.ModuleType("torch._six")
            six.string_classes = (str, bytes)
            six.int_classes = (int,)
            six.container_abcs = collections.abc
            six.inf = float("inf")
            sys.modules["torch._six"] = six
            torch._six = six
            APPLIED.append("torch._six")
    for name in ("Mapping", "MutableMapping", "Sequence", "Iterable", "Callable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
            if "collections.Mapping" not in APPLIED:
                APPLIED.append("collections.Mapping")


# --------------------------------------------------------------------------------------------
# Stage 2: behaviour patches
# --------------------------------------------------------------------------------------------
class _KeepContiguousGrads:
    """Mixin: ``zero_grad`` keeps (zeroes) the gradient buffers instead of dropping them.

    FastReID builds its optimizer over :class:`~fastreid.utils.params.ContiguousParams` flat
    buffers whose ``.grad`` is a buffer the model parameters' ``.grad`` are views of. torch>=2.0's
    ``zero_grad()`` defaults to ``set_to_none=True``, which replaces the flat buffers' grads by
    ``None``: backward then accumulates into the (orphaned) views and ``step()`` skips every
    parameter, so nothing is ever trained.
    """

    def zero_grad(self, set_to_none: bool = False):
        super().zero_grad(set_to_none=False)


def _keep_grad_class(opt_cls):
    if issubclass(opt_cls, _KeepContiguousGrads):
        return opt_cls
    return type(opt_cls.__name__, (_KeepContiguousGrads, opt_cls), {"__module__": opt_cls.__module__})


def _patch_optimizer():
    import fastreid.solver.build as sb

    def wrap(original):
        @functools.wraps(original)
        def build_optimizer(cfg, model, contiguous=True):
            optimizer, params = original(cfg, model, contiguous=contiguous)
            if contiguous:
                optimizer.__class__ = _keep_grad_class(type(optimizer))
            return optimizer, params
        return build_optimizer

    patch_attr(sb, "build_optimizer", "build_optimizer", wrap,
               modules=["fastreid.solver", "fastreid.engine.defaults"], tag="optimizer.zero_grad")


def _patch_dataloader():
    """DataLoaderX/BackgroundGenerator use CUDA streams and ``torch.cuda.set_device`` -> CPU path."""
    import fastreid.data.data_utils as du

    if getattr(du.DataLoaderX, _MARK, False):
        return
    Loader, Gen = du.DataLoaderX, du.BackgroundGenerator
    ORIGINALS.update({
        "DataLoaderX.__init__": Loader.__init__, "DataLoaderX.preload": Loader.preload,
        "DataLoaderX.__next__": Loader.__next__, "BackgroundGenerator.run": Gen.run,
    })
    orig_init, orig_preload, orig_next, orig_run = (
        Loader.__init__, Loader.preload, Loader.__next__, Gen.run)

    def __init__(self, local_rank, **kwargs):
        if _cuda():
            return orig_init(self, local_rank, **kwargs)
        kwargs["pin_memory"] = False
        torch.utils.data.DataLoader.__init__(self, **kwargs)
        self.stream = None
        self.local_rank = local_rank

    def preload(self):
        if self.stream is not None:
            return orig_preload(self)
        self.batch = next(self.iter, None)

    def __next__(self):
        if self.stream is not None:
            return orig_next(self)
        batch = self.batch
        if batch is None:
            raise StopIteration
        self.preload()
        return batch

    def run(self):
        if _cuda():
            return orig_run(self)
        for item in self.generator:
            if self.exit_event.is_set():
                break
            self.queue.put(item)
        self.queue.put(None)

    Loader.__init__, Loader.preload, Loader.__next__, Gen.run = __init__, preload, __next__, run
    setattr(Loader, _MARK, True)
    APPLIED.append("DataLoaderX.cpu")


class _LoaderThreadError:
    """What the loader thread puts on its queue instead of dying silently."""

    def __init__(self, error):
        self.error = error


def _patch_loader_thread_errors():
    """``BackgroundGenerator.run`` dies on an exception (e.g. an unreadable image) before putting
    its end-of-data marker, and the consumer then waits on the queue forever (0% CPU). Pass the
    exception through the queue and raise it in the consumer's thread (again on every later call).
    """
    import fastreid.data.data_utils as du

    def wrap_run(original):
        def run(self):
            try:
                original(self)
            except BaseException as e:  # noqa: B902  (whatever it is, the consumer must see it)
                self.queue.put(_LoaderThreadError(e))
        return run

    def wrap_next(original):
        def next(self):
            item = original(self)
            if isinstance(item, _LoaderThreadError):
                self.queue.put(item)
                raise item.error
            return item
        return next

    patch_attr(du.BackgroundGenerator, "run", "BackgroundGenerator.run.errors", wrap_run,
               tag="loader_thread.errors")
    patch_attr(du.BackgroundGenerator, "next", "BackgroundGenerator.next", wrap_next,
               tag="loader_thread.errors")


def _patch_amp():
    """``AMPTrainer.run_step`` asserts CUDA; on CPU fall back to fp32 with one warning."""
    from fastreid.engine import train_loop

    AMP = train_loop.AMPTrainer

    def wrap(original):
        @functools.wraps(original)
        def run_step(self):
            if _cuda():
                return original(self)
            if not getattr(AMP, "_fastreid_plugins_warned", False):
                warnings.warn("SOLVER.AMP.ENABLED is True but CUDA is not available: "
                              "training in fp32 on the CPU instead.", RuntimeWarning, stacklevel=2)
                AMP._fastreid_plugins_warned = True
            return train_loop.SimpleTrainer.run_step(self)
        return run_step

    patch_attr(AMP, "run_step", "AMPTrainer.run_step", wrap, tag="AMPTrainer.cpu")


def _patch_evaluator_compile():
    """``ReidEvaluator`` runs ``make`` in site-packages and ``sys.exit(1)`` on failure: never compile.

    Without the Cython ranker, FastReID's ``evaluate_rank`` falls back to its slow Python loop;
    :func:`fastreid_plugins.evaluation.rank.evaluate_rank` is a vectorised replacement at least as
    fast as the Cython one, and :class:`~fastreid_plugins.evaluation.VehicleReidEvaluator` uses it.
    """
    from fastreid.evaluation import reid_evaluation as re_

    def _compile_dependencies(self):
        try:
            from fastreid.evaluation.rank_cylib.rank_cy import evaluate_cy  # noqa: F401
        except ImportError:
            logger.info("FastReID's Cython ranker is not built; not compiling it at run time "
                        "(fastreid_plugins' vectorised ranker is used by VehicleReidEvaluator).")

    patch_attr(re_.ReidEvaluator, "_compile_dependencies", "ReidEvaluator._compile_dependencies",
               lambda original: _compile_dependencies, tag="ReidEvaluator.no_compile")


def _patch_rerank():
    """``compute_jaccard_distance`` forces ``.cuda()`` and faiss-GPU; use faiss-CPU without CUDA."""
    import fastreid.utils.compute_dist as cd

    def wrap(original):
        @functools.wraps(original)
        def compute_jaccard_distance(features, k1=20, k2=6, search_option=0, fp16=False):
            if not _cuda() or getattr(__import__("faiss"), "get_num_gpus", lambda: 0)() == 0:
                search_option = 3
                features = features.cpu().contiguous()
            return original(features, k1=k1, k2=k2, search_option=search_option, fp16=fp16)
        return compute_jaccard_distance

    patch_attr(cd, "compute_jaccard_distance", "compute_jaccard_distance", wrap, tag="rerank.cpu")


def _patch_test_loader_workers():
    """``build_reid_test_loader(cfg, ...)`` ignores ``DATALOADER.NUM_WORKERS`` (always 4)."""
    import fastreid.data.build as db
    from fastreid.config import configurable

    original_from_config = db._test_loader_from_config

    def _from_config(cfg, **kwargs):
        ret = original_from_config(cfg, **kwargs)
        ret.setdefault("num_workers", cfg.DATALOADER.NUM_WORKERS)
        return ret

    patch_attr(db, "build_reid_test_loader", "build_reid_test_loader",
               lambda original: configurable(from_config=_from_config)(original.__wrapped__),
               modules=["fastreid.data", "fastreid.engine.defaults"], tag="test_loader.num_workers")


#: Types FastReID's own checkpoints hold besides tensors (scheduler state: ``Counter`` milestones).
SAFE_CHECKPOINT_GLOBALS = [collections.Counter, collections.OrderedDict]

TRUST_ENV = "FASTREID_PLUGINS_TRUST_CHECKPOINTS"


def _corrupt(path, detail):
    size = os.path.getsize(path)
    return CorruptCheckpointError(
        f"Checkpoint {path!r} ({size} bytes) is not a complete torch checkpoint ({detail}): it is "
        "truncated or corrupt, e.g. a write that was interrupted or a partial copy. Copy it again, "
        "or use an earlier checkpoint (for --resume: write its file name into last_checkpoint "
        "next to it).")


def load_checkpoint_file(path):
    """Load a checkpoint with ``weights_only=True``, allowing the types FastReID itself writes.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CorruptCheckpointError: the file is empty, truncated or not a torch checkpoint (named).
        CheckpointUnpicklingError: the file needs arbitrary unpickling; the message names the
            refused global and how to allow it (``FASTREID_PLUGINS_TRUST_CHECKPOINTS=1`` for
            files you trust).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path!r}")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise _corrupt(path, "the file is empty")
    is_zip = head == b"PK\x03\x04"  # torch >= 1.6 format; legacy files are a bare pickle
    if is_zip and not zipfile.is_zipfile(path):
        raise _corrupt(path, "its zip directory is missing")
    trust = os.environ.get(TRUST_ENV) == "1"
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(SAFE_CHECKPOINT_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).splitlines()[0] if str(e) else repr(e)
        pickled = is_zip or head[:1] == b"\x80"  # a (legacy) pickle that needs more than tensors
        if trust or not pickled or "Weights only load failed" not in str(e):
            raise _corrupt(path, f"unpickling failed: {first}") from e
        raise CheckpointUnpicklingError(
            f"Checkpoint {path!r} contains pickled Python objects that torch.load(weights_only=True) "
            f"refuses to load ({first}). If you trust this file, "
            f"set {TRUST_ENV}=1 to load it with full unpickling."
        ) from e
    except (EOFError, RuntimeError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else "end of file"
        raise _corrupt(path, f"{type(e).__name__}: {first}") from e


def _patch_checkpointer():
    from fastreid.utils import checkpoint as ck

    def _load_file(self, f):
        return load_checkpoint_file(f)

    patch_attr(ck.Checkpointer, "_load_file", "Checkpointer._load_file",
               lambda original: _load_file, tag="Checkpointer.weights_only")


def _patch_inplace_preprocess():
    """``Baseline``/``MGN.preprocess_image`` normalise the caller's tensor in place.

    ``inference_on_dataset(flip_test=True)`` flips ``inputs["images"]`` after the first forward,
    so the flipped batch was already normalised and gets normalised twice. Normalise out of place.
    """
    from fastreid.modeling.meta_arch import baseline, mgn

    def wrap(original):
        def preprocess_image(self, batched_inputs):
            if isinstance(batched_inputs, dict):
                images = batched_inputs["images"]
            elif isinstance(batched_inputs, torch.Tensor):
                images = batched_inputs
            else:
                raise TypeError("batched_inputs must be dict or torch.Tensor, "
                                f"but got {type(batched_inputs)}")
            images = images.to(self.device)
            return (images - self.pixel_mean) / self.pixel_std
        return preprocess_image

    for cls in (baseline.Baseline, mgn.MGN):
        patch_attr(cls, "preprocess_image", f"{cls.__name__}.preprocess_image", wrap,
                   tag="preprocess_image.out_of_place")


def _patch_pretrained_weights():
    """FastReID's ResNet/ResNeXt builders load ImageNet weights non-strictly (a wrong file trains a
    random backbone with one log line), download with ``gdown`` into their own folder, and its
    ResNeXt-IBN cannot load the file it names (IBN in ``layer4``).

    Register :mod:`fastreid_plugins.modeling.pretrained`'s builders under FastReID's names:
    ``PRETRAIN_PATH`` -> torch.hub cache -> torch.hub download (unless offline), strict loading,
    IBN-Net's layout. OSNet (Google-Drive URLs, loaded by FastReID itself) only honours offline mode.
    """
    from fastreid.modeling.backbones import osnet

    from .modeling import pretrained

    pretrained.install(patch_attr)

    def wrap(original):
        @functools.wraps(original)
        def init_pretrained_weights(model, key=""):
            name = key + "_imagenet.pth"
            cached = os.path.join(pretrained.fastreid_cache_dir(), name)
            if pretrained.is_offline() and not os.path.isfile(cached):
                raise pretrained.WeightsNotAvailableError(
                    f"ImageNet weights for OSNet {key!r}: {name} is not in FastReID's cache folder "
                    f"{os.path.dirname(cached)}/ and downloads are off "
                    f"({', '.join(pretrained.OFFLINE_ENV_VARS)}). Download "
                    f"{osnet.model_urls.get(key, '')} there as {name}, or set "
                    "MODEL.BACKBONE.PRETRAIN_PATH to a local copy.")
            return original(model, key)
        return init_pretrained_weights

    patch_attr(osnet, "init_pretrained_weights", "osnet.init_pretrained_weights", wrap,
               tag="pretrain.offline")


def _patch_metric_printer():
    """``CommonMetricPrinter.write`` divides by zero when it writes twice at one iteration before
    the iteration timer has a ``time`` history (runs of <= 3 iterations: ``PeriodicWriter`` writes
    after the last step and again after the epoch). Forget the previous write then (no ETA)."""
    from fastreid.utils import events

    def wrap(original):
        @functools.wraps(original)
        def write(self):
            last = getattr(self, "_last_write", None)
            if last is not None and last[0] == events.get_event_storage().iter:
                self._last_write = None
            return original(self)
        return write

    patch_attr(events.CommonMetricPrinter, "write", "CommonMetricPrinter.write", wrap,
               tag="CommonMetricPrinter.same_iter")


def apply():
    """Apply every patch (idempotent). Requires ``fastreid`` to be importable."""
    apply_import_shims()
    import fastreid.data  # noqa: F401  (needs the shims)
    import fastreid.engine  # noqa: F401
    import fastreid.evaluation  # noqa: F401
    import fastreid.modeling  # noqa: F401

    _patch_optimizer()
    _patch_dataloader()
    _patch_loader_thread_errors()
    _patch_amp()
    _patch_evaluator_compile()
    _patch_rerank()
    _patch_test_loader_workers()
    _patch_checkpointer()
    _patch_inplace_preprocess()
    _patch_pretrained_weights()
    _patch_metric_printer()

    from . import distributed  # DDP on CPU/gloo, global PK sampler (see fastreid_plugins.distributed)
    distributed.apply()
