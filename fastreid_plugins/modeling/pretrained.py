"""Pretrained backbone weights: where the file comes from and how it loads (one place for all).

**Where the file comes from** (:func:`resolve_weights_file`), in this order:

1. ``MODEL.BACKBONE.PRETRAIN_PATH`` when set (a missing file is an error; nothing else is tried);
2. the torch.hub cache, ``$TORCH_HOME/hub/checkpoints/<file>`` (:func:`hub_cache_dir`; torch's
   default ``TORCH_HOME`` is ``~/.cache/torch``), then FastReID 1.4.0's own download folder
   ``$TORCH_HOME/checkpoints/<file>`` (read only, so earlier FastReID downloads are reused);
3. a download of the URL FastReID's backbone names (``fastreid.modeling.backbones.resnet`` /
   ``resnext`` ``model_urls``) into the torch.hub cache with torch.hub's downloader
   (:func:`torch.hub.download_url_to_file`: progress bar, and the file's SHA-256 must start with
   the hash prefix in its name, ``resnet50-19c8e357.pth`` -> ``19c8e357``; a mismatching download
   is deleted), unless offline (:func:`is_offline`: ``FASTREID_PLUGINS_OFFLINE=1`` or
   ``HF_HUB_OFFLINE=1``), where nothing opens a socket. Under DDP only local rank 0 (one process per
   machine) looks up and downloads; the others wait for it and then read the cache.

Every failure is a :class:`WeightsNotAvailableError` (a ``FileNotFoundError``) naming the file,
the URL, the cache folder and the config key to set.

**How it loads** (:func:`load_backbone_weights`): strictly. The file may be a plain state dict
(torchvision, IBN-Net), a ``{"state_dict": ...}`` / ``{"model": ...}`` container, with
``module.`` (DataParallel) or ``module.encoder.`` (the format FastReID's ResNeXt builder reads)
prefixes. The ImageNet classifier ``fc.*`` is dropped; every other tensor of the backbone must come
from the file: a missing, unexpected or mis-shaped key is a :class:`WeightsMismatchError` naming
the file, listing the keys and saying which architecture the file holds. Exempt are only BatchNorm's
``num_batches_tracked`` counters (absent from files saved by torch < 0.4.1, e.g.
``resnet50-19c8e357.pth``) and FastReID's non-local blocks (``WITH_NL``), which no ImageNet file
holds and which stay at their initialisation. One log line per load:
``loaded N/N tensors from FILE``.

**Which network**: FastReID's ``build_resnext_backbone`` with ``WITH_IBN`` puts IBN in ``layer4``
too, but IBN-Net (Pan et al., ECCV 2018, Sec. 3.2 "IBN-Net-a": IN only in conv2_x-conv4_x;
``ibnnet/resnext_ibn.py``: ``ibn_cfg=('a', 'a', 'a', None)``), whose
``resnext101_ibn_a-6ace051d.pth`` FastReID itself names, has a plain BatchNorm as ``bn1`` of every
``layer4`` block. The builders here build IBN-Net's layout (:func:`apply_ibn_layout`;
``MODEL.BACKBONE.IBN_LAYOUT "fastreid"`` keeps FastReID's). FastReID's ResNet already has
IBN-Net's layout.

:mod:`fastreid_plugins.patches.backbones` puts :func:`build_resnet_backbone` and
:func:`build_resnext_backbone` in FastReID's ``BACKBONE_REGISTRY`` under FastReID's names, so every
backbone (FastReID's ``Baseline``, and the plugins' MFG-Net / MBFN / SVRN / CLIP-SENet, whose
branch copies are deep copies of the loaded backbone) gets its weights here.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from typing import TYPE_CHECKING, Callable, Dict, Mapping, Optional, Sequence, Union
from urllib.parse import urlparse

import torch

from ..checkpoint import load_checkpoint_file
from ..config import PLUGIN_DEFAULTS
from ..errors import WeightsMismatchError, WeightsNotAvailableError

if TYPE_CHECKING:
    from fastreid.config import CfgNode
    from torch import nn

__all__ = ["OFFLINE_ENV_VARS", "IBN_LAYOUTS", "WeightsNotAvailableError", "WeightsMismatchError",
           "is_offline", "hub_cache_dir", "fastreid_cache_dir", "url_filename", "hash_prefix",
           "resolve_weights_file", "download_weights", "read_weights", "describe_resnet",
           "load_backbone_weights", "published_url", "apply_ibn_layout", "strict_builder"]

logger = logging.getLogger(__name__)

#: Environment variables that switch downloads off (any of "1", "true", "yes", "on").
OFFLINE_ENV_VARS = ("FASTREID_PLUGINS_OFFLINE", "HF_HUB_OFFLINE")
# seconds a download may wait for a connection or for its next bytes before it fails
# (torch.hub's downloader opens its URL without a timeout: a stalled server would block forever)
DOWNLOAD_TIMEOUT_ENV = "FASTREID_PLUGINS_DOWNLOAD_TIMEOUT"
DEFAULT_DOWNLOAD_TIMEOUT = 60.0


def download_timeout():
    """Seconds (``FASTREID_PLUGINS_DOWNLOAD_TIMEOUT``, default 60) a weights download may wait to
    connect or for its next bytes.

    Raises:
        ValueError: the variable is not a positive number.
    """
    raw = os.environ.get(DOWNLOAD_TIMEOUT_ENV, "")
    if not raw.strip():
        return DEFAULT_DOWNLOAD_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{DOWNLOAD_TIMEOUT_ENV} must be a positive number of seconds, got "
                         f"{raw!r}")
    return value
_TRUE = {"1", "true", "yes", "on"}

#: ``MODEL.BACKBONE.IBN_LAYOUT`` values: IBN-Net's (IBN in layer1-3) or FastReID's ResNeXt
#: (layer1-4).
IBN_LAYOUTS = ("ibnnet", "fastreid")

CONFIG_KEY = "MODEL.BACKBONE.PRETRAIN_PATH"
#: Key prefixes of the ImageNet classifier, dropped on load.
CLASSIFIER_PREFIXES = ("fc.",)
#: Prefixes stripped when every key carries one (longest first).
WRAPPER_PREFIXES = ("module.encoder.", "module.")
#: FastReID's non-local blocks: added on top of the ImageNet architecture, in no ImageNet file.
NEW_LAYER_PREFIXES = ("NL_1.", "NL_2.", "NL_3.", "NL_4.")


# --------------------------------------------------------------------------------------------
# Where the file comes from
# --------------------------------------------------------------------------------------------
def is_offline() -> bool:
    """True when ``FASTREID_PLUGINS_OFFLINE`` or ``HF_HUB_OFFLINE`` is "1"/"true"/"yes"/"on".

    Offline, nothing is downloaded (no socket is opened): weights come from local files and caches
    only. The same switch serves the ImageNet backbones and the Hugging Face (TinyCLIP) weights.
    """
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in OFFLINE_ENV_VARS)


def _offline_reason():
    on = [v for v in OFFLINE_ENV_VARS if os.environ.get(v, "").strip().lower() in _TRUE]
    return " and ".join(f"{v}={os.environ[v]}" for v in on)


def hub_cache_dir() -> str:
    """torch.hub's checkpoint folder, ``$TORCH_HOME/hub/checkpoints`` (where downloads go)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def fastreid_cache_dir() -> str:
    """FastReID 1.4.0's own download folder, ``$TORCH_HOME/checkpoints`` (read, never written)."""
    home = os.getenv("TORCH_HOME",
                     os.path.join(os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache")),
                                  "torch"))
    return os.path.join(os.path.expanduser(home), "checkpoints")


def url_filename(url: str) -> str:
    """File name of a URL (``.../resnet50-19c8e357.pth`` -> ``resnet50-19c8e357.pth``)."""
    return os.path.basename(urlparse(url).path)


def hash_prefix(filename: str) -> Optional[str]:
    """The SHA-256 prefix torch.hub reads from a file name (``name-<hex>.ext``), or None."""
    m = torch.hub.HASH_REGEX.search(filename)
    return m.group(1) if m and m.group(1) else None


def _how_to_get(url, config_key, cache):
    name = url_filename(url)
    return (f"download {url} yourself into {cache}/ (it is then found there as {name}), "
            f"or set {config_key} to a local copy of {name}, or set "
            f"{config_key.rsplit('.', 1)[0]}.PRETRAIN False to start from random weights.")


def resolve_weights_file(url: Optional[str], path: str = "", *, config_key: str = CONFIG_KEY,
                         what: str = "ImageNet weights", progress: bool = True) -> str:
    """Path of the pretrained weights: ``path``, else a cached copy of ``url``, else a download.

    Args:
        url (str): where the weights are published ("" or None: no published file is known).
        path (str): the user's explicit file (``MODEL.BACKBONE.PRETRAIN_PATH``); wins if set.
        config_key (str): the config key named in error messages.
        what (str): what the weights are, for messages ("ImageNet weights for ResNet-50").
        progress (bool): show torch.hub's progress bar while downloading.

    Returns:
        str: an existing local file.

    Raises:
        WeightsNotAvailableError: ``path`` does not exist; no URL is known and ``path`` is empty;
            offline and not cached; the download failed or its hash did not match.
    """
    cache = hub_cache_dir()
    if path:
        full = os.path.expanduser(path)
        if os.path.isfile(full):
            return full
        where = (f" The published file is {url_filename(url)} ({url}); leave {config_key} empty "
                 f"to use the torch.hub cache {cache}/ (downloading it there when online)."
                 if url else "")
        raise WeightsNotAvailableError(f"{config_key}={path!r} does not exist ({what}).{where}")
    if not url:
        raise WeightsNotAvailableError(
            f"{config_key} is empty and no published {what} are known for this configuration, so "
            f"there is nothing to look for in the torch.hub cache {cache}/ or to download. Set "
            f"{config_key} to a local file, or {config_key.rsplit('.', 1)[0]}.PRETRAIN False.")
    from fastreid.utils import comm

    name = url_filename(url)
    if comm.get_world_size() > 1 and comm.get_local_rank() != 0:
        comm.synchronize()  # DDP: each machine's first process looks up / downloads first (below)
        found = _find_cached(name)
        if found is None:
            raise WeightsNotAvailableError(
                f"{what}: local rank 0 found no {name} in {cache}/ and did not download it "
                f"(see its error). Either " + _how_to_get(url, config_key, cache))
        return found
    try:
        found = _find_cached(name)
        if found is not None:
            logger.info(f"{what}: using the cached {found}")
            return found
        if is_offline():
            raise WeightsNotAvailableError(
                f"{what}: {name} is not in the torch.hub cache {cache}/ and downloads are off "
                f"({_offline_reason()}), so {url} is not fetched. Either "
                + _how_to_get(url, config_key, cache))
        return download_weights(url, cache, progress=progress, config_key=config_key, what=what)
    finally:
        if comm.get_world_size() > 1:
            comm.synchronize()  # release the other processes, also when this one failed


def _find_cached(name):
    """``name`` in the torch.hub cache, else in FastReID's download folder, else None."""
    for folder in (hub_cache_dir(), fastreid_cache_dir()):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def download_weights(url: str, cache: Optional[str] = None, *, progress: bool = True,
                     config_key: str = CONFIG_KEY, what: str = "ImageNet weights") -> str:
    """Download ``url`` into ``cache`` (default :func:`hub_cache_dir`) with torch.hub's downloader.

    The SHA-256 of the download must start with the hash prefix in the file name (when the name
    has one); otherwise the download is deleted and an error raised. (Under DDP,
    :func:`resolve_weights_file` calls this on local rank 0 only.)

    Returns:
        str: the downloaded file, ``<cache>/<file name of url>``.

    A connection or read that waits longer than :func:`download_timeout` seconds fails (torch.hub
    itself would wait forever on a stalled server).

    Raises:
        WeightsNotAvailableError: offline, network failure or stall, HTTP error, or hash mismatch.
        ValueError: ``FASTREID_PLUGINS_DOWNLOAD_TIMEOUT`` is not a positive number.
    """
    cache = cache or hub_cache_dir()
    name = url_filename(url)
    dst = os.path.join(cache, name)
    if is_offline():  # never reached through resolve_weights_file; guards direct calls
        raise WeightsNotAvailableError(
            f"{what}: downloads are off ({_offline_reason()}); not fetching {url}. Either "
            + _how_to_get(url, config_key, cache))
    timeout = download_timeout()
    previous = socket.getdefaulttimeout()
    try:
        os.makedirs(cache, exist_ok=True)
        logger.info(f"{what}: downloading {url} to {dst}")
        # torch.hub's urlopen takes no timeout: the default socket timeout bounds the wait to
        # connect and for each read (process-wide, for the length of the download only)
        socket.setdefaulttimeout(timeout)
        torch.hub.download_url_to_file(url, dst, hash_prefix(name), progress=progress)
    except RuntimeError as e:
        if "invalid hash value" not in str(e):
            raise
        if os.path.isfile(dst):  # torch deletes its temporary file; never keep a bad copy
            os.remove(dst)
        raise WeightsNotAvailableError(
            f"{what}: the download of {url} is corrupt: its SHA-256 does not start with "
            f"{hash_prefix(name)!r}, the prefix in the file name {name} ({e}). It was deleted "
            f"(nothing was written to {cache}/). Try again, or "
            + _how_to_get(url, config_key, cache)) from e
    except OSError as e:  # URLError, HTTPError, timeouts, connection refused, disk errors
        stalled = isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None),
                                                            TimeoutError)
        why = (f"the server sent nothing for {timeout:g} s ({DOWNLOAD_TIMEOUT_ENV}); "
               if stalled else "")
        raise WeightsNotAvailableError(
            f"{what}: could not download {url} ({why}{type(e).__name__}: {e}). No network? "
            "Either " + _how_to_get(url, config_key, cache)
            + f" Set {OFFLINE_ENV_VARS[0]}=1 to never try downloads.") from e
    finally:
        socket.setdefaulttimeout(previous)
    return dst


# --------------------------------------------------------------------------------------------
# How it loads
# --------------------------------------------------------------------------------------------
def read_weights(path: str) -> Dict[str, torch.Tensor]:
    """The state dict of a weights file (containers unwrapped, wrapper prefixes stripped).

    Reads with ``torch.load(weights_only=True)``
    (:func:`fastreid_plugins.checkpoint.load_checkpoint_file`), unwraps ``{"state_dict": ...}`` /
    ``{"model": ...}`` and strips a ``module.encoder.`` or ``module.`` prefix carried by every key.

    Raises:
        WeightsNotAvailableError: the file does not exist.
        WeightsMismatchError: the file cannot be read or holds no ``{str: tensor}`` dict.
    """
    if not os.path.isfile(path):
        raise WeightsNotAvailableError(f"weights file not found: {path!r}")
    try:
        state = load_checkpoint_file(path)
    except Exception as e:
        raise WeightsMismatchError(
            f"could not read the weights file {path!r} ({type(e).__name__}: {e}); if it is a "
            "partial or corrupt download, delete it and try again.") from e
    while isinstance(state, dict):
        inner = next((state[k] for k in ("state_dict", "model") if isinstance(state.get(k), dict)),
                     None)
        if inner is None:
            break
        state = inner
    if (not isinstance(state, dict) or not state
            or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items())):
        raise WeightsMismatchError(
            f"{path!r} holds no state dict of tensors (got {type(state).__name__}"
            + (f" with keys {sorted(map(str, state))[:10]}" if isinstance(state, dict) else "")
            + ").")
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
            break
    return dict(state)


_DEPTHS = {((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), False): 34, ((3, 4, 6, 3), True): 50,
           ((3, 4, 23, 3), True): 101, ((3, 8, 36, 3), True): 152}


def describe_resnet(shapes: Mapping[str, Union[torch.Tensor, Sequence[int]]]) -> str:
    """Name the ResNet-family architecture a state dict holds, from its keys and shapes.

    Args:
        shapes (dict): ``{key: shape}`` (or ``{key: tensor}``) of a ResNet-like state dict.

    Returns:
        str: e.g. ``"ResNet-50 (Bottleneck, blocks 3-4-6-3, no IBN, no SE)"``,
        ``"ResNeXt-101 32x4d (..., IBN in layer1-layer3, ...)"``, or a short description of a
        state dict that is not ResNet-like.
    """
    shapes = {k: tuple(getattr(v, "shape", v)) for k, v in shapes.items()}
    pat = re.compile(r"^layer([1-4])\.(\d+)\.")
    blocks = {i: set() for i in range(1, 5)}
    for k in shapes:
        m = pat.match(k)
        if m:
            blocks[int(m.group(1))].add(int(m.group(2)))
    if "conv1.weight" not in shapes or not all(blocks.values()):
        heads = sorted({k.split(".")[0] for k in shapes})
        return f"not a ResNet-like backbone (top-level names: {', '.join(heads[:8])})"
    counts = tuple(len(blocks[i]) for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in shapes
    depth = _DEPTHS.get((counts, bottleneck))
    name = f"ResNet-{depth or '?'}"
    c2 = shapes.get("layer1.0.conv2.weight")  # (D*C, D, 3, 3) with C groups of width D
    if bottleneck and c2 is not None and len(c2) == 4 and c2[1] != c2[0]:
        name = f"ResNeXt-{depth or '?'} {c2[0] // c2[1]}x{c2[1]}d"
    ibn = [f"layer{i}" for i in range(1, 5) if f"layer{i}.0.bn1.IN.weight" in shapes]
    se = "SE" if "layer1.0.se.fc.0.weight" in shapes else "no SE"
    ibn_txt = ("IBN in " + (f"{ibn[0]}-{ibn[-1]}" if len(ibn) > 1 else ibn[0])) if ibn else "no IBN"
    return (f"{name} ({'Bottleneck' if bottleneck else 'BasicBlock'}, blocks "
            f"{'-'.join(map(str, counts))}, {ibn_txt}, {se})")


def _layout_hint(missing, unexpected):
    """A sentence for the IBN-in-layer4 mismatch (IBN-Net file vs FastReID's ResNeXt layout)."""
    ibn_missing = {k.split(".bn1.IN.")[0] for k in missing if ".bn1.IN." in k}
    bn_unexpected = {k.split(".bn1.")[0] for k in unexpected
                     if re.search(r"\.bn1\.(weight|bias|running_)", k)}
    if ibn_missing & bn_unexpected:
        return (" The file has a plain BatchNorm where the model has IBN (bn1 of "
                f"{', '.join(sorted(ibn_missing & bn_unexpected)[:3])}...): "
                "it has IBN-Net's layout "
                "(IBN in layer1-3 only); build it with MODEL.BACKBONE.IBN_LAYOUT \"ibnnet\".")
    ibn_unexpected = {k.split(".bn1.IN.")[0] for k in unexpected if ".bn1.IN." in k}
    bn_missing = {k.split(".bn1.")[0] for k in missing
                  if re.search(r"\.bn1\.(weight|bias|running_)", k)}
    if ibn_unexpected & bn_missing:
        return (" The file has IBN where the model has a plain BatchNorm (bn1 of "
                f"{', '.join(sorted(ibn_unexpected & bn_missing)[:3])}...): it was saved from "
                "FastReID's ResNeXt layout (IBN in layer1-4); build it with "
                "MODEL.BACKBONE.IBN_LAYOUT \"fastreid\".")
    return ""


def load_backbone_weights(model: nn.Module, path: str, *, config_key: str = CONFIG_KEY,
                          drop: Sequence[str] = CLASSIFIER_PREFIXES) -> int:
    """Load a pretrained backbone file into ``model`` strictly (every backbone tensor from the
    file).

    Args:
        model (nn.Module): the backbone (e.g. FastReID's ``ResNet`` / ``ResNeXt``).
        path (str): the weights file (see :func:`read_weights` for the accepted containers).
        config_key (str): the config key named in error messages.
        drop (tuple[str]): key prefixes of the file to drop (the ImageNet classifier ``fc.``).

    Returns:
        int: the number of tensors loaded (all the model's, less ``num_batches_tracked`` counters
        and the non-local blocks no ImageNet file has).

    Raises:
        WeightsNotAvailableError: the file does not exist.
        WeightsMismatchError: a full-model checkpoint, or any missing, unexpected or mis-shaped key
            (all listed, with the architecture the file and the model hold).
    """
    from .base import state_dict_mismatch

    state = read_weights(path)
    dropped = sorted(k for k in state if k.startswith(tuple(drop)))
    state = {k: v for k, v in state.items() if not k.startswith(tuple(drop))}
    own = model.state_dict()
    if not any(k in own for k in state) and any(k.startswith("backbone.") for k in state):
        raise WeightsMismatchError(
            f"{config_key}={path!r} is a full-model checkpoint (keys "
            f"{', '.join(sorted({k.split('.')[0] + '.*' for k in state})[:6])}), not backbone "
            "weights. To start from a trained model set MODEL.WEIGHTS to it (and "
            f"{config_key.rsplit('.', 1)[0]}.PRETRAIN False); {config_key} takes ImageNet-style "
            "backbone files (conv1.weight, layer1.0.conv1.weight, ...).")

    def counter(k):
        return k.endswith("num_batches_tracked")

    new = tuple(p for p in NEW_LAYER_PREFIXES
                if any(k.startswith(p) for k in own) and not any(k.startswith(p) for k in state))
    expected = {k: v for k, v in own.items() if not counter(k) and not k.startswith(new)}
    given = {k: v for k, v in state.items() if not counter(k)}
    report = state_dict_mismatch(expected, given, what="model")
    stray = sorted(k for k in state if counter(k) and k not in own)
    if stray:
        report += f"\n  unexpected in checkpoint ({len(stray)}):\n    " + "\n    ".join(stray[:30])
    if report:
        missing = set(expected) - set(given)
        unexpected = (set(given) - set(expected)) | set(stray)
        raise WeightsMismatchError(
            f"{config_key}={path!r} does not fit the backbone: the file holds "
            f"{describe_resnet(state)}, the model is {describe_resnet(expected)}."
            + _layout_hint(missing, unexpected) + report)
    load = {k: v for k, v in state.items() if k in own}
    result = model.load_state_dict(load, strict=False)
    left = [k for k in result.missing_keys if not counter(k) and not k.startswith(new)]
    if left or result.unexpected_keys:  # cannot happen after the check above
        raise WeightsMismatchError(f"{path!r}: not loaded {left}, "
                                   f"unexpected {result.unexpected_keys}")
    notes = []
    if dropped:
        notes.append(f"dropped {', '.join(dropped)}")
    if new:
        notes.append(f"{', '.join(p[:-1] for p in new)} not in the file: initialised")
    n = len(expected)
    logger.info(f"loaded {n}/{n} tensors from {path}" + (f" ({'; '.join(notes)})" if notes else ""))
    return n


# --------------------------------------------------------------------------------------------
# FastReID's ResNet / ResNeXt builders
# --------------------------------------------------------------------------------------------
def _arch_key(cfg):
    """FastReID's ``model_urls`` key for the backbone in ``cfg`` and the module holding the URLs."""
    from fastreid.modeling.backbones import resnet, resnext

    bb = cfg.MODEL.BACKBONE
    key = ("ibn_" if bb.WITH_IBN else "") + bb.DEPTH
    if bb.NAME == "build_resnext_backbone":
        return key, resnext
    return ("se_" if bb.WITH_SE else "") + key, resnet


def published_url(cfg: CfgNode) -> str:
    """The URL FastReID names for the ImageNet weights of ``cfg.MODEL.BACKBONE`` ("" if none)."""
    key, mod = _arch_key(cfg)
    return getattr(mod, "model_urls", {}).get(key, "")


def _what(cfg):
    bb = cfg.MODEL.BACKBONE
    return (f"ImageNet weights for {bb.NAME} (DEPTH {bb.DEPTH}, WITH_IBN {bb.WITH_IBN}"
            + (f", WITH_SE {bb.WITH_SE}" if bb.NAME == "build_resnet_backbone" else "") + ")")


def apply_ibn_layout(model: nn.Module, cfg: CfgNode) -> nn.Module:
    """Give a FastReID ResNeXt-IBN IBN-Net's layout: plain BN as ``bn1`` in every ``layer4`` block.

    Reference:
        Pan et al., "Two at Once: Enhancing Learning and Generalization Capacities via IBN-Net",
        ECCV 2018, Sec. 3.2 (IBN-Net-a: IN in conv2_x-conv4_x, not conv5_x); XingangPan/IBN-Net
        ``ibnnet/resnext_ibn.py`` (``ibn_cfg=('a', 'a', 'a', None)``), the architecture of
        ``resnext101_ibn_a-6ace051d.pth``.

    ``MODEL.BACKBONE.IBN_LAYOUT "fastreid"`` leaves FastReID's layout (IBN in layer1-4).

    Raises:
        ValueError: unknown ``IBN_LAYOUT``.
    """
    from fastreid.layers import IBN, get_norm

    bb = cfg.MODEL.BACKBONE
    # FastReID's own configs (this builder replaces FastReID's) have no IBN_LAYOUT key
    layout = bb.get("IBN_LAYOUT", PLUGIN_DEFAULTS["MODEL.BACKBONE.IBN_LAYOUT"])
    if layout not in IBN_LAYOUTS:
        raise ValueError(f"MODEL.BACKBONE.IBN_LAYOUT must be one of {IBN_LAYOUTS}, got {layout!r}")
    if not bb.WITH_IBN or layout == "fastreid":
        return model
    for block in model.layer4:
        if isinstance(block.bn1, IBN):
            block.bn1 = get_norm(bb.NORM, block.bn1.IN.num_features + block.bn1.BN.num_features)
    return model


def _build(original, cfg, resnext):
    bb = cfg.MODEL.BACKBONE
    build_cfg = cfg
    if bb.PRETRAIN:  # FastReID's loader is non-strict and downloads with gdown: build bare
        build_cfg = cfg.clone()
        build_cfg.defrost()
        build_cfg.MODEL.BACKBONE.PRETRAIN = False
    model = original(build_cfg)
    if resnext:
        apply_ibn_layout(model, cfg)
    if bb.PRETRAIN:
        url = published_url(cfg)
        path = resolve_weights_file(url, bb.PRETRAIN_PATH, what=_what(cfg))
        load_backbone_weights(model, path)
    return model


def strict_builder(original: Callable[[CfgNode], nn.Module],
                   resnext: bool) -> Callable[[CfgNode], nn.Module]:
    """FastReID's backbone builder ``original`` (``build_resnet_backbone`` /
    ``build_resnext_backbone``) with weights from :func:`resolve_weights_file`, loaded strictly by
    :func:`load_backbone_weights`, and for ResNeXt IBN-Net's IBN layout (:func:`apply_ibn_layout`).
    The backbone patch (:mod:`fastreid_plugins.patches.backbones`) registers what this returns in
    FastReID's place, under the same name.

    Args:
        original: FastReID's builder, ``cfg -> nn.Module``.
        resnext: whether it builds a ResNeXt (the IBN layout applies).

    Returns:
        callable: ``cfg -> nn.Module``, FastReID's ``ResNet`` / ``ResNeXt``, (B, 3, H, W) ->
        (B, C, H/16 or H/32, W/...). It raises WeightsNotAvailableError / WeightsMismatchError
        (see the module docstring) and, for ResNeXt, ValueError on an unknown
        ``MODEL.BACKBONE.IBN_LAYOUT``.
    """
    def build(cfg: CfgNode) -> nn.Module:
        return _build(original, cfg, resnext=resnext)

    build.__name__ = build.__qualname__ = original.__name__
    build.__module__ = __name__
    build.__doc__ = strict_builder.__doc__
    return build
