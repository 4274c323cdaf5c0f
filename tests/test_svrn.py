"""SVRN (Qian et al., IEEE T-ITS 2022) unit tests: masks (Algorithm 1), grid critic (Eq. 2-3)
against a naive 64-forward reference, reward loss (Eq. 4), VCC / ICC / DCC (Eq. 7-11) against
hand-computed values, config validation, 2/3/4-stage builds and the train / eval contracts."""

import math

import pytest
import torch
import torch.nn.functional as F
from fastreid.modeling import build_model
from helpers import make_cfg
from torch import nn

import fastreid_plugins  # noqa: F401
from fastreid_plugins.method import METHODS
from fastreid_plugins.reproduce import get_row
from fastreid_plugins.svrn import (
    ClassificationBlock,
    add_svrn_config,
    dcc_loss,
    grid_critic,
    icc_loss,
    num_suppressed,
    reward_loss,
    suppression_mask,
    upsample_mask,
    vcc_loss,
)
from fastreid_plugins.svrn.layers import SpatialInformationMining

DEMO = "configs/demo/svrn.yml"


def svrn_cfg(*opts):
    return make_cfg(DEMO, ["MODEL.HEADS.NUM_CLASSES", "4", *opts], [add_svrn_config])


# the model-level tests run at 64x64 (layer4 4x4) with a 4x4 grid to stay fast on 2 CPU cores;
# the 8x8 grid on 2x2 cells is covered by the critic / mask tests above and the overfit test
SMALL = ["INPUT.SIZE_TRAIN", "[64, 64]", "INPUT.SIZE_TEST", "[64, 64]", "MODEL.SVRN.GRID", "4"]


def small_cfg(*opts):
    return svrn_cfg(*SMALL, *opts)


def batch(n_ids=2, k=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n_ids * k, 3, size, size, generator=g) * 255
    return {"images": images, "targets": torch.arange(n_ids).repeat_interleave(k)}


# --------------------------------------------------------------------------------------------
# Algorithm 1: exactly n cells suppressed
# --------------------------------------------------------------------------------------------
def test_num_suppressed_floor_and_round():
    assert num_suppressed(0.2, 64) == 12          # floor(12.8)
    assert num_suppressed(0.2, 64, "round") == 13
    assert num_suppressed(0.1, 64) == 6           # floor(6.4), despite 0.1 * 64 = 6.4000000001
    assert num_suppressed(0.1, 64, "round") == 6
    assert num_suppressed(0.25, 64) == 16
    assert num_suppressed(0.0, 64) == 0


def test_mask_suppresses_top_n_and_exactly_n_under_ties():
    # image 0: strictly ordered scores -> the 3 largest cells; image 1: all equal -> the first
    # 3 cells in row-major order; image 2: a tie straddling the cut (two 5s, n = 3 takes 9, 5, 5
    # ... and of the three 3s none)
    s = torch.zeros(3, 2, 2)
    s[0] = torch.tensor([[0.1, 0.9], [0.5, 0.7]])
    s[1] = 1.0
    s[2] = torch.tensor([[5.0, 9.0], [5.0, 5.0]])
    m = suppression_mask(s, 3)
    assert m[0].tolist() == [[1, 0], [0, 0]]
    assert m[1].tolist() == [[0, 0], [0, 1]]
    assert m[2].tolist() == [[0, 0], [0, 1]]        # the last tied 5 (flat index 3) survives
    assert (m.flatten(1) == 0).sum(1).tolist() == [3, 3, 3]
    # 8x8, all tied: exactly n = 12 suppressed
    m = suppression_mask(torch.zeros(4, 8, 8), 12)
    assert (m.flatten(1) == 0).sum(1).tolist() == [12] * 4
    assert m.flatten(1)[:, :12].sum() == 0 and m.flatten(1)[:, 12:].min() == 1
    assert suppression_mask(torch.randn(2, 8, 8), 0).min() == 1


def test_mask_among_available_cells_hand_computed():
    """After Eq. 5: a cell chosen by an earlier stage is not chosen again: the top-n among the
    still available cells (the unavailable ones stay 1 in M_t; the caller multiplies)."""
    s = torch.tensor([[[9.0, 8.0, 7.0], [6.0, 5.0, 4.0], [3.0, 2.0, 1.0]]])
    avail = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0]]])
    m = suppression_mask(s, 2, available=avail)
    assert m.tolist() == [[[1, 1, 0], [1, 0, 1], [1, 1, 1]]]        # 7 and 5, not 9 / 8 / 6
    assert suppression_mask(s, 2).tolist() == [[[0, 0, 1], [1, 1, 1], [1, 1, 1]]]
    # ties among the available cells: lower flat index first, as without ``available``
    m = suppression_mask(torch.zeros(1, 3, 3), 2, available=avail)
    assert m.tolist() == [[[1, 1, 0], [1, 0, 1], [1, 1, 1]]]
    with pytest.raises(ValueError, match="available"):
        suppression_mask(s, 2, available=avail[0])


def test_mask_is_detached_and_upsampled_by_cells():
    s = torch.randn(2, 8, 8, requires_grad=True)
    m = suppression_mask(s, 6)
    assert not m.requires_grad
    up = upsample_mask(m, (16, 16))
    assert up.shape == (2, 1, 16, 16)
    assert torch.equal(up[:, 0, ::2, ::2], m) and torch.equal(up[:, 0, 1::2, 1::2], m)
    with pytest.raises(ValueError, match="MODEL.SVRN.GRID"):
        upsample_mask(m, (12, 12))


# --------------------------------------------------------------------------------------------
# Grid critic (Eq. 2-3) == naive 64-forward reference
# --------------------------------------------------------------------------------------------
def naive_critic(block, x, targets, grid, stats=None):
    """One masked forward per cell, then per-image min-max: the definition of Eq. 2-3."""
    b, _, h, w = x.shape
    ch, cw = h // grid, w // grid
    ce = torch.zeros(b, grid, grid, dtype=torch.float64)
    for i in range(grid):
        for j in range(grid):
            xm = x.clone()
            xm[:, :, i * ch:(i + 1) * ch, j * cw:(j + 1) * cw] = 0
            logits = block(xm)["logits"] if stats is None else block(xm, stats)["logits"]
            for k in range(b):
                ce[k, i, j] = -torch.log_softmax(logits[k].double(), 0)[targets[k]]
    r = torch.zeros_like(ce)
    for k in range(b):
        lo, hi = ce[k].min(), ce[k].max()
        r[k] = (ce[k] - lo) / (hi - lo)
    return r, ce


@pytest.mark.parametrize("mode", ["decomposed", "batched"])
def test_critic_equals_naive_reference_eval_mode(mode):
    torch.manual_seed(0)
    block = ClassificationBlock(8, 6, 5).double()
    with torch.no_grad():  # non-trivial running statistics
        block.reduce_bn.running_mean.uniform_(-0.5, 0.5)
        block.reduce_bn.running_var.uniform_(0.5, 2)
        block.reduce_bn.bias.uniform_(-0.5, 0.5)
        block.neck.running_mean.uniform_(-0.2, 0.2)
    block.eval()
    x = torch.randn(3, 8, 16, 16, dtype=torch.float64).relu()   # 16x16 map: 2x2 cells
    targets = torch.tensor([0, 3, 4])
    r, c = grid_critic(block, x, targets, grid=8, mode=mode)
    r_ref, c_ref = naive_critic(block, x, targets, 8)
    assert r.shape == c.shape == (3, 8, 8)
    torch.testing.assert_close(c.double(), c_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(r.double(), r_ref, rtol=1e-5, atol=1e-5)
    assert r.amin(dim=(1, 2)).tolist() == [0.0] * 3
    assert r.amax(dim=(1, 2)).tolist() == pytest.approx([1.0] * 3)


@pytest.mark.parametrize("mode", ["decomposed", "batched"])
def test_critic_training_mode_uses_unmasked_batch_stats_and_no_grad(mode):
    torch.manual_seed(1)
    block = ClassificationBlock(8, 6, 5).double().train()
    x = torch.randn(4, 8, 16, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 1])
    out = block(x)                      # the stage forward: batch statistics
    running = block.reduce_bn.running_mean.clone()
    r, c = grid_critic(block, x.detach(), targets, 8, stats=out["stats"],
                       reduced=out["reduced"].detach(), mode=mode)
    assert not r.requires_grad and not c.requires_grad
    assert torch.equal(block.reduce_bn.running_mean, running)   # critic updates no statistic
    _, c_ref = naive_critic(block, x.detach(), targets, 8, stats=out["stats"])
    torch.testing.assert_close(c.double(), c_ref, rtol=1e-6, atol=1e-6)
    # stats=None computes the same batch statistics itself, still without updating them
    _, c2 = grid_critic(block, x.detach(), targets, 8, mode=mode)
    torch.testing.assert_close(c2, c, rtol=1e-6, atol=1e-6)
    assert torch.equal(block.reduce_bn.running_mean, running)


def test_critic_rejects_map_not_divisible_by_grid():
    block = ClassificationBlock(4, 4, 3).eval()
    with pytest.raises(ValueError, match="divisible by MODEL.SVRN.GRID=8"):
        grid_critic(block, torch.randn(1, 4, 12, 12), torch.tensor([0]), grid=8)


def test_critic_scores_a_planted_salient_cell_highest():
    """A cell holding the only identity evidence gets R_score 1 (masking it hurts most)."""
    block = ClassificationBlock(2, 2, 2).double().eval()
    with torch.no_grad():
        block.reduce_conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        block.classifier.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
    x = torch.zeros(1, 2, 8, 8, dtype=torch.float64)
    x[0, 0, 5, 2] = 50.0            # evidence for class 0 at cell (5, 2)
    x[0, 0, 1, 1] = 5.0             # weaker evidence at cell (1, 1)
    r, _ = grid_critic(block, x, torch.tensor([0]), grid=8)
    assert r[0, 5, 2] == 1.0 and r[0, 1, 1] > 0 and r[0, 1, 1] < 1
    assert torch.argmax(r.flatten()) == 5 * 8 + 2


# --------------------------------------------------------------------------------------------
# Losses: hand-computed values
# --------------------------------------------------------------------------------------------
def test_reward_loss_hand_computed():
    s = torch.tensor([[[0.5, 0.0], [1.0, 0.25]]], requires_grad=True)
    r = torch.tensor([[[1.0, 0.0], [0.0, 0.25]]])
    loss = reward_loss(s, r)
    assert loss.item() == pytest.approx((0.25 + 0 + 1 + 0) / 4)
    loss.backward()
    # d/ds mean((r - s)^2) = 2 (s - r) / 4
    assert s.grad.flatten().tolist() == pytest.approx([-0.25, 0.0, 0.5, 0.0])


# T = 2 stages, B = 3 images (vehicle IDs 0, 0, 1), 1-D unified features (distances = |a - b|)
#   pooled order: (s0,i0)=0.0 (s0,i1)=3.0 (s0,i2)=1.0 (s1,i0)=0.5 (s1,i1)=2.0 (s1,i2)=4.0
FEATS = torch.tensor([[[0.0], [3.0], [1.0]], [[0.5], [2.0], [4.0]]], dtype=torch.float64)
IDS = torch.tensor([0, 0, 1])


def test_vcc_hand_computed():
    # anchor: farthest same-ID (any image, any stage) / closest other-ID, margin 0.3
    #   (s0,i0): pos 3.0 (s0,i1) neg 1.0 -> 2.3     (s0,i1): pos 3.0 neg 1.0 -> 2.3
    #   (s0,i2): pos 3.0 neg 0.5 -> 2.8             (s1,i0): pos 2.5 neg 0.5 -> 2.3
    #   (s1,i1): pos 2.0 neg 1.0 -> 1.3             (s1,i2): pos 3.0 neg 1.0 -> 2.3
    loss = vcc_loss(FEATS, IDS, margin=0.3)
    assert loss.item() == pytest.approx((2.3 + 2.3 + 2.8 + 2.3 + 1.3 + 2.3) / 6, abs=1e-6)


def test_icc_hand_computed_and_positive_differs_from_vcc():
    # anchor: farthest feature of the SAME IMAGE at the other stage / closest other image, 0.15
    #   (s0,i0): pos 0.5 (s1,i0) -- VCC's positive was (s0,i1) at 3.0 -- neg 1.0 -> 0
    #   (s0,i1): pos 1.0 neg 1.0 -> 0.15            (s0,i2): pos 3.0 neg 0.5 -> 2.65
    #   (s1,i0): pos 0.5 neg 0.5 -> 0.15            (s1,i1): pos 1.0 neg 1.0 -> 0.15
    #   (s1,i2): pos 3.0 neg 1.0 -> 2.15
    loss = icc_loss(FEATS, margin=0.15)
    assert loss.item() == pytest.approx((0 + 0.15 + 2.65 + 0.15 + 0.15 + 2.15) / 6, abs=1e-6)
    # a batch of one image has no negative for any anchor: no valid anchor, loss 0
    assert icc_loss(FEATS[:, :1].clone(), margin=0.15).item() == 0.0


def test_icc_ignores_vehicle_id_and_vcc_ignores_image():
    # same features, different ID labels: ICC unchanged, VCC changes
    ids2 = torch.tensor([0, 1, 1])
    assert vcc_loss(FEATS, ids2, 0.3).item() != pytest.approx(vcc_loss(FEATS, IDS, 0.3).item())
    g = FEATS.clone().requires_grad_(True)
    icc_loss(g, 0.15).backward()
    assert torch.isfinite(g.grad).all()


def test_dcc_hand_computed_with_l2_normalised_rows():
    # image 0: rows (3, 4, 0) and (1, 0, 0) -> unit rows, cosine 0.6 -> ||[[0,.6],[.6,0]]||_F
    # image 1: rows (1, 0, 0) and (0, 2, 0) -> orthogonal -> 0
    g = torch.tensor([[[3.0, 4.0, 0.0], [1.0, 0.0, 0.0]],
                      [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]], dtype=torch.float64)  # (T, B, L)
    d = dcc_loss(g)
    assert d.shape == (2,)
    assert d[0].item() == pytest.approx(math.sqrt(2 * 0.6 ** 2), abs=1e-6)
    assert d[1].item() == pytest.approx(0.0, abs=1e-5)
    # T = 3: rows e1, (e1 + e2)/sqrt2 * 7, 5 e3 -> cosines 1/sqrt2, 0, 0 -> sqrt(2 * 1/2) = 1
    g3 = torch.tensor([[[1.0, 0, 0]], [[7.0, 7.0, 0]], [[0, 0, 5.0]]], dtype=torch.float64)
    assert dcc_loss(g3).item() == pytest.approx(1.0, abs=1e-6)
    # scale invariance of the normalised rows
    assert dcc_loss(g3 * 10).item() == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------------------------
# SIM variants
# --------------------------------------------------------------------------------------------
def test_sim_variants():
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(SpatialInformationMining("none")(x), x)
    sim = SpatialInformationMining("spatial", 4, 3).eval()
    a = sim.attention(x)
    assert a.shape == (2, 1, 4, 4) and a.min() > 0 and a.max() < 1
    torch.testing.assert_close(sim(x), x * a)
    sim.name = "residual"
    torch.testing.assert_close(sim(x), x + x * a)


# --------------------------------------------------------------------------------------------
# Config validation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opts,key", [
    (["MODEL.SVRN.ALPHAS", "[1.0, 0.1]"], "MODEL.SVRN.ALPHAS"),
    (["MODEL.SVRN.ALPHAS", "[0.2, -0.1]"], "MODEL.SVRN.ALPHAS"),
    (["MODEL.SVRN.START_BLOCKS", "[4, 3]"], "MODEL.SVRN.START_BLOCKS"),
    (["MODEL.SVRN.START_BLOCKS", "[3, 3]"], "MODEL.SVRN.START_BLOCKS"),
    (["MODEL.SVRN.START_BLOCKS", "[3, 5]"], "MODEL.SVRN.START_BLOCKS"),
    (["MODEL.SVRN.NUM_STAGES", "4", "MODEL.SVRN.START_BLOCKS", "[2, 3, 4]"], "MODEL.SVRN.ALPHAS"),
    (["MODEL.SVRN.NUM_STAGES", "2", "MODEL.SVRN.ALPHAS", "[0.2]"], "MODEL.SVRN.START_BLOCKS"),
    (["MODEL.SVRN.SIM.NAME", "cbam2"], "MODEL.SVRN.SIM.NAME"),
    (["MODEL.SVRN.CRITIC.MODE", "loop"], "MODEL.SVRN.CRITIC.MODE"),
    (["MODEL.SVRN.NUM_STAGES", "1", "MODEL.SVRN.START_BLOCKS", "[]", "MODEL.SVRN.ALPHAS", "[]"],
     "MODEL.SVRN.CROSS.ICC.ENABLED"),
    # nothing would train the ranking layers (and DDP stops on parameters without a gradient)
    (["MODEL.SVRN.REWARD.ENABLED", "False"], "MODEL.SVRN.REWARD.ENABLED"),
    # accumulated suppression must leave a cell: 38 + 28 cells of 64
    (["MODEL.SVRN.ALPHAS", "[0.6, 0.45]"], "MODEL.SVRN.ALPHAS"),
    (["MODEL.SVRN.EVAL_FEAT", "unified", "MODEL.SVRN.CROSS.VCC.ENABLED", "False",
      "MODEL.SVRN.CROSS.ICC.ENABLED", "False", "MODEL.SVRN.CROSS.DCC.ENABLED", "False"],
     "MODEL.SVRN.EVAL_FEAT"),
    (["MODEL.SVRN.EVAL_FEAT", "sum"], "MODEL.SVRN.EVAL_FEAT"),
    (["MODEL.SVRN.ACCUMULATE_MASKS", "1"], "MODEL.SVRN.ACCUMULATE_MASKS"),
])
def test_bad_config_is_a_clear_value_error(opts, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_model(svrn_cfg(*opts))


def test_out_of_order_message_says_so():
    with pytest.raises(ValueError, match="out of order"):
        build_model(svrn_cfg("MODEL.SVRN.START_BLOCKS", "[4, 3]"))


# --------------------------------------------------------------------------------------------
# Builds and contracts
# --------------------------------------------------------------------------------------------
STAGE_OPTS = {
    2: ["MODEL.SVRN.NUM_STAGES", "2", "MODEL.SVRN.START_BLOCKS", "[3]",
        "MODEL.SVRN.ALPHAS", "[0.2]"],
    3: [],
    4: ["MODEL.SVRN.NUM_STAGES", "4", "MODEL.SVRN.START_BLOCKS", "[2, 3, 4]",
        "MODEL.SVRN.ALPHAS", "[0.2, 0.1, 0.1]"],
}
BRANCH_LAYERS = {2: [["layer3", "layer4"]], 3: [["layer3", "layer4"], ["layer4"]],
                 4: [["layer2", "layer3", "layer4"], ["layer3", "layer4"], ["layer4"]]}


@pytest.mark.parametrize("T", [2, 3, 4])
def test_stage_builds_and_contracts(T):
    torch.manual_seed(0)
    model = build_model(small_cfg(*STAGE_OPTS[T]))
    assert [list(b.keys()) for b in model.branches] == BRANCH_LAYERS[T]
    assert len(model.heads) == T and len(model.rankers) == T - 1
    # duplicated blocks: same initial weights as the backbone's, separate parameters
    for branch in model.branches:
        for name, layer in branch.items():
            src = getattr(model.backbone, name)
            for (k, p), (_, q) in zip(layer.named_parameters(), src.named_parameters()):
                assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), (name, k)
    # training: every loss a finite scalar, and they back-propagate
    model.train()
    data = batch()
    losses = model(data)
    assert set(losses) == {"loss_cls", "loss_triplet", "loss_vcc", "loss_icc", "loss_dcc",
                           "loss_reward"}
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), k
    sum(losses.values()).backward()
    # the last stage's layer4 copy gets gradients
    assert model.branches[-1]["layer4"][0].conv1.weight.grad.abs().sum() > 0
    # per-stage alphas: exactly floor(alpha * 64) suppressed cells in each stage's mask
    model.eval()
    with torch.no_grad():
        outs = model.stages(model.preprocess_image(data))
    for t, o in enumerate(outs[:-1]):
        zeros = (o["mask"].flatten(1) == 0).sum(1)
        assert zeros.tolist() == [num_suppressed(model.alphas[t], 16)] * 4
    # eval: (B, D) = sum of the stage GAP features, accepts a bare tensor, input untouched
    images = data["images"].clone()
    with torch.no_grad():
        feat = model(images)
        feat_dict = model({"images": images})
    assert feat.shape == (4, 256)
    assert torch.equal(images, data["images"])
    torch.testing.assert_close(feat, torch.stack([o["feat"] for o in outs]).sum(0))
    torch.testing.assert_close(feat, feat_dict)


def test_stage_input_is_masked_block_output():
    """Eq. 5: stage 2's copy of layer3 receives stage 1's layer2 output x Up(M_1)."""
    torch.manual_seed(0)
    model = build_model(svrn_cfg()).eval()
    outs, seen = _stage_inputs(model, batch(size=128)["images"])   # hooks: o1, in2, o2, in3
    m1 = outs[0]["mask"]
    assert seen["o1"].shape[-1] == 16                       # 128 px input: layer2 is 16x16
    expected = seen["o1"] * m1.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, None]
    torch.testing.assert_close(seen["in2"], expected)
    assert (seen["in2"][:, :, ::2, ::2].abs().sum(1) == 0).sum() >= 12 * 4
    # stage 3 branches off stage 2's own layer3 copy (8x8 map: one location per cell), masked by
    # the union of M_1 and M_2 (suppressed regions accumulate, after Eq. 5)
    assert seen["o2"].shape[-1] == 8
    union = outs[0]["mask"] * outs[1]["mask"]
    torch.testing.assert_close(outs[1]["applied"], union)
    torch.testing.assert_close(seen["in3"], seen["o2"] * union[:, None])


def test_reward_gradient_reaches_only_the_ranking_layer_and_masks_are_detached():
    torch.manual_seed(0)
    model = build_model(small_cfg()).train()
    out = model(batch())
    out["loss_reward"].backward()
    assert model.rankers[0].conv.weight.grad.abs().sum() > 0
    assert model.backbone.conv1.weight.grad is None or \
        model.backbone.conv1.weight.grad.abs().sum() == 0
    assert model.heads[0].classifier.weight.grad is None or \
        model.heads[0].classifier.weight.grad.abs().sum() == 0


def test_ablation_switches_drop_loss_terms():
    torch.manual_seed(0)
    model = build_model(small_cfg("MODEL.SVRN.CROSS.VCC.ENABLED", "False",
                                 "MODEL.SVRN.CROSS.DCC.ENABLED", "False")).train()
    assert set(model(batch())) == {"loss_cls", "loss_triplet", "loss_icc", "loss_reward"}
    # random cells: no ranking layer, no critic, no reward
    rnd = build_model(small_cfg("MODEL.SVRN.MASK_MODE", "random",
                                "MODEL.SVRN.REWARD.ENABLED", "False")).train()
    assert len(rnd.rankers) == 0 and not rnd.navigated
    assert set(rnd(batch())) == {"loss_cls", "loss_triplet", "loss_vcc", "loss_icc", "loss_dcc"}
    base = build_model(small_cfg("MODEL.SVRN.NUM_STAGES", "1", "MODEL.SVRN.START_BLOCKS", "[]",
                                "MODEL.SVRN.ALPHAS", "[]", "MODEL.SVRN.CROSS.ICC.ENABLED", "False",
                                "MODEL.SVRN.CROSS.DCC.ENABLED", "False")).train()
    assert len(base.branches) == 0
    assert set(base(batch())) == {"loss_cls", "loss_triplet", "loss_vcc"}


def test_feature_map_not_divisible_by_grid_is_a_clear_error():
    model = build_model(svrn_cfg()).eval()
    with pytest.raises(ValueError, match="MODEL.SVRN.GRID"), torch.no_grad():
        model(torch.rand(2, 3, 48, 48) * 255)    # layer4 3x3


# --------------------------------------------------------------------------------------------
# Paper configs
# --------------------------------------------------------------------------------------------
PAPER_CONFIGS = {
    "configs/veri/svrn.yml": ("VeRi", "VeRi"),
    "configs/vehicleid/svrn_small.yml": ("VehicleID", "SmallVehicleID"),
    "configs/vehicleid/svrn_medium.yml": ("VehicleID", "MediumVehicleID"),
    "configs/vehicleid/svrn_large.yml": ("VehicleID", "LargeVehicleID"),
    "configs/veriwild/svrn_small.yml": ("VeRiWild", "SmallVeRiWild"),
    "configs/veriwild/svrn_medium.yml": ("VeRiWild", "MediumVeRiWild"),
    "configs/veriwild/svrn_large.yml": ("VeRiWild", "LargeVeRiWild"),
}


@pytest.mark.parametrize("path", sorted(PAPER_CONFIGS))
def test_paper_config_values(path):
    """Sec. IV-B settings: ResNet-50, 256x256, last stride 1, REA + flip, Adam 1e-4, weight decay
    1e-4, x0.1 after epochs 40 and 70, T = 3, alpha = (0.2, 0.1), beta_V/I/T = 0.3/0.15/0.3."""
    cfg = make_cfg(path, [], [add_svrn_config])
    train_set, test_set = PAPER_CONFIGS[path]
    assert (train_set,) == cfg.DATASETS.NAMES and (test_set,) == cfg.DATASETS.TESTS
    assert cfg.MODEL.META_ARCHITECTURE == "SVRN"
    bb = cfg.MODEL.BACKBONE
    assert (bb.DEPTH, bb.LAST_STRIDE, bb.PRETRAIN) == ("50x", 1, True)
    assert list(cfg.INPUT.SIZE_TRAIN) == list(cfg.INPUT.SIZE_TEST) == [256, 256]
    assert cfg.INPUT.REA.ENABLED and cfg.INPUT.FLIP.ENABLED
    s = cfg.SOLVER
    assert (s.OPT, s.BASE_LR, s.WEIGHT_DECAY, list(s.STEPS), s.GAMMA) == \
        ("Adam", 1e-4, 1e-4, [40, 70], 0.1)
    # batch 32: the critic's grids are "R^{32 x 2048 x 2 x 2}" (Sec. III-A)
    assert s.MAX_EPOCH > 70 and s.IMS_PER_BATCH == 32 and cfg.DATALOADER.NUM_INSTANCE == 4
    C = cfg.MODEL.SVRN
    assert (C.NUM_STAGES, list(C.START_BLOCKS), list(C.ALPHAS), C.GRID) == \
        (3, [3, 4], [0.2, 0.1], 8)
    assert (C.CROSS.VCC.MARGIN, C.CROSS.ICC.MARGIN, cfg.MODEL.LOSSES.TRI.MARGIN) == (0.3, 0.15, 0.3)
    # Eq. 13: one-hot labels; after Eq. 5: accumulated suppression; Sec. III-C: sum of F_t
    assert cfg.MODEL.LOSSES.CE.EPSILON == 0.0
    assert C.ACCUMULATE_MASKS is True and C.EVAL_FEAT == "gap" and C.MASK_MODE == "salience"


def test_paper_model_geometry_on_meta_device():
    """ResNet-50 at 256x256, last stride 1: three 2048x16x16 stage maps, 8x8 masks (2x2 cells),
    n = 12 and 6 suppressed cells, (B, 512) inference feature; built on the meta device."""
    cfg = make_cfg("configs/veri/svrn.yml", ["MODEL.BACKBONE.PRETRAIN", "False",
                                             "MODEL.HEADS.NUM_CLASSES", "576"], [add_svrn_config])
    model = build_model(cfg).to("meta")
    assert [list(b.keys()) for b in model.branches] == [["layer3", "layer4"], ["layer4"]]
    assert model.n_cells == [12, 6]
    model.eval()
    with torch.no_grad():
        outs = model.stages(torch.empty(2, 3, 256, 256, device="meta"))
        feat = model(torch.empty(2, 3, 256, 256, device="meta"))
    assert [tuple(o["x"].shape) for o in outs] == [(2, 2048, 16, 16)] * 3
    assert [tuple(o["mask"].shape) for o in outs[:-1]] == [(2, 8, 8)] * 2
    assert tuple(feat.shape) == (2, 512)


def test_random_mask_ablation_suppresses_n_random_cells_in_training_only():
    torch.manual_seed(0)
    model = build_model(small_cfg("MODEL.SVRN.MASK_MODE", "random",
                                  "MODEL.SVRN.REWARD.ENABLED", "False"))
    assert len(model.rankers) == 0
    images = model.preprocess_image(batch()["images"])
    model.train()
    with torch.no_grad():
        outs = model.stages(images)
    assert [(o["mask"].flatten(1) == 0).sum(1).tolist() for o in outs[:-1]] == [[3] * 4, [1] * 4]
    # accumulated: the random cells of stage 2 are new ones
    assert ((outs[0]["mask"] == 0) & (outs[1]["mask"] == 0)).sum() == 0
    model.eval()
    with torch.no_grad():
        outs = model.stages(images)
    assert all(o["mask"].min() == 1 for o in outs[:-1])


# --------------------------------------------------------------------------------------------
# Accumulated suppression (after Eq. 5): disjoint masks, union applied
# --------------------------------------------------------------------------------------------
class FixedScores(nn.Module):
    """A ranking layer that returns the same (G, G) score map for every image."""

    def __init__(self, scores):
        super().__init__()
        self.register_buffer("scores", scores)

    def forward(self, x):
        return self.scores.expand(x.shape[0], *self.scores.shape)


def _ranked_cells(seed=3):
    """An 8x8 score map whose cell of rank r (0 = most salient) is ``order[r]``."""
    order = torch.randperm(64, generator=torch.Generator().manual_seed(seed))
    scores = torch.empty(64)
    scores[order] = -torch.arange(64, dtype=torch.float32)
    return order, scores.view(8, 8)


def _stage_inputs(model, images):
    seen = {}
    model.backbone.layer2.register_forward_hook(lambda m, i, o: seen.__setitem__("o1", o))
    model.branches[0]["layer3"].register_forward_pre_hook(
        lambda m, i: seen.__setitem__("in2", i[0]))
    model.branches[0]["layer3"].register_forward_hook(lambda m, i, o: seen.__setitem__("o2", o))
    model.branches[1]["layer4"].register_forward_pre_hook(
        lambda m, i: seen.__setitem__("in3", i[0]))
    with torch.no_grad():
        outs = model.stages(model.preprocess_image(images))
    return outs, seen


def zeros_of(mask):
    """Flat indices of the zero cells of a (G, G) mask, as a set."""
    return set((mask.flatten() == 0).nonzero().flatten().tolist())


@pytest.mark.parametrize("accumulate", [True, False])
def test_suppressed_regions_accumulate_over_stages(accumulate):
    """With the same salience map in both stages, stage 2 takes the next 6 cells after stage 1's
    12 (disjoint), and stage 3's input is masked by the union of the 18 cells. The switch
    ``ACCUMULATE_MASKS False`` re-picks stage 1's top 6 and masks stage 3 by M_2 alone."""
    torch.manual_seed(0)
    model = build_model(svrn_cfg("MODEL.SVRN.ACCUMULATE_MASKS", str(accumulate))).eval()
    order, scores = _ranked_cells()
    model.rankers[0], model.rankers[1] = FixedScores(scores), FixedScores(scores)
    outs, seen = _stage_inputs(model, batch(size=128)["images"])
    top = order.tolist()
    m1, m2 = outs[0]["mask"], outs[1]["mask"]
    for b in range(m1.shape[0]):
        assert zeros_of(m1[b]) == set(top[:12])
        assert zeros_of(m2[b]) == (set(top[12:18]) if accumulate else set(top[:6]))
    if accumulate:
        assert ((m1 == 0) & (m2 == 0)).sum() == 0                      # disjoint
        applied = m1 * m2                                              # the union, 18 cells
        assert (applied.flatten(1) == 0).sum(1).tolist() == [18] * 4
    else:
        applied = m2
    torch.testing.assert_close(outs[1]["applied"], applied)
    # Eq. 5 with the union: stage 2 sees O_1 x Up(M_1), stage 3 O_2 x Up(union) (8x8: 1 px/cell)
    torch.testing.assert_close(seen["in2"], seen["o1"] * upsample_mask(m1, seen["o1"].shape[-2:]))
    torch.testing.assert_close(seen["in3"], seen["o2"] * applied[:, None])
    assert (seen["in3"].abs().sum(1).flatten(1) == 0).sum(1).min() >= (18 if accumulate else 6)


def test_accumulated_masks_are_disjoint_with_trained_style_scores():
    """Real ranking layers (random weights), 4 stages: the masks of all stages are disjoint and
    each has exactly n_t zeros; ``applied`` is their running product."""
    torch.manual_seed(0)
    model = build_model(svrn_cfg(*STAGE_OPTS[4])).eval()
    with torch.no_grad():
        outs = model.stages(model.preprocess_image(batch(size=128)["images"]))
    masks = torch.stack([o["mask"] for o in outs[:-1]])                # (T-1, B, 8, 8)
    assert (masks == 0).sum(0).max() == 1                              # no cell chosen twice
    assert (masks == 0).flatten(2).sum(2).tolist() == [[n] * 4 for n in model.n_cells]
    torch.testing.assert_close(outs[-2]["applied"], masks.prod(0))


# --------------------------------------------------------------------------------------------
# Test descriptors (Sec. III-C): one checkpoint, every option
# --------------------------------------------------------------------------------------------
def test_descriptor_options_from_one_checkpoint(tmp_path):
    torch.manual_seed(0)
    trained = build_model(small_cfg()).train()
    trained(batch())                       # move the BN running statistics off their init
    state = trained.state_dict()
    images = batch(seed=1)["images"]
    trained.eval()
    with torch.no_grad():
        outs = trained.stages(trained.preprocess_image(images))
        f = [o["feat"] for o in outs]
        expected = {
            "gap": f[0] + f[1] + f[2],
            "gap_l2": sum(x / x.norm(dim=1, keepdim=True) for x in f),
            "unified": sum(trained.unified(x) for x in f),
            "bn": sum(o["bn_feat"] for o in outs),
        }
    feats = {}
    for name, ref in expected.items():
        model = build_model(small_cfg("MODEL.SVRN.EVAL_FEAT", name))
        model.load_state_dict(state, strict=True)           # the same checkpoint for every option
        with torch.no_grad():
            feats[name] = model.eval()(images.clone())
        torch.testing.assert_close(feats[name], ref)
    assert feats["gap"].shape == (4, 256) and feats["unified"].shape == (4, 128)
    # the normalised sum has norm <= T, and differs from the plain sum
    assert feats["gap_l2"].norm(dim=1).max() <= 3 + 1e-5
    assert not torch.allclose(F.normalize(feats["gap_l2"]), F.normalize(feats["gap"]))


def test_dcc_literal_eq11_hand_computed():
    # Eq. 11 as written (no row normalisation): rows (3, 4, 0) and (1, 0, 0)
    #   G G^T = [[25, 3], [3, 1]] -> G G^T - I = [[24, 3], [3, 0]] -> sqrt(576 + 9 + 9)
    g = torch.tensor([[[3.0, 4.0, 0.0]], [[1.0, 0.0, 0.0]]], dtype=torch.float64)
    assert dcc_loss(g, normalize=False).item() == pytest.approx(math.sqrt(594), rel=1e-6)
    assert dcc_loss(g).item() == pytest.approx(math.sqrt(2 * 0.6 ** 2), abs=1e-6)
    # orthonormal rows: 0 both ways
    e = torch.eye(3, dtype=torch.float64)[:, None]
    assert dcc_loss(e, normalize=False).item() == pytest.approx(0.0, abs=1e-5)


# --------------------------------------------------------------------------------------------
# The paper's ablations as data: every row builds, trains a step, and every parameter gets a
# gradient (what DDP needs: it stops on a parameter that takes no part in the loss)
# --------------------------------------------------------------------------------------------
def test_ablation_table_covers_every_row_of_tables_ii_to_vi():
    rows = {}
    for r in METHODS["svrn"].rows:
        rows.setdefault(r.table, []).append(r.row)
    assert len(rows["II"]) == 3 and len(rows["III"]) == 4 and len(rows["IV"]) == 6
    assert len(rows["V"]) == 6 and len(rows["VI"]) == 6
    # the paper's default row of each table is the paper config itself
    paper = make_cfg("configs/veri/svrn.yml", [], [add_svrn_config])
    for key in ("II/scheme_b", "III/3_stages", "IV/scheme_e", "V/csc", "VI/csc_0.15"):
        assert make_cfg("configs/veri/svrn.yml", get_row(f"svrn/{key}").overrides,
                        [add_svrn_config]) == paper, key
    assert make_cfg("configs/veri/svrn.yml", get_row("svrn/V/no_csc").overrides,
                    [add_svrn_config]) != paper
    # Table IV's schemes: (stage 1, stage 2) suppression percentages
    cfg = make_cfg("configs/veri/svrn.yml", get_row("svrn/IV/scheme_a").overrides,
                   [add_svrn_config])
    assert list(cfg.MODEL.SVRN.ALPHAS) == [0.3, 0.3]
    with pytest.raises(KeyError, match="known"):
        get_row("svrn/II/scheme_z")


_UNIQUE_ROWS = {}
for _row in METHODS["svrn"].rows:
    _UNIQUE_ROWS.setdefault(_row.overrides, _row.key)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_UNIQUE_ROWS.values()))
def test_every_ablation_row_trains_a_step_with_a_gradient_for_every_parameter(name):
    """Each documented row (demo-sized: ResNet-18, 128 px, the paper's 8x8 grid) merges into the
    config, builds, and one training step gives finite losses and a gradient to every trainable
    parameter; the weights change after an optimizer step."""
    torch.manual_seed(0)
    model = build_model(svrn_cfg(*get_row(name).overrides)).train()
    losses = model(batch(size=128))
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    missing = [k for k, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: parameters without a gradient: {missing}"
    before = model.heads[-1].reduce_conv.weight.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(before, model.heads[-1].reduce_conv.weight)
