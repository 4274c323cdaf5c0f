"""SupCon (Khosla et al., NeurIPS 2020, Eq. 2): hand-computed values and a loop-based reference."""

import math

import pytest
import torch

import fastreid_plugins  # noqa: F401
from fastreid_plugins.config import get_cfg
from fastreid_plugins.losses.supcon import (
    SupConLoss,
    add_supcon_config,
    supcon_kwargs_from_cfg,
    supcon_loss,
)


def loop_supcon(features, targets, temperature):
    """Eq. 2 of Khosla et al. written out with Python loops over anchors, positives, others."""
    feats = [[float(v) for v in row] for row in features]
    feats = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in feats]
    labels = [int(t) for t in targets]
    n = len(feats)

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    per_anchor = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(dot(feats[i], feats[a]) / temperature) for a in range(n) if a != i)
        total = 0.0
        for p in positives:
            total += math.log(math.exp(dot(feats[i], feats[p]) / temperature) / denom)
        per_anchor.append(-total / len(positives))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


def test_supcon_hand_computed_two_positives_one_negative():
    # z0 = z1 = (1, 0) share an identity, z2 = (0, 1) is alone (no positive: skipped).
    # anchor 0: positive sim 1, negative sim 0 -> l_0 = -log(e^{1/t} / (e^{1/t} + e^0))
    feats = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])  # norms differ: normalised inside
    labels = torch.tensor([0, 0, 1])
    assert supcon_loss(feats, labels, temperature=1.0).item() == pytest.approx(
        math.log(1 + math.e) - 1, abs=1e-6)  # 0.3132617
    assert supcon_loss(feats, labels, temperature=0.5).item() == pytest.approx(
        math.log(1 + math.e ** 2) - 2, abs=1e-6)  # 0.1269280


def test_supcon_hand_computed_three_of_a_kind():
    # three identical unit vectors of one id and one orthogonal of another, tau = 1:
    # each of the 3 anchors: positives sim 1 (x2), denominator 2e + 1 -> l = log(2e + 1) - 1
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([5, 5, 5, 7])
    assert supcon_loss(feats, labels, 1.0).item() == pytest.approx(
        math.log(2 * math.e + 1) - 1, abs=1e-6)


@pytest.mark.parametrize("temperature", [0.07, 0.1, 0.5, 1.0])
def test_supcon_matches_loop_reference(temperature):
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(12, 6, generator=g)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4])  # id 3 has no positive
    ours = supcon_loss(feats, labels, temperature).item()
    assert ours == pytest.approx(loop_supcon(feats, labels, temperature), rel=1e-5, abs=1e-6)


def test_supcon_no_positive_is_zero_and_differentiable():
    feats = torch.randn(4, 3, requires_grad=True)
    loss = supcon_loss(feats, torch.arange(4), 0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert feats.grad is not None


def test_supcon_gradient_pulls_positives_together():
    feats = torch.tensor([[1.0, 0.2], [0.2, 1.0], [-1.0, 0.1], [0.1, -1.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    opt = torch.optim.SGD([feats], lr=0.5)
    before = supcon_loss(feats, labels, 0.5).item()
    for _ in range(20):
        opt.zero_grad()
        supcon_loss(feats, labels, 0.5).backward()
        opt.step()
    assert supcon_loss(feats, labels, 0.5).item() < before


def test_supcon_bad_input_errors():
    with pytest.raises(ValueError, match="temperature"):
        supcon_loss(torch.randn(4, 3), torch.zeros(4), 0.0)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        supcon_loss(torch.randn(4, 3, 2), torch.zeros(4), 0.1)
    with pytest.raises(ValueError, match="targets"):
        supcon_loss(torch.randn(4, 3), torch.zeros(5), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(temperature=-1)


def test_supcon_config_node():
    cfg = get_cfg(add_supcon_config)
    assert cfg.MODEL.LOSSES.SUPCON.TEMPERATURE == 0.07
    assert cfg.MODEL.LOSSES.SUPCON.SCALE == 1.0
    add_supcon_config(cfg)  # idempotent
    cfg.merge_from_list(["MODEL.LOSSES.SUPCON.TEMPERATURE", 0.2, "MODEL.LOSSES.SUPCON.SCALE", 0.5])
    assert supcon_kwargs_from_cfg(cfg) == {"temperature": 0.2, "scale": 0.5}
    module = SupConLoss.from_config(cfg)
    feats, labels = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    assert module(feats, labels).item() == pytest.approx(0.5 * loop_supcon(feats, labels, 0.2),
                                                         rel=1e-5)
    with pytest.raises(KeyError, match="MODEL.LOSSES.SUPCON"):
        supcon_kwargs_from_cfg(get_cfg())
    cfg.MODEL.LOSSES.SUPCON.TEMPERATURE = 0.0
    with pytest.raises(ValueError, match="TEMPERATURE"):
        supcon_kwargs_from_cfg(cfg)
