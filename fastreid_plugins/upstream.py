"""Every private FastReID / torch internal the package touches, each behind one guarded shim.

FastReID 1.4.0 has no public API for some things the plugins need (the active event storage, the
per-machine process group, the train-set construction without a sampler, replacing a registered
builder, a sampler's seed, the datasets root). Each such access lives here and nowhere else: a
shim checks that the internal exists and otherwise raises :class:`UpstreamChangedError` naming
it and the versions it was written against, instead of an ``AttributeError`` deep in a run.
:func:`check_all` looks every internal up; ``tests/test_upstream.py`` calls it, so an upgrade that
drops one fails there first, loudly, by name.

Written against FastReID 1.4.0 (``fastreid.__version__`` reports "1.3") and torch 2.14; the
torch internals of the ONNX exporter and oneDNN live with their only users
(:mod:`fastreid_plugins.tools.export_onnx`, :mod:`fastreid_plugins.evaluation.knn`), guarded the
same way.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Tuple

from .errors import UpstreamChangedError

__all__ = ["UpstreamChangedError", "INTERNALS", "check_all", "event_storage_active",
           "set_local_process_group", "local_process_group", "train_loader_from_config",
           "registry_names", "registry_replace", "set_sampler_seed", "replace_launch_worker",
           "replace_private_method"]

WRITTEN_FOR = "FastReID 1.4.0 / torch 2.14"


#: name -> (module, attribute) of each private internal used here
INTERNALS: Dict[str, Tuple[str, str]] = {
    "events._CURRENT_STORAGE_STACK": ("fastreid.utils.events", "_CURRENT_STORAGE_STACK"),
    "comm._LOCAL_PROCESS_GROUP": ("fastreid.utils.comm", "_LOCAL_PROCESS_GROUP"),
    "build._train_loader_from_config": ("fastreid.data.build", "_train_loader_from_config"),
    "build._test_loader_from_config": ("fastreid.data.build", "_test_loader_from_config"),
    "build._root": ("fastreid.data.build", "_root"),
    "Registry._obj_map": ("fastreid.modeling.backbones", "BACKBONE_REGISTRY._obj_map"),
    "NaiveIdentitySampler._seed": ("fastreid.data.samplers.triplet_sampler",
                                   "NaiveIdentitySampler.__init__"),
    "TensorboardXWriter._writer": ("fastreid.utils.events", "TensorboardXWriter.__init__"),
    "CommonMetricPrinter._last_write": ("fastreid.utils.events", "CommonMetricPrinter.write"),
    "launch._distributed_worker": ("fastreid.engine.launch", "_distributed_worker"),
    "ReidEvaluator._compile_dependencies": ("fastreid.evaluation.reid_evaluation",
                                            "ReidEvaluator._compile_dependencies"),
    "Checkpointer._load_file": ("fastreid.utils.checkpoint", "Checkpointer._load_file"),
}

#: instance attributes set by an upstream method (checked in its code object): internal name ->
#: the attributes the plugins read or write (engine.EvalAwareTensorboardWriter, seeding)
_ATTRIBUTES = {
    "NaiveIdentitySampler._seed": ("_seed",),
    "TensorboardXWriter._writer": ("_writer", "_window_size", "_last_write"),
    "CommonMetricPrinter._last_write": ("_last_write",),
}


def _lookup(name: str) -> Any:
    module, attr = INTERNALS[name]
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise UpstreamChangedError(
            f"{module}.{attr} ({name}) is gone in the installed FastReID/torch ({e}); "
            f"fastreid_plugins uses it and was written against {WRITTEN_FOR}. Install those "
            "versions or update fastreid_plugins/upstream.py.") from e
    return obj


def check_all() -> List[str]:
    """Look up every internal of :data:`INTERNALS`; returns their names.

    Raises:
        UpstreamChangedError: the first one that is missing, named.
    """
    for name in INTERNALS:
        _lookup(name)
    for name, attrs in _ATTRIBUTES.items():
        code = _lookup(name).__code__
        missing = [a for a in attrs if a not in code.co_names]
        if missing:
            module, attr = INTERNALS[name]
            raise UpstreamChangedError(
                f"{module}.{attr} no longer sets {missing} (fastreid_plugins uses them); it was "
                f"written against {WRITTEN_FOR}.")
    return list(INTERNALS)


def event_storage_active() -> bool:
    """Whether code runs inside a FastReID ``EventStorage`` context (training), i.e. whether
    ``get_event_storage()`` would succeed (FastReID has no public test for it)."""
    return len(_lookup("events._CURRENT_STORAGE_STACK")) > 0


def local_process_group() -> Any:
    """FastReID's per-machine process group (``comm._LOCAL_PROCESS_GROUP``; None before launch)."""
    return _lookup("comm._LOCAL_PROCESS_GROUP")


def set_local_process_group(group: Any) -> None:
    """Set FastReID's per-machine process group, as its own launch worker does."""
    _lookup("comm._LOCAL_PROCESS_GROUP")
    importlib.import_module("fastreid.utils.comm")._LOCAL_PROCESS_GROUP = group


def train_loader_from_config(cfg: Any, **kwargs: Any) -> Dict[str, Any]:
    """FastReID's ``_train_loader_from_config(cfg, **kwargs)``: the train set, sampler and loader
    arguments ``build_reid_train_loader`` would use (``"train_set"``, ``"sampler"``, ...)."""
    return _lookup("build._train_loader_from_config")(cfg, **kwargs)


def test_loader_from_config() -> Callable[..., Dict[str, Any]]:
    """FastReID's ``_test_loader_from_config`` (the function; patched by the data patches)."""
    return _lookup("build._test_loader_from_config")


def registry_names(registry: Any) -> List[str]:
    """The names registered in a FastReID ``Registry`` (sorted)."""
    _lookup("Registry._obj_map")
    return sorted(registry._obj_map)


def registry_replace(registry: Any, name: str, obj: Any) -> None:
    """Make ``registry.get(name)`` return ``obj``. FastReID's ``Registry.register`` refuses a
    name twice, so an upstream builder (``build_resnet_backbone``) can only be replaced here.

    Raises:
        KeyError: ``name`` is not registered (replacing is not registering).
    """
    _lookup("Registry._obj_map")
    if name not in registry._obj_map:
        raise KeyError(f"{name!r} is not registered in {registry!r}")
    registry._obj_map[name] = obj


def set_sampler_seed(sampler: Any, seed: int) -> None:
    """Set the seed of one of FastReID's identity samplers (they keep it in ``_seed`` and draw
    from it in ``_infinite_indices``).

    Raises:
        UpstreamChangedError: the sampler has no ``_seed`` (another sampler implementation).
    """
    if not hasattr(sampler, "_seed"):
        raise UpstreamChangedError(
            f"{type(sampler).__name__} has no _seed attribute to seed; fastreid_plugins.seeding "
            f"was written for FastReID's samplers of {WRITTEN_FOR}.")
    sampler._seed = int(seed)


def replace_launch_worker(patch: Callable[[Any, str], Any]) -> Any:
    """Call ``patch(module, "_distributed_worker")`` on FastReID's launch module (the package
    attribute ``fastreid.engine.launch`` is the function, ``from .launch import *``, so the module
    comes from ``importlib``); returns what ``patch`` returns.

    Raises:
        UpstreamChangedError: FastReID has no ``fastreid.engine.launch._distributed_worker``.
    """
    _lookup("launch._distributed_worker")
    return patch(importlib.import_module("fastreid.engine.launch"), "_distributed_worker")


def replace_private_method(name: str, patch: Callable[[Any, str], Any]) -> Any:
    """Call ``patch(owner_class, method)`` for the private method ``name`` of :data:`INTERNALS`
    (``"ReidEvaluator._compile_dependencies"``, ``"Checkpointer._load_file"``); returns what
    ``patch`` returns.

    Raises:
        UpstreamChangedError: the method is gone from the installed FastReID.
    """
    _lookup(name)
    module, attr = INTERNALS[name]
    owner_name, method = attr.rsplit(".", 1)
    return patch(getattr(importlib.import_module(module), owner_name), method)

