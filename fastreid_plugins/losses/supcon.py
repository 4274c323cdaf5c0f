"""Supervised contrastive loss (SupCon), shared by every plugin meta-architecture.

A meta-architecture opts in when ``MODEL.LOSSES.NAME`` contains ``"SupConLoss"``; its settings
live in their own node ``MODEL.LOSSES.SUPCON`` (added by :func:`add_supcon_config`):

* ``TEMPERATURE`` (0.07): tau of Eq. 2 in Khosla et al.;
* ``SCALE`` (1.0): the loss weight, like FastReID's ``CE.SCALE`` / ``TRI.SCALE``.

Typical use inside a meta-architecture's ``losses``::

    if "SupConLoss" in loss_names:
        loss_dict["loss_supcon"] = supcon_loss(features, targets, temperature) * scale
"""

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

from typing import Dict

import torch
import torch.nn.functional as F
from fastreid.config import CfgNode as CN
from torch import nn

from ..distributed.gather import gather_for_loss

__all__ = ["supcon_loss", "SupConLoss", "add_supcon_config", "supcon_kwargs_from_cfg"]


def add_supcon_config(cfg: CN) -> CN:
    """Add ``MODEL.LOSSES.SUPCON.{TEMPERATURE, SCALE}`` to ``cfg`` in place (idempotent).

    Defaults: ``TEMPERATURE`` 0.07 (the default of Khosla et al.'s reference code), ``SCALE`` 1.0.
    """
    if cfg.is_frozen():
        cfg.defrost()
    if "SUPCON" not in cfg.MODEL.LOSSES:
        cfg.MODEL.LOSSES.SUPCON = CN()
        cfg.MODEL.LOSSES.SUPCON.TEMPERATURE = 0.07
        cfg.MODEL.LOSSES.SUPCON.SCALE = 1.0
    return cfg


def supcon_kwargs_from_cfg(cfg: CN) -> Dict[str, float]:
    """``{"temperature": ..., "scale": ...}`` from ``MODEL.LOSSES.SUPCON``.

    Raises:
        KeyError: the config has no ``MODEL.LOSSES.SUPCON`` node (call :func:`add_supcon_config`).
        ValueError: ``TEMPERATURE`` is not > 0.
    """
    if "SUPCON" not in cfg.MODEL.LOSSES:
        raise KeyError("MODEL.LOSSES.SUPCON is missing from the config: build it with "
                       "fastreid_plugins.config.get_cfg(add_supcon_config, ...).")
    node = cfg.MODEL.LOSSES.SUPCON
    if not node.TEMPERATURE > 0:
        raise ValueError(f"MODEL.LOSSES.SUPCON.TEMPERATURE must be > 0, got {node.TEMPERATURE}")
    return {"temperature": float(node.TEMPERATURE), "scale": float(node.SCALE)}


def supcon_loss(features: torch.Tensor, targets: torch.Tensor, temperature: float = 0.07,
                normalize: bool = True, gather: bool = True) -> torch.Tensor:
    r"""Supervised contrastive loss :math:`\mathcal{L}^{sup}_{out}` over one batch.

    For every anchor :math:`i` with at least one positive,

    .. math::
        \ell_i = \frac{-1}{|P(i)|} \sum_{p \in P(i)} \log
                 \frac{\exp(z_i \cdot z_p / \tau)}{\sum_{a \in A(i)} \exp(z_i \cdot z_a / \tau)}

    where :math:`z` are the L2-normalised features, :math:`A(i)` all other samples of the batch
    and :math:`P(i) \subseteq A(i)` those with the anchor's identity. The loss is the mean of
    :math:`\ell_i` over anchors that have a positive (anchors without one are skipped; a batch
    where no anchor has a positive gives a zero loss that still back-propagates). Each image
    of the batch is one view (the re-id PK batch provides the positives), and the
    ``tau / base_tau`` factor of the reference code is left out (``MODEL.LOSSES.SUPCON.SCALE``
    weights the loss instead). Under DDP the batch is the whole multi-process batch: features and
    targets of every rank are gathered first (``DIST.GATHER_LOSSES``, see
    :func:`fastreid_plugins.distributed.gather.gather_for_loss`; ``gather``).

    Reference:
        Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, Eq. 2
        (:math:`\mathcal{L}^{sup}_{out}`).

    Args:
        features (torch.Tensor): (B, D) embeddings.
        targets (torch.Tensor): (B,) identity labels.
        temperature (float): tau > 0.
        normalize (bool): L2-normalise ``features`` first (SupCon is defined on the unit sphere;
            pass False only for features that are already normalised).
        gather (bool): gather every DDP rank's features first (``DIST.GATHER_LOSSES``).

    Returns:
        torch.Tensor: scalar loss.

    Raises:
        ValueError: ``features`` is not (B, D), ``targets`` is not (B,), or ``temperature`` <= 0.
    """
    if features.dim() != 2:
        raise ValueError(f"supcon_loss expects (B, D) features, got {tuple(features.shape)}")
    if targets.dim() != 1 or targets.shape[0] != features.shape[0]:
        raise ValueError(f"supcon_loss expects (B,) targets with B={features.shape[0]}, "
                         f"got {tuple(targets.shape)}")
    if not temperature > 0:
        raise ValueError(f"supcon_loss temperature must be > 0, got {temperature}")

    features, targets = gather_for_loss(features, targets.to(features.device), enabled=gather)
    z = F.normalize(features.float(), dim=1) if normalize else features.float()
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.t()) / temperature
    # log-softmax over A(i) = all samples but the anchor itself
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    log_prob = log_prob.masked_fill(self_mask, 0.0)  # avoid 0 * -inf below

    targets = targets.to(z.device)
    pos_mask = (targets.view(-1, 1) == targets.view(1, -1)) & ~self_mask
    num_pos = pos_mask.sum(dim=1)
    valid = num_pos > 0
    if not bool(valid.any()):
        return z.sum() * 0.0
    mean_log_prob_pos = (log_prob * pos_mask).sum(dim=1)[valid] / num_pos[valid]
    return -mean_log_prob_pos.mean()


class SupConLoss(nn.Module):
    """Module form of :func:`supcon_loss` (weighted by ``scale``).

    Reference:
        Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, Eq. 2.

    Args:
        temperature (float): tau > 0.
        scale (float): loss weight.

    Shape:
        - features: (B, D); targets: (B,); output: scalar.

    Raises:
        ValueError: ``temperature`` <= 0.
    """

    def __init__(self, temperature: float = 0.07, scale: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"SupConLoss temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.scale = float(scale)

    @classmethod
    def from_config(cls, cfg: CN) -> "SupConLoss":
        return cls(**supcon_kwargs_from_cfg(cfg))

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return supcon_loss(features, targets, self.temperature) * self.scale

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, scale={self.scale}"
