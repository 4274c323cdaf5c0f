"""One training / evaluation entry point for every plugin project.

Each ``projects/<Name>/train_net.py`` is a few lines around :func:`launch_main`. It keeps
FastReID's command line (``--config-file``, ``--eval-only``, ``--resume``, ``--num-gpus``,
``--num-machines``, ``--machine-rank``, ``--dist-url``, ``opts``) and FastReID's trainer, hooks,
samplers and checkpoints, with three differences:

* evaluation uses :class:`~fastreid_plugins.evaluation.VehicleReidEvaluator` (mINP, JSON output,
  the seeded VehicleID multi-trial protocol, no run-time Cython compilation);
* ``SOLVER.OPT: AMSGrad`` builds Adam with ``amsgrad=True``;
* ``--eval-only`` refuses a missing checkpoint or one whose keys do not match the model, listing
  the mismatched keys (FastReID only logs them and evaluates a half-random model);
* reliability (docs/reliability.md): the shared ``SEED`` key and a seeded, resumable training
  stream (:mod:`fastreid_plugins.seeding`), checkpoints written atomically, never non-finite, and
  carrying generator states and the sampler position (:mod:`fastreid_plugins.checkpoint`),
  identity-sampler batch checks, and ``--resume`` of a finished run says so.
"""

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

import argparse
import json
import logging
import os
import re
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from fastreid.config import CfgNode
from fastreid.data import build_reid_test_loader
from fastreid.data.common import CommDataset
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.vehicleid import VehicleID
from fastreid.data.transforms import build_transforms
from fastreid.engine import DefaultTrainer, default_setup, launch
from fastreid.engine import default_argument_parser as _fastreid_argument_parser
from fastreid.utils import comm
from fastreid.utils.events import (
    CommonMetricPrinter,
    EventWriter,
    JSONWriter,
    TensorboardXWriter,
    get_event_storage,
)
from fastreid.utils.logger import setup_logger
from torch import nn
from torch.utils.data import DataLoader

from . import distributed, errors
from .checkpoint import (
    ResumableTrainerMixin,
    TrainingFinishedError,
    TrainingInterrupted,
    check_finite_state,
    load_checkpoint_file,
)
from .cli import (
    EXIT_INTERRUPTED,
    USER_ERRORS,
    debug_requested,
    error_message,
    log_traceback_to_files,
    run_cli,
)
from .config import get_cfg, merge_config_file, merge_overrides, require_plugins_config
from .data import train_loader
from .data.root import datasets_root
from .data.validation import check_dataset_items
from .errors import CorruptCheckpointError, WeightsMismatchError
from .evaluation import VehicleReidEvaluator
from .method import METHODS, method_for_meta_arch
from .modeling.base import state_dict_mismatch
from .patches import active as active_patches
from .patches import apply as apply_patches
from .seeding import resolve_seed, seed_all
from .version import __version__

__all__ = ["PluginTrainer", "setup", "main", "launch_main", "load_model_weights",
           "read_model_weights", "checkpoint_method", "check_config_file",
           "default_argument_parser", "is_vehicleid", "prepare_for_host",
           "TrainingFinishedError", "fastreid_versions"]

logger = logging.getLogger(__name__)

# FastReID's ToTensor (fastreid/data/transforms/functional.py) builds image tensors with
# torch.ByteStorage.from_buffer, which warns "TypedStorage is deprecated" once per process; the
# tensor is correct and the call is FastReID's, so the warning is not shown (docs/reliability.md)
warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)


def load_model_weights(model: nn.Module, path: str, checkpoint: Any = None) -> None:
    """Load ``path`` (a FastReID checkpoint or a bare state dict) into ``model``, strictly.

    Parameters the model built with a zero size (classifiers of a config with
    ``MODEL.HEADS.NUM_CLASSES: 0``, FastReID's "take it from the training set") take the
    checkpoint's size; every other name or shape difference is an error.

    Args:
        model (nn.Module): the model to fill.
        path (str): checkpoint file (``MODEL.WEIGHTS``).
        checkpoint: ``path``'s content when already read (:func:`read_model_weights`), else
            ``None`` (read here).

    Raises:
        FileNotFoundError: ``path`` is empty or does not exist.
        WeightsMismatchError: missing, unexpected or wrongly shaped keys (all listed), and the
            method the checkpoint was trained for when its config says (:func:`checkpoint_method`).
        CheckpointUnpicklingError: the file needs arbitrary unpickling.
        CorruptCheckpointError: the file is empty, truncated or not a torch checkpoint (text, a
            zip without ``data.pkl``, a Python pickle), or holds no state dict.
        checkpoint.NonFiniteCheckpointError: the weights hold inf/NaN.
    """
    ckpt = read_model_weights(path) if checkpoint is None else checkpoint
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict):
        raise CorruptCheckpointError(
            f"{path!r} is a torch file but holds no model state dict (it holds a "
            f"{type(state).__name__}); MODEL.WEIGHTS must be a checkpoint such as a run's "
            "model_final.pth.")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    check_finite_state(state, f"Checkpoint {path!r}")
    own = model.state_dict()
    _adopt_auto_sized(model, state, own)
    own = model.state_dict()
    report = state_dict_mismatch(own, state)
    if report:
        raise WeightsMismatchError(
            f"Checkpoint {path!r} does not match the model built from this config "
            f"({type(model).__name__}); refusing to evaluate a partly random model." + report
            + "\n" + _trained_for(path, ckpt, type(model).__name__))
    model.load_state_dict(state, strict=True)
    logger.info(f"Loaded model weights from {path}")


def read_model_weights(path: str) -> Any:
    """Read ``MODEL.WEIGHTS`` before the model is built, so a missing or corrupt file is the first
    thing a command reports.

    Raises:
        FileNotFoundError: ``path`` is empty or does not exist.
        CorruptCheckpointError / CheckpointUnpicklingError: see :func:`load_checkpoint_file`.
    """
    if not path:
        raise FileNotFoundError("--eval-only needs MODEL.WEIGHTS: pass `MODEL.WEIGHTS "
                                "/path/to/model_final.pth` after the other arguments.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.WEIGHTS file not found: {path!r}")
    return load_checkpoint_file(path)


def checkpoint_method(path: str, checkpoint: Any = None) -> Optional[str]:
    """The ``MODEL.META_ARCHITECTURE`` a checkpoint was trained with, or ``None``: read from the
    config it carries (a weights-only file's ``config`` text) or the run's ``config.yaml`` beside
    it."""
    texts = []
    if checkpoint is None and os.path.isfile(path):
        try:
            checkpoint = load_checkpoint_file(path)
        except (errors.UserError, OSError):
            checkpoint = None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("config"), str):
        texts.append(checkpoint["config"])
    beside = os.path.join(os.path.dirname(os.path.abspath(path)), "config.yaml")
    if os.path.isfile(beside):
        with open(beside, errors="replace") as f:
            texts.append(f.read())
    for text in texts:
        m = re.search(r"^\s+META_ARCHITECTURE:\s*['\"]?(\w+)", text, re.M)
        if m:
            return m.group(1)
    return None


def _trained_for(path, ckpt, built):
    """The next step of a weights mismatch: which method the checkpoint is from, and its script."""
    arch = checkpoint_method(path, ckpt)
    if arch is None or arch == built:
        return ("Check that --config-file (and its MODEL.* overrides) is the one used for "
                "training (the checkpoint's config.yaml, next to it, when it has one).")
    method = method_for_meta_arch(arch)
    what = (f"{method.name} ({arch}; train/evaluate with {method.train_script}, e.g. "
            f"--config-file {method.demo_config})" if method else f"MODEL.META_ARCHITECTURE {arch}")
    return (f"The checkpoint was trained for {what}, this config builds {built}: pass that "
            "method's --config-file (its config.yaml is next to the checkpoint).")


def _adopt_auto_sized(model, state, own):
    """Give zero-sized parameters (classifiers built with ``MODEL.HEADS.NUM_CLASSES: 0``, i.e.
    "auto" from the training set) the checkpoint's size, so evaluating with the training config
    works; the classifier is unused at inference."""
    params = dict(model.named_parameters())
    sized = []
    for k, v in own.items():
        if (0 in tuple(v.shape) and k in state and k in params and hasattr(state[k], "shape")
                and state[k].dim() == v.dim()):
            params[k].data = torch.empty_like(state[k], dtype=v.dtype, device=v.device)
            sized.append(f"{k} {tuple(v.shape)} -> {tuple(state[k].shape)}")
    if sized:  # one line: the classifiers of a MODEL.HEADS.NUM_CLASSES 0 ("auto") config
        logger.info(f"{len(sized)} classifier parameter(s) built with size 0 "
                    "(MODEL.HEADS.NUM_CLASSES 0: from the training set) take the checkpoint's "
                    f"size: {sized[0]}"
                    + (f", ... ({len(sized)} in all)" if len(sized) > 1 else ""))


class EvalAwareTensorboardWriter(TensorboardXWriter):
    """FastReID's tensorboard writer that does not lose the evaluation results.

    FastReID's ``TensorboardXWriter`` keeps one global "last written iteration". ``PeriodicWriter``
    writes at the last iteration of an epoch (``after_step``) *before* ``EvalHook.after_epoch``
    stores Rank-1/mAP/mINP at that same iteration, so they never reach tensorboard; an evaluation
    run from ``EvalHook.after_train`` neither. Here every scalar is written when *its own*
    iteration is new, and the writer writes once more when it is closed.
    """

    def write(self):
        storage = get_event_storage()
        last = self.__dict__.setdefault("_last_per_key", {})
        for k, (v, it) in storage.latest_with_smoothing_hint(self._window_size).items():
            if it > last.get(k, -1):
                self._writer.add_scalar(k, v, it)
                last[k] = it
        self._last_write = float("inf")  # FastReID's scalar loop then writes nothing more
        super().write()  # images and histograms, as FastReID

    def close(self):
        try:
            self.write()  # what EvalHook.after_train stored just before
        except AssertionError:  # closed outside an EventStorage context: nothing to flush
            pass
        super().close()


def is_vehicleid(dataset_name: str) -> bool:
    """True if ``dataset_name`` is FastReID's VehicleID family (Small/Medium/Large VehicleID)."""
    cls = DATASET_REGISTRY.get(dataset_name)
    return isinstance(cls, type) and issubclass(cls, VehicleID)


class PluginTrainer(ResumableTrainerMixin, DefaultTrainer):
    """FastReID's :class:`DefaultTrainer` with the plugins' evaluator, loaders and optimizer.

    ``dataset_cls``: the dataset class of the train and (non-VehicleID) test loaders. ``None``
    uses FastReID's :class:`~fastreid.data.common.CommDataset`. A subclass whose batches need
    more than ``images/targets/camids/img_paths`` sets it to a class built like
    ``CommDataset(img_items, transform, relabel)`` (e.g. CLIP-SENet's ``SideInfoDataset``);
    samplers, transforms, batch sizes and workers stay FastReID's. VehicleID test sets always use
    ``CommDataset`` (the evaluator draws the query/gallery splits). Both loaders read the datasets
    under :func:`~fastreid_plugins.data.datasets_root`.
    """

    dataset_cls = None

    def __init__(self, cfg: CfgNode) -> None:
        require_plugins_config(cfg, type(self).__name__)
        if cfg.OUTPUT_DIR and comm.is_main_process():
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        super().__init__(cfg)

    def build_writers(self) -> List[EventWriter]:
        """FastReID's writers, with :class:`EvalAwareTensorboardWriter` for tensorboard."""
        return [CommonMetricPrinter(self.max_iter),
                JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
                EvalAwareTensorboardWriter(self.cfg.OUTPUT_DIR)]

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> DataLoader:
        """The seeded, resumable training loader over ``cls.dataset_cls``, built and checked once
        by :func:`fastreid_plugins.data.train_loader.build_train_loader` (FastReID's sampler by
        ``DATALOADER.SAMPLER_TRAIN``, or the global PK sampler under DDP)."""
        return train_loader.build_train_loader(cfg, cls.dataset_cls)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode,
                        model: nn.Module) -> Tuple[torch.optim.Optimizer, Any]:
        """FastReID's optimizer; ``SOLVER.OPT "AMSGrad"`` = Adam with ``amsgrad=True``."""
        from fastreid.solver import build_optimizer

        amsgrad = cfg.SOLVER.OPT == "AMSGrad"
        if amsgrad:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.SOLVER.OPT = "Adam"
        elif not hasattr(torch.optim, cfg.SOLVER.OPT):
            raise ValueError(f"SOLVER.OPT={cfg.SOLVER.OPT!r} is not a torch.optim optimizer "
                             "(nor 'AMSGrad').")
        optimizer, params = build_optimizer(cfg, model)
        if amsgrad:
            for group in optimizer.param_groups:
                group["amsgrad"] = True
            optimizer.defaults["amsgrad"] = True
        return optimizer, params

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> Tuple[DataLoader, int]:
        """FastReID's ``build_reid_test_loader`` over the items of ``dataset_name`` (read under
        :func:`~fastreid_plugins.data.datasets_root`, checked once) and ``cls.dataset_cls``.

        Returns:
            (loader, num_query): the first ``num_query`` samples are the queries (0 for the
            VehicleID family, whose evaluator draws the query/gallery splits).
        """
        vehicleid = is_vehicleid(dataset_name)
        data = DATASET_REGISTRY.get(dataset_name)(root=datasets_root())
        if comm.is_main_process():
            data.show_test()
        if vehicleid:
            # every test image once, in a fixed order; the evaluator draws the query/gallery
            # splits itself (seeded, TEST.VEHICLEID.NUM_TRIALS times)
            items = sorted(data.query + data.gallery, key=lambda x: x[0])
            dataset_cls, num_query = CommDataset, 0
        else:
            items = data.query + data.gallery
            dataset_cls, num_query = cls.dataset_cls or CommDataset, len(data.query)
        check_dataset_items(items, "test", [dataset_name])
        test_set = dataset_cls(items, build_transforms(cfg, is_train=False), relabel=False)
        loader, _ = build_reid_test_loader(test_set=test_set, num_query=num_query,
                                           test_batch_size=cfg.TEST.IMS_PER_BATCH,
                                           num_workers=cfg.DATALOADER.NUM_WORKERS)
        return loader, num_query

    @classmethod
    def test(cls, cfg: CfgNode, model: nn.Module) -> Dict[str, Any]:
        """FastReID's ``test``, after giving every rank rank 0's buffers (BN running statistics):
        under DDP the metrics are then those of the checkpoint rank 0 saves. With several
        ``DATASETS.TESTS``, one table of all of them is logged and written to
        ``OUTPUT_DIR/results_table.csv`` (:mod:`fastreid_plugins.evaluation.summary`)."""
        distributed.broadcast_buffers(model)
        results = super().test(cfg, model)
        if comm.is_main_process() and len(cfg.DATASETS.TESTS) > 1 and results:
            from .evaluation.summary import results_table, write_results_table

            logger.info(f"Results on {len(results)} test sets:\n{results_table(results)}")
            if cfg.OUTPUT_DIR:
                write_results_table(results, os.path.join(cfg.OUTPUT_DIR, "results_table.csv"))
        return results

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_dir: Optional[str] = None
                        ) -> Tuple[DataLoader, VehicleReidEvaluator]:
        data_loader, num_query = cls.build_test_loader(cfg, dataset_name)
        protocol = "vehicleid" if is_vehicleid(dataset_name) else "standard"
        evaluator = VehicleReidEvaluator(cfg, num_query, output_dir or cfg.OUTPUT_DIR,
                                         dataset_name=dataset_name, protocol=protocol)
        return data_loader, evaluator


def default_argument_parser() -> argparse.ArgumentParser:
    """FastReID's command line (``--config-file``, ``--eval-only``, ``--resume``, ``--num-gpus``,
    ``opts``) plus ``--debug``: tracebacks of user errors and the full log on the console."""
    parser = _fastreid_argument_parser()
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of a user error and the full log (environment, "
                             "config, model) on the console; without it they go to "
                             "OUTPUT_DIR/log.txt only")
    return parser


#: FastReID's start-of-run records that go to OUTPUT_DIR/log.txt only (the console gets a header)
_LOG_FILE_ONLY = ("Rank of current process", "Environment info:", "Command line arguments:",
                  "Contents of args.config_file=", "Running with full config:",
                  "Full config saved to", "Model:\n", "Using a generated random seed",
                  "Active patches:",
                  # FastReID's train loop logs the exception it re-raises: the CLI prints it once
                  "Exception during training")


class _LogFileOnly(logging.Filter):
    """Console filter: drops the records of :data:`_LOG_FILE_ONLY` (they stay in log.txt)."""

    def filter(self, record):
        return not (isinstance(record.msg, str) and record.msg.startswith(_LOG_FILE_ONLY))


def _quiet_console(*loggers):
    """Add :class:`_LogFileOnly` to the console (non-file) handlers of ``loggers``, once."""
    for lg in loggers:
        for h in lg.handlers:
            path = getattr(getattr(h, "stream", None), "name", None)
            is_file = isinstance(path, str) and os.path.isfile(path)
            if not is_file and not any(isinstance(f, _LogFileOnly) for f in h.filters):
                h.addFilter(_LogFileOnly())


def fastreid_versions() -> Tuple[Optional[str], str]:
    """``(installed distribution version, fastreid.__version__)``; FastReID 1.4.0's package
    reports itself as "1.3". The first is ``None`` for a git checkout on ``PYTHONPATH``."""
    import importlib.metadata

    import fastreid
    try:
        dist = importlib.metadata.version("fastreid")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    return dist, getattr(fastreid, "__version__", "unknown")


def _log_header(cfg, args):
    """The console's start-of-run summary (the full environment, config and model are in
    ``OUTPUT_DIR/log.txt``)."""
    dist, own = fastreid_versions()
    fr = (f"FastReID {dist} (the package reports itself as {own})" if dist and dist != own
          else f"FastReID {dist or own}" + ("" if dist else " (from PYTHONPATH)"))
    logger.info(f"fastreid-plugins {__version__}, {fr}, torch {torch.__version__}")
    logger.info(f"Method: {cfg.MODEL.META_ARCHITECTURE}, config: {args.config_file or '(none)'}"
                + (", --eval-only MODEL.WEIGHTS " + cfg.MODEL.WEIGHTS
                   if getattr(args, "eval_only", False) else ""))
    logger.info(f"Datasets: train {', '.join(cfg.DATASETS.NAMES)}, test "
                f"{', '.join(cfg.DATASETS.TESTS)}, under {os.path.abspath(datasets_root())} "
                "(FASTREID_DATASETS)")
    world = comm.get_world_size()
    if world > 1:
        import torch.distributed as dist_
        group = f"{world} processes, process group {dist_.get_backend()}"
    else:
        group = "1 process, no process group"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    logger.info(f"Device: {cfg.MODEL.DEVICE}" + ("" if gpus else " (no CUDA GPU)") + f", {group}")
    requested = int(getattr(args, "num_gpus", 1) or 1)
    if requested > 1 and requested > gpus:
        logger.warning(f"--num-gpus {requested} but {gpus} CUDA GPU(s) available: running "
                       f"{requested} processes on the CPU with gloo instead of NCCL")
    patches = active_patches()
    logger.info(f"FastReID patched by this package: {len(patches)} patches active "
                "(`python -m fastreid_plugins.patches` says what each does)")
    logger.info("Active patches: " + ", ".join(patches))  # log.txt only (_LOG_FILE_ONLY)
    logger.info(f"Output: {os.path.abspath(cfg.OUTPUT_DIR)} (full config, model and environment "
                f"in {os.path.join(cfg.OUTPUT_DIR, 'log.txt')})")


def setup(args: argparse.Namespace, *add_fns: Callable[[CfgNode], Any]) -> CfgNode:
    """Build the frozen config from ``args`` and run FastReID's ``default_setup``.

    The console shows a short header (versions, method, config file, datasets, device and process
    group, output folder) and the progress; FastReID's environment report, the full config and
    the model go to ``OUTPUT_DIR/log.txt`` only (all of it on the console with ``--debug`` or
    ``FASTREID_PLUGINS_VERBOSE=1``).

    Raises:
        ConfigFileNotFoundError: ``--config-file`` does not exist (a ``FileNotFoundError``).
        ConfigError: unknown key (closest keys suggested) or mistyped value.
    """
    cfg = get_cfg(*add_fns)
    if args.config_file:
        check_config_file(args.config_file)
        try:
            merge_config_file(cfg, args.config_file)
        except errors.ConfigError as e:
            raise _with_project_hint(e, args.config_file) from None
    merge_overrides(cfg, args.opts or [])
    prepare_for_host(cfg, eval_only=getattr(args, "eval_only", False))
    cfg.SEED = resolve_seed(cfg)  # a drawn seed is logged and saved in config.yaml
    # under DDP every rank must draw the same global batches: rank 0's drawn seed for all
    cfg.SEED = distributed.same_on_all_ranks(cfg.SEED)
    cfg.freeze()
    # the loggers default_setup opens (setup_logger is cached: the same handlers), so the console
    # filter is in place before FastReID logs the environment, the config and the model
    rank = comm.get_rank()
    loggers = [setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank),
               # FastReID's setup logs only the "fastreid" tree; ours (e.g. "loaded N/N tensors")
               setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="fastreid_plugins")]
    verbose = (getattr(args, "debug", False) or debug_requested([])[0]
               or os.environ.get("FASTREID_PLUGINS_VERBOSE", "") not in ("", "0"))
    if not verbose:
        _quiet_console(*loggers)
    # default_setup's environment report (log.txt) imports torch.utils.cpp_extension, which warns
    # "No CUDA runtime is found, using CUDA_HOME=..." on a CPU host whenever a CUDA toolkit
    # folder exists: nothing is compiled here, so the warning says nothing about the run
    cpp_ext = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_ext.level
    cpp_ext.setLevel(logging.ERROR)
    try:
        default_setup(cfg, args)
    finally:
        cpp_ext.setLevel(level)
    _log_header(cfg, args)
    seed_all(cfg.SEED + comm.get_rank())  # default_setup seeded with a random number
    logger.info(f"Seed of this run: SEED {cfg.SEED}")
    return cfg


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_config_file(path: str) -> None:
    """Refuse a missing ``--config-file`` with the next step: when the path exists relative to
    the repository root (a command run from another folder), that path.

    Raises:
        ConfigFileNotFoundError: ``path`` is not a file (from the current folder).
    """
    if not path or os.path.isfile(path):
        return
    msg = f"--config-file not found: {path!r} (from the current folder {os.getcwd()})."
    alt = os.path.join(_REPO, path)
    if not os.path.isabs(path) and os.path.isfile(alt):
        msg += f" It exists relative to the repository: pass --config-file {alt}"
    else:
        msg += (" Pass an existing .yml file, e.g. --config-file "
                f"{os.path.relpath(os.path.join(_REPO, 'configs', 'demo', 'mfgnet.yml'))}")
    raise errors.ConfigFileNotFoundError(msg + ".")


def _with_project_hint(exc, config_file):
    """``exc`` (an unknown-key error) with the next step when the key is another method's node
    (``MODEL.SVRN`` given to MFG-Net's train_net.py): that method's script."""
    msg = error_message(exc)
    m = re.search(r"unknown config key '?MODEL\.([A-Za-z0-9_]+)", msg)
    node = m.group(1).upper() if m else None
    method = next((r for r in METHODS.values()
                   if node in (r.key.upper(), r.meta_arch.upper())), None)
    if method is None:
        return exc
    return type(exc)(f"{msg}\n{config_file} is a {method.name} config (MODEL.{node}): run it with "
                     f"{method.train_script}.")


def prepare_for_host(cfg: CfgNode, eval_only: bool = False) -> CfgNode:
    """Adapt an unfrozen config to this host, in place: ``MODEL.DEVICE`` falls back to ``cpu``
    without CUDA; for evaluation (``eval_only``, also the tools) every pretrained-weight load is
    turned off, since ``MODEL.WEIGHTS`` holds the whole model."""
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    if eval_only:
        _no_pretrain(cfg.MODEL)
    return cfg


def _no_pretrain(node):
    """--eval-only loads everything from MODEL.WEIGHTS: turn off every ``PRETRAIN`` key under
    ``MODEL`` (the backbone's and any method's, e.g. CLIP-SENet's TinyCLIP encoder)."""
    for k, v in node.items():
        if k == "PRETRAIN" and isinstance(v, bool):
            node[k] = False
        elif isinstance(v, dict):
            _no_pretrain(v)


def main(args: argparse.Namespace, *add_fns: Callable[[CfgNode], Any],
         trainer_cls: Type[DefaultTrainer] = PluginTrainer) -> Optional[Dict[str, Any]]:
    """Train (or, with ``--eval-only``, evaluate ``MODEL.WEIGHTS``) and return the metrics.

    Applies the patches first (:func:`fastreid_plugins.patches.apply`; idempotent), also in each
    ``--num-gpus N`` worker process."""
    apply_patches()
    cfg = setup(args, *add_fns)
    if args.eval_only:
        ckpt = read_model_weights(cfg.MODEL.WEIGHTS)  # a bad file is reported before the model
        model = trainer_cls.build_model(cfg)
        load_model_weights(model, cfg.MODEL.WEIGHTS, ckpt)
        return trainer_cls.test(cfg, model)
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def launch_main(*methods: Union[str, Callable[[CfgNode], Any]],
                trainer_cls: Optional[Type[DefaultTrainer]] = None,
                argv: Optional[Sequence[str]] = None) -> None:
    """Parse FastReID's command line and run :func:`main` through FastReID's ``launch``.

    ``launch_main("svrn")`` (a ``projects/<Name>/train_net.py``) runs the method's record
    (:data:`fastreid_plugins.method.METHODS`): its ``add_config`` and its trainer.

    A user error (:class:`~fastreid_plugins.errors.UserError`, ``FileNotFoundError``) ends in one
    short ``Error: ...`` block on stderr and exit status 2 (:func:`fastreid_plugins.cli.run_cli`;
    the traceback is in ``OUTPUT_DIR/log.txt``, and on the console with ``--debug``), also when
    it happens in a ``--num-gpus N`` worker process: the worker hands it to this process.

    Args:
        methods: method keys (``"svrn"``; each adds its record's ``add_config``) and / or
            ``add_<x>_config(cfg)`` functions, applied in this order.
        trainer_cls: the trainer; default: the record's trainer when ``methods`` holds one key,
            else :class:`PluginTrainer`.
        argv: the command line without the program (default ``sys.argv[1:]``).

    Raises:
        KeyError: an unknown method key (the known ones are listed).
        ValueError: several method keys whose trainers differ, and no ``trainer_cls``.
    """
    apply_patches()
    add_fns, trainer_cls = _resolve_methods(methods, trainer_cls)
    return run_cli(lambda a: _launch(a, trainer_cls, add_fns), argv)


def _resolve_methods(methods, trainer_cls=None):
    """``(add_fns, trainer_cls)`` of :func:`launch_main`'s arguments (method keys resolved through
    their records; importing a method's package registers it in FastReID)."""
    add_fns, trainers = [], []
    for m in methods:
        if isinstance(m, str):
            if m not in METHODS:
                raise KeyError(f"launch_main: unknown method {m!r}; known: {list(METHODS)}")
            add_fns.append(METHODS[m].add_config)
            trainers.append(METHODS[m].trainer)
        else:
            add_fns.append(m)
    if trainer_cls is None:
        if len(set(trainers)) > 1:
            raise ValueError(f"launch_main{tuple(methods)}: the methods' trainers differ "
                             f"({[t.__name__ for t in trainers]}); pass trainer_cls")
        trainer_cls = trainers[0] if trainers else PluginTrainer
    return tuple(add_fns), trainer_cls


_ERROR_DIR = "FASTREID_PLUGINS_WORKER_ERRORS"


def _launch(argv, trainer_cls, add_fns):
    args = default_argument_parser().parse_args(argv)
    run = dict(num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args, trainer_cls, *add_fns))
    if args.num_gpus * args.num_machines <= 1:
        return launch(_main_positional, args.num_gpus, **run)
    with tempfile.TemporaryDirectory(prefix="fastreid_plugins_errors_") as folder:
        os.environ[_ERROR_DIR] = folder  # inherited by the spawned workers
        try:
            return launch(_main_positional, args.num_gpus, **run)
        except KeyboardInterrupt:  # Ctrl-C reached every process: the workers save, then report
            raise _worker_interrupt(folder) from None
        except Exception:
            err = _worker_error(folder, args.num_gpus * args.num_machines)
            if err is None and any(f.startswith("interrupted") for f in os.listdir(folder)):
                err = _worker_interrupt(folder)  # the workers alone were interrupted
            if err is None:
                raise
            raise err from None
        finally:
            os.environ.pop(_ERROR_DIR, None)


def _worker_interrupt(folder, timeout=600.0):
    """After Ctrl-C: wait (up to ``timeout`` s) for this machine's workers to write their
    checkpoint and exit, then rebuild the :class:`TrainingInterrupted` of the lowest rank that
    reported one (rank 0 writes the checkpoint), so the launcher prints where training stopped and
    the ``--resume`` command as a single-process run does; a bare ``KeyboardInterrupt`` when no
    worker reported (interrupted before training started)."""
    import multiprocessing
    deadline = time.monotonic() + timeout
    for child in multiprocessing.active_children():
        child.join(max(0.0, deadline - time.monotonic()))
    files = sorted((f for f in os.listdir(folder) if f.startswith("interrupted")),
                   key=lambda f: int(f[len("interrupted"):-len(".json")]))
    if not files:
        return KeyboardInterrupt()
    with open(os.path.join(folder, files[0])) as f:
        info = json.load(f)
    return TrainingInterrupted(info["message"], info["checkpoint"])


def _worker_error(folder, world):
    """The user error a worker wrote to ``folder`` (lowest rank first), rebuilt, or ``None``."""
    files = sorted((f for f in os.listdir(folder) if f.endswith(".json")),
                   key=lambda f: int(f[len("rank"):-len(".json")]))
    if not files:
        return None
    with open(os.path.join(folder, files[0])) as f:
        info = json.load(f)
    cls = getattr(errors, info["type"], None)
    if not (isinstance(cls, type) and issubclass(cls, errors.UserError)):
        cls = FileNotFoundError if info["type"] == "FileNotFoundError" else errors.UserError
    return cls(f"{info['message']}\n(in process {info['rank']} of {world})")


def _main_positional(args, trainer_cls, *add_fns):
    folder = os.environ.get(_ERROR_DIR)
    if not folder or getattr(args, "debug", False) or debug_requested([])[0]:
        return main(args, *add_fns, trainer_cls=trainer_cls)
    try:
        return main(args, *add_fns, trainer_cls=trainer_cls)
    except TrainingInterrupted as e:  # the checkpoint is written: tell the main process
        rank = comm.get_rank()
        _write_atomic_json(folder, f"interrupted{rank}.json",
                           {"message": e.message, "checkpoint": e.checkpoint, "rank": rank})
        raise SystemExit(EXIT_INTERRUPTED) from None
    except USER_ERRORS as e:  # a launch worker: hand the error to the main process, exit 2
        log_traceback_to_files(e)
        rank = comm.get_rank()
        _write_atomic_json(folder, f"rank{rank}.json",
                           {"type": type(e).__name__, "message": error_message(e), "rank": rank})
        raise SystemExit(2) from None


def _write_atomic_json(folder, name, obj):
    tmp = os.path.join(folder, f".{name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, os.path.join(folder, name))
