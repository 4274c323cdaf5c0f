"""Command-line tools: ``python -m fastreid_plugins.tools.<name>``.

* ``demo``: train and evaluate the demo MFG-Net config (``make demo``).
* ``visualize``: rank-list pictures (top-k gallery per query, green = same ID, red = different)
  and the CMC curve of a trained model.
* ``export_onnx``: export any meta-architecture's eval forward to ONNX and check it with
  onnxruntime.

Your own images (top-level modules, built on :func:`build_tool_cfg` / :func:`load_tool_model`):

* ``python -m fastreid_plugins.extract``: features of a folder / list of images, in resumable
  shards (:class:`fastreid_plugins.extract.FeatureExtractor` in Python).
* ``python -m fastreid_plugins.search``: faiss search of a gallery of extracted features (exact,
  IVF, re-ranking), CSV / JSON and rank-list pictures.

Importing this package is cheap (no torch / FastReID import); the helpers below import lazily so
that ``python -m fastreid_plugins.tools.demo`` can set ``FASTREID_DATASETS`` first.
"""

import importlib

__all__ = ["PLUGIN_PACKAGES", "plugin_config_fns", "build_tool_cfg", "trainer_class_for",
           "load_tool_model"]

# the method subpackages whose ``add_<method>_config`` functions every tool applies
PLUGIN_PACKAGES = ("mfgnet", "mbfn", "svrn", "clip_senet")


def plugin_config_fns():
    """The ``add_*_config`` functions exported by the plugin packages (in a fixed order).

    Returns:
        list[callable]: each takes a config and adds its keys in place.
    """
    import fastreid_plugins  # noqa: F401  (compat + registration)

    fns = []
    for name in PLUGIN_PACKAGES:
        mod = importlib.import_module(f"fastreid_plugins.{name}")
        for attr in sorted(getattr(mod, "__all__", dir(mod))):
            fn = getattr(mod, attr, None)
            if attr.startswith("add_") and attr.endswith("_config") and callable(fn):
                fns.append(fn)
    return fns


def build_tool_cfg(config_file, opts=()):
    """Frozen config for a tool: FastReID defaults + every plugin's keys + file + ``opts``.

    ``MODEL.DEVICE`` falls back to ``cpu`` when CUDA is not available and no pretrained weights
    are loaded (every ``MODEL.*.PRETRAIN`` off, as for ``--eval-only``: the tools load
    ``MODEL.WEIGHTS``); see :func:`fastreid_plugins.engine.prepare_for_host`.

    Args:
        config_file (str): a ``.yml`` config (``_BASE_`` supported).
        opts (list[str]): ``KEY VALUE`` overrides.

    Raises:
        FileNotFoundError: ``config_file`` does not exist.
    """
    import os

    from fastreid_plugins.config import get_cfg
    from fastreid_plugins.engine import prepare_for_host

    if not config_file or not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file not found: {config_file!r}")
    cfg = get_cfg(*plugin_config_fns())
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []))
    prepare_for_host(cfg, eval_only=True)
    cfg.freeze()
    return cfg


def trainer_class_for(cfg):
    """The trainer that builds the loaders ``cfg``'s meta-architecture expects.

    A plugin whose batches need more than FastReID's ``images/targets/camids`` (e.g. CLIP-SENet's
    viewpoint indices) defines a :class:`~fastreid_plugins.engine.PluginTrainer` subclass in its
    package; that class is returned, otherwise ``PluginTrainer``.

    Raises:
        KeyError: ``MODEL.META_ARCHITECTURE`` is not registered.
    """
    import inspect

    from fastreid.modeling.meta_arch import META_ARCH_REGISTRY

    from fastreid_plugins.engine import PluginTrainer

    name = cfg.MODEL.META_ARCHITECTURE
    try:
        arch = META_ARCH_REGISTRY.get(name)
    except KeyError as e:
        raise KeyError(f"MODEL.META_ARCHITECTURE={name!r} is not registered; known: "
                       f"{sorted(getattr(META_ARCH_REGISTRY, '_obj_map', {}))}") from e
    package = importlib.import_module(arch.__module__.rsplit(".", 1)[0])
    found = [obj for _, obj in inspect.getmembers(package, inspect.isclass)
             if issubclass(obj, PluginTrainer) and obj is not PluginTrainer]
    return found[0] if len(found) == 1 else PluginTrainer


def load_tool_model(cfg, purpose):
    """The eval-mode model of ``cfg`` with ``MODEL.WEIGHTS`` loaded (strictly), for a tool.

    Built by :func:`trainer_class_for`'s ``build_model`` (FastReID's ``build_model`` + its log).

    Args:
        cfg (CfgNode): a config from :func:`build_tool_cfg`.
        purpose (str): what the tool does with it, for the error message (e.g. "export").

    Raises:
        FileNotFoundError: ``MODEL.WEIGHTS`` is empty or the file does not exist.
        fastreid_plugins.engine.WeightsMismatchError: the checkpoint does not fit the model.
    """
    from fastreid_plugins.engine import load_model_weights

    if not cfg.MODEL.WEIGHTS:
        raise FileNotFoundError(f"No model to {purpose}: pass `MODEL.WEIGHTS /path/to/model.pth` "
                                "after the other arguments.")
    model = trainer_class_for(cfg).build_model(cfg)
    load_model_weights(model, cfg.MODEL.WEIGHTS)
    return model.eval()
