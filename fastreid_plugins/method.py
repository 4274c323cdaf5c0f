"""The one surface every method package exposes (:class:`Method`), and the loss-key rule.

Each of ``fastreid_plugins.{mfgnet,mbfn,svrn,clip_senet}`` defines ``METHOD = Method(...)``:

* ``add_config(cfg)``: adds ``MODEL.<METHOD>`` (FastReID's ``add_<method>_config`` idiom);
* ``validate_config(cfg)``: checks every key the method reads, raising
  :class:`~fastreid_plugins.errors.ConfigError` (``MissingConfigError`` when ``add_config`` was
  not applied) that names the key and the accepted values; the meta-architecture calls it first;
* ``meta_arch``: its name in FastReID's ``META_ARCH_REGISTRY``; ``trainer``: the trainer class;
* ``project``: its folder under ``projects/``; the ablation rows live in the table registry.

Losses: SVRN and CLIP-SENet read FastReID's ``MODEL.LOSSES.NAME`` and ``*.SCALE``. MFG-Net and
MBFN define their loss by the paper's Eq. 3 (``L = ALPHA L_softmax + BETA L_triplet`` /
``L_softmax + LAMBDA L_triplet``) with their own keys, so :func:`check_fixed_losses` refuses a
``NAME`` or ``SCALE`` that they would otherwise silently ignore.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError

__all__ = ["Method", "check_fixed_losses"]


@dataclass(frozen=True)
class Method:
    """One method's surface (see the module docstring)."""

    name: str
    meta_arch: str
    add_config: Callable[[Any], Any]
    validate_config: Callable[[Any], None]
    trainer: type
    project: str


#: FastReID 1.4.0's defaults of the keys a fixed-loss method does not read
_FASTREID_LOSS_DEFAULTS = {"NAME": ("CrossEntropyLoss",), "CE.SCALE": 1.0, "TRI.SCALE": 1.0}


def check_fixed_losses(cfg: Any, method: str, instead: str) -> None:
    """Refuse ``MODEL.LOSSES.NAME`` / ``CE.SCALE`` / ``TRI.SCALE`` other than FastReID's defaults
    for a method whose loss terms come from its own keys.

    Args:
        cfg: the config.
        method: the method's name, for the message.
        instead: the keys that set its loss terms, for the message.

    Raises:
        ConfigError: naming the key, its value and the keys to use instead.
    """
    losses = cfg.MODEL.LOSSES
    for key, default in _FASTREID_LOSS_DEFAULTS.items():
        node = losses
        for part in key.split("."):
            node = node[part]
        value = tuple(node) if key == "NAME" else node
        if value != default:
            raise ConfigError(
                f"MODEL.LOSSES.{key}={value!r} does not apply to {method}: its loss is the "
                f"paper's, set by {instead}. Leave MODEL.LOSSES.{key} at FastReID's default "
                f"{default!r}.")
