"""Command-line tools: ``python -m fastreid_plugins.tools.<name>``.

* ``demo``: train and evaluate the demo MFG-Net config (``make demo``).
* ``visualize``: rank-list pictures (top-k gallery per query, green = same ID, red = different)
  and the CMC curve of a trained model.
* ``export_onnx``: export any meta-architecture's eval forward to ONNX and check it with
  onnxruntime.
* ``export``: an inference engine (ONNX / OpenVINO, fp32 / fp16 / bf16 / int8; TensorRT on a GPU
  host) behind an accuracy gate against the PyTorch model (``docs/deploy.md``).
* ``strip_checkpoint``: a weights-only copy of a checkpoint (no optimizer / scheduler state).
* ``heldout_cams``: the held-out-camera check on the real VeRi-776 sample (MFG-Net / MBFN).
* ``extract``: features of your own images (a folder or a list file) with a trained model, in
  resumable shards (:class:`fastreid_plugins.tools.extract.FeatureExtractor` in Python).
* ``search``: search a gallery of extracted features (exact, or a faiss index built by
  :func:`fastreid_plugins.evaluation.knn.build_index`; k-reciprocal re-ranking), CSV / JSON and
  rank-list pictures.

Each tool runs through :func:`fastreid_plugins.cli.run_cli`: a user error (bad path, unknown
config key, ...) prints one ``Error: ...`` block and exits 2; ``--debug`` shows the traceback.
The tools build their models on :func:`build_tool_cfg` / :func:`load_tool_model` (below).

Importing this package or a tool's module imports neither torch nor FastReID (``--help`` answers
at once); the helpers below import lazily, and :func:`build_tool_cfg` activates the package
(:func:`fastreid_plugins.activate`) when a tool runs.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Type, Union

if TYPE_CHECKING:
    from fastreid.config import CfgNode
    from fastreid.engine import DefaultTrainer
    from torch import nn

__all__ = ["plugin_config_fns", "build_tool_cfg", "trainer_class_for", "load_tool_model"]


def plugin_config_fns() -> List[Callable[[CfgNode], Any]]:
    """Every method's ``add_config`` (the records of :data:`fastreid_plugins.method.METHODS`, in
    their order; importing each method's package registers it in FastReID).

    Returns:
        list[callable]: each takes a config and adds its keys in place.
    """
    from fastreid_plugins.method import METHODS

    return [m.add_config for m in METHODS.values()]


def build_tool_cfg(config_file: Union[str, os.PathLike],
                   opts: Sequence[str] = ()) -> CfgNode:
    """Frozen config for a tool: FastReID defaults + every plugin's keys + file + ``opts``.

    ``MODEL.DEVICE`` falls back to ``cpu`` when CUDA is not available and no pretrained weights
    are loaded (every ``MODEL.*.PRETRAIN`` off, as for ``--eval-only``: the tools load
    ``MODEL.WEIGHTS``); see :func:`fastreid_plugins.engine.prepare_for_host`.

    Args:
        config_file (str): a ``.yml`` config (``_BASE_`` supported).
        opts (list[str]): ``KEY VALUE`` overrides.

    Raises:
        fastreid_plugins.errors.ConfigFileNotFoundError: ``config_file`` does not exist (a
            ``FileNotFoundError``).
        fastreid_plugins.errors.ConfigError: unknown key (closest keys named) or mistyped value.
    """
    from fastreid_plugins.activation import activate
    from fastreid_plugins.config import get_cfg, merge_config_file, merge_overrides
    from fastreid_plugins.engine import check_config_file, prepare_for_host

    check_config_file(os.fspath(config_file))
    activate()  # a tool uses FastReID as train_net.py does: patched, every method registered
    cfg = get_cfg(*plugin_config_fns())
    merge_config_file(cfg, config_file)
    merge_overrides(cfg, opts)
    prepare_for_host(cfg, eval_only=True)
    cfg.freeze()
    return cfg


def trainer_class_for(cfg: CfgNode) -> Type[DefaultTrainer]:
    """The trainer that builds the loaders ``cfg``'s meta-architecture expects: the trainer of the
    method whose record has this ``meta_arch`` (e.g. CLIP-SENet's, whose batches carry viewpoint
    indices; :func:`fastreid_plugins.method.method_for_meta_arch`), else
    :class:`~fastreid_plugins.engine.PluginTrainer` (FastReID's own meta-architectures).

    Raises:
        ConfigError: ``MODEL.META_ARCHITECTURE`` is neither a method's nor registered in FastReID.
    """
    from fastreid.modeling.meta_arch import META_ARCH_REGISTRY

    from fastreid_plugins import upstream
    from fastreid_plugins.engine import PluginTrainer
    from fastreid_plugins.errors import ConfigError
    from fastreid_plugins.method import METHODS, method_for_meta_arch

    name = cfg.MODEL.META_ARCHITECTURE
    method = method_for_meta_arch(name)
    if method is not None:
        return method.trainer   # importing its package registers the meta-architecture
    known = sorted(set(upstream.registry_names(META_ARCH_REGISTRY))
                   | {m.meta_arch for m in METHODS.values()})
    if name not in known:
        raise ConfigError(f"MODEL.META_ARCHITECTURE={name!r} is not registered; known: {known}")
    return PluginTrainer


def load_tool_model(cfg: CfgNode, purpose: str,
                    log_file: Optional[Union[str, os.PathLike]] = None) -> nn.Module:
    """The eval-mode model of ``cfg`` with ``MODEL.WEIGHTS`` loaded (strictly), for a tool.

    ``MODEL.WEIGHTS`` is read first (a missing or corrupt file is the first thing reported), then
    the model is built by :func:`trainer_class_for`'s ``build_model``. FastReID's model print
    (100+ lines) stays off the console, as for train_net.py: it goes with the full config to
    ``log_file`` (appended) when given; the console gets one line. With ``--debug`` or
    ``FASTREID_PLUGINS_VERBOSE=1`` the console gets it too.

    Args:
        cfg (CfgNode): a config from :func:`build_tool_cfg`.
        purpose (str): what the tool does with it, for the error message (e.g. "export").
        log_file (str | None): where to write the full config and model.

    Raises:
        FileNotFoundError: ``MODEL.WEIGHTS`` is empty or the file does not exist.
        fastreid_plugins.errors.CorruptCheckpointError: ``MODEL.WEIGHTS`` is not a checkpoint.
        fastreid_plugins.engine.WeightsMismatchError: the checkpoint does not fit the model.
    """
    import logging

    from fastreid_plugins.cli import debug_requested
    from fastreid_plugins.engine import load_model_weights, read_model_weights

    if not cfg.MODEL.WEIGHTS:
        raise FileNotFoundError(f"No model to {purpose}: MODEL.WEIGHTS is empty; pass "
                                "`MODEL.WEIGHTS /path/to/model.pth` after the other arguments.")
    ckpt = read_model_weights(cfg.MODEL.WEIGHTS)
    verbose = debug_requested([])[0] or os.environ.get("FASTREID_PLUGINS_VERBOSE", "") not in (
        "", "0")
    capture = _ModelLog()
    defaults_logger = logging.getLogger("fastreid.engine.defaults")  # DefaultTrainer.build_model
    if not verbose:
        defaults_logger.addFilter(capture)
    try:
        model = trainer_class_for(cfg).build_model(cfg)
    finally:
        defaults_logger.removeFilter(capture)
    load_model_weights(model, cfg.MODEL.WEIGHTS, ckpt)
    n = sum(p.numel() for p in model.parameters())
    where = "above" if verbose else "rerun with --debug to print it"
    if log_file:
        log_file = os.fspath(log_file)
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        with open(log_file, "a") as f:
            model_text = capture.text or f"Model:\n{model}"
            f.write(f"Config:\n{cfg.dump()}\n{model_text}\n")
        where = f"full config and model in {log_file}"
    logging.getLogger("fastreid_plugins.tools").info(
        f"Model: {cfg.MODEL.META_ARCHITECTURE}, {n / 1e6:.1f} M parameters, weights "
        f"{cfg.MODEL.WEIGHTS} ({where})")
    return model.eval()


class _ModelLog:
    """Logger filter: keeps FastReID's ``Model:`` record (``text``) off every handler."""

    def __init__(self) -> None:
        self.text = None

    def filter(self, record: Any) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Model:\n"):
            self.text = record.getMessage()
            return False
        return True
