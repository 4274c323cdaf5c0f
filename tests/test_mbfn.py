"""MBFN (Rong et al., Sci. Rep. 11, 20210, 2021): contracts, the paper's split, part weighting
(literal and "rms"-normalised) on hand examples, per-branch split direction, the branch-global
("red dotted area") switch, loss terms vs FastReID's losses, every Table 2 / 3 / 4 row (the
registry's ``mbfn/<table>/<row>``), config validation, and overfitting the real VeRi-776 sample
with an ``--eval-only`` round trip."""

import os

import pytest
import torch
import torch.nn.functional as F
from fastreid.modeling.losses import cross_entropy_loss, triplet_loss
from fastreid.utils.events import EventStorage

import fastreid_plugins  # noqa: F401
from fastreid_plugins import engine
from fastreid_plugins.engine import PluginTrainer
from fastreid_plugins.mbfn import MBFN, add_mbfn_config, mbfn_part_weights
from fastreid_plugins.reproduce import get_row, get_table
from tests.helpers import evaluate, make_cfg, seed_everything, train

DEMO = "configs/demo/mbfn.yml"
# small and fast: 80x64 input -> 5x4 conv5 maps (R18, last stride 1): enough rows/columns for the
# Table 2 rows
TINY = ["MODEL.HEADS.NUM_CLASSES", "4", "INPUT.SIZE_TRAIN", "[80, 64]",
        "INPUT.SIZE_TEST", "[80, 64]",
        "MODEL.MBFN.BRANCH_GLOBAL.REDUCE_DIM", "32", "MODEL.MBFN.BRANCH_GLOBAL.EMBED_DIM", "64",
        "MODEL.MBFN.PART_DIM", "16"]
HW = (80, 64)

OFF_W = ["MODEL.MBFN.WEIGHTS.ENABLED", "False"]
TABLE2 = [r.key for r in get_table("mbfn", "table2-ours").rows]
TABLE3 = [r.key for r in get_table("mbfn", "table3-ours").rows]
TABLE4 = [r.key for r in get_table("mbfn", "table4").rows]


def tiny_model(*opts):
    cfg = make_cfg(DEMO, TINY + list(opts), [add_mbfn_config])
    torch.manual_seed(0)
    return PluginTrainer.build_model(cfg), cfg


def batch(n_ids=4, k=2, hw=HW, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.rand(n_ids * k, 3, *hw, generator=g) * 255,
            "targets": torch.arange(n_ids).repeat_interleave(k)}


def one_step(model, data):
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    with EventStorage(0):
        losses = model(data)
    opt.zero_grad()
    sum(losses.values()).backward()
    opt.step()
    change = max((p.detach() - before[k]).abs().max().item() for k, p in model.named_parameters()
                 if p.requires_grad)
    return losses, change


def test_registered_and_output_shapes_train_eval():
    model, cfg = tiny_model()
    assert isinstance(model, MBFN)
    data = batch()
    model.train()
    with EventStorage(0):
        losses = model(data)
    expected = (["loss_cls_global", "loss_triplet_global"]
                + [f"loss_{t}_local{k}_global" for k in (1, 2) for t in ("cls", "triplet")]
                + [f"loss_triplet_local{k}_parts" for k in (1, 2)]
                + [f"loss_cls_local1_part{i}" for i in range(2)]
                + [f"loss_cls_local2_part{i}" for i in range(3)])
    assert sorted(losses) == sorted(expected)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    model.eval()
    images = data["images"].clone()
    with torch.no_grad():
        feat, bare = model(data), model(images)
    # Global 512 + Local1 (64 + 2 x 16) + Local2 (64 + 3 x 16)
    assert feat.shape == (8, 512 + 96 + 112) == (8, model.feat_dim)
    assert torch.equal(feat, bare)
    assert torch.equal(images, data["images"])
    # the paper's split: every branch starts on the shared conv5 map (no stage of its own) ...
    assert all(not list(b.stage.parameters()) for _, b in model.branches())
    # ... the MGN-style switch gives each branch its own stage (no weight sharing)
    mgn, _ = tiny_model("MODEL.MBFN.SPLIT_AT", "layer3.1")
    ptrs = [{n: p.data_ptr() for n, p in b.stage.named_parameters()} for _, b in mgn.branches()]
    assert ptrs[0] and all(ptrs[0][n] != ptrs[1][n] != ptrs[2][n] for n in ptrs[0])


def test_part_weighting_hand_example():
    """Local Branch 2: top and bottom parts x alpha = 0.3, middle part x beta = 0.4 (Fig. 4), in the
    training triplet feature and in the test descriptor; CE sees the unweighted parts."""
    model, cfg = tiny_model()
    assert mbfn_part_weights(cfg) == [0.3, 0.4, 0.3]
    l2 = model.local2
    assert torch.allclose(l2.part_weights, torch.tensor([0.3, 0.4, 0.3]))
    assert model.local1.part_weights is None          # Local Branch 1 is not weighted
    data = batch()
    model.eval()
    with torch.no_grad():
        x = model.trunk(model.preprocess_image(data))
        # (B, C, 5, 4): 5 rows -> parts of 2, 2, 1 rows
        m = l2.feature_map(x)
        top, mid, bot = m[:, :, 0:2], m[:, :, 2:4], m[:, :, 4:5]
        h = [head(p) for head, p in zip(l2.part_heads, (top, mid, bot))]
        desc = model(data)
        tail = desc[:, -48:]                          # Local2's three 16-d parts come last
        assert torch.allclose(tail, torch.cat([0.3 * h[0], 0.4 * h[1], 0.3 * h[2]], 1), atol=1e-6)
    model.train()
    with EventStorage(0):
        out = model.branch_outputs(model.preprocess_image(data), data["targets"])["local2"]
    f = [p["features"] for p in out["parts"]]
    assert torch.allclose(out["part_feature"], torch.cat([0.3 * f[0], 0.4 * f[1], 0.3 * f[2]], 1))


def test_weights_apply_at_and_explicit_values():
    model, cfg = tiny_model("MODEL.MBFN.WEIGHTS.APPLY_AT", "train",
                            "MODEL.MBFN.WEIGHTS.VALUES", "[0.2, 0.5, 0.3]")
    assert mbfn_part_weights(cfg) == [0.2, 0.5, 0.3]
    model.eval()
    l2 = model.local2
    with torch.no_grad():
        x = model.trunk(model.preprocess_image(batch()))
        m = l2.feature_map(x)
        h = [head(p) for head, p in zip(l2.part_heads, (m[:, :, 0:2], m[:, :, 2:4], m[:, :, 4:5]))]
        # unweighted at test
        assert torch.allclose(model(batch())[:, -48:], torch.cat(h, 1), atol=1e-6)
    _, cfg_off = tiny_model(*OFF_W)
    assert mbfn_part_weights(cfg_off) is None


def test_loss_terms_equal_fastreid_losses_computed_independently():
    model, cfg = tiny_model()
    data = batch()
    t = data["targets"]
    model.train()
    with EventStorage(0):
        out = model.branch_outputs(model.preprocess_image(data), t)
        losses = model.losses(out, t)
        again = model(data)
    heads = [out["global"]["global"]] + [o for k in ("local1", "local2")
                                         for o in [out[k]["global"]] + out[k]["parts"]]
    assert len(heads) == 8
    ce = sum(F.cross_entropy(h["cls_outputs"], t) for h in heads)    # Eq. 1, eps = 0
    feats = [out["global"]["global"]["features"], out["local1"]["global"]["features"],
             out["local2"]["global"]["features"], out["local1"]["part_feature"],
             out["local2"]["part_feature"]]
    tri = sum(triplet_loss(f, t, 1.2, False, True) for f in feats)     # Eq. 2, margin 1.2
    assert torch.allclose(losses["loss_cls_local2_part1"],
                          cross_entropy_loss(out["local2"]["parts"][1]["cls_outputs"], t, 0.0))
    assert torch.allclose(losses["loss_triplet_local2_parts"],
                          0.1 * triplet_loss(feats[4], t, 1.2, False, True))
    assert torch.allclose(sum(losses.values()), ce + 0.1 * tri, atol=1e-5)  # Eq. 3, lambda = 0.1
    for k in losses:
        assert torch.allclose(losses[k], again[k], atol=1e-5)


# what each Table 4 row of the paper's text contains: (Global Branch, Local Branch 1,
# Local Branch 2, red dotted area = each local branch's own global feature, green dotted area =
# weighting, CAM)
TABLE4_CONTENT = {
    "baseline": (True, False, False, None, None, None),
    "a": (True, True, False, False, None, True),
    "b": (True, False, True, False, False, True),
    "c": (False, True, True, False, False, False),
    "d": (False, True, True, False, True, False),
    "e": (False, True, True, False, True, True),
    "f": (True, True, True, False, True, True),
    "g": (True, True, True, True, True, True),
}


def test_table4_has_the_papers_eight_rows():
    assert [r.rsplit("/", 1)[1] for r in TABLE4] == list(TABLE4_CONTENT)
    # each row id is the letter of the paper's label, "(a) Baseline+Local Branch1(...)+CAM"
    for key in TABLE4[1:]:
        assert get_row(key).label.startswith(f"({key[-1]}) "), key
    assert get_row("mbfn/table4/g").overrides == ()   # full model


@pytest.mark.slow
@pytest.mark.parametrize("row", TABLE4)
def test_table4_rows_build_and_train_one_step(row):
    model, _ = tiny_model(*get_row(row).overrides)
    losses, change = one_step(model, batch())
    assert all(torch.isfinite(v) for v in losses.values()) and change > 0
    glob, l1, l2, red, green, cam = TABLE4_CONTENT[row.rsplit("/", 1)[1]]
    assert (model.global_branch is not None, model.local1 is not None,
            model.local2 is not None) == (glob, l1, l2)
    for b in (model.local1, model.local2):
        if b is not None:
            assert (b.global_head is not None) == red
            assert (f"loss_cls_{'local1' if b is model.local1 else 'local2'}_global"
                    in losses) == red
            assert (not isinstance(b.cam, torch.nn.Identity)) == cam
    if model.local2 is not None:
        assert (model.local2.part_weights is not None) == green
    if model.global_branch is not None:
        assert isinstance(model.global_branch.cam, torch.nn.Identity)   # CAM: local branches only
    model.eval()
    with torch.no_grad():
        assert model(batch()["images"]).shape == (8, model.feat_dim)


@pytest.mark.slow
@pytest.mark.parametrize("row", TABLE2)
def test_table2_rows_build_and_train_one_step(row):
    model, cfg = tiny_model(*get_row(row).overrides)
    m = cfg.MODEL.MBFN
    assert (model.local1.num_parts, model.local2.num_parts) == \
        (m.LOCAL1.NUM_PARTS, m.LOCAL2.NUM_PARTS)
    assert (model.local1.direction, model.local2.direction) == \
        (m.LOCAL1.DIRECTION, m.LOCAL2.DIRECTION)
    losses, change = one_step(model, batch())
    assert len([k for k in losses if k.startswith("loss_cls_local2_part")]) == m.LOCAL2.NUM_PARTS
    assert all(torch.isfinite(v) for v in losses.values()) and change > 0


def test_each_local_branch_chooses_its_direction_and_part_count():
    """Local Branch 1: 2 horizontal stripes; Local Branch 2: 3 vertical columns (hand slices of the
    5x4 map: rows 0-2 / 3-4, columns 0-1 / 2 / 3)."""
    model, _ = tiny_model(*get_row("mbfn/table2-ours/h2-v3").overrides, *OFF_W)
    model.eval()
    with torch.no_grad():
        x = model.trunk(model.preprocess_image(batch()))
        m1, m2 = model.local1.feature_map(x), model.local2.feature_map(x)
        h1 = [model.local1.part_heads[0](m1[:, :, 0:3]), model.local1.part_heads[1](m1[:, :, 3:5])]
        h2 = [model.local2.part_heads[i](m2[..., a:b])
              for i, (a, b) in enumerate([(0, 2), (2, 3), (3, 4)])]
        d1, d2 = model.local1(x), model.local2(x)
    assert torch.allclose(d1[:, 64:], torch.cat(h1, 1), atol=1e-6)
    assert torch.allclose(d2[:, 64:], torch.cat(h2, 1), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("row", TABLE3)
def test_table3_rows_build_and_train_one_step(row):
    model, cfg = tiny_model(*get_row(row).overrides)
    a, b = cfg.MODEL.MBFN.WEIGHTS.ALPHA, cfg.MODEL.MBFN.WEIGHTS.BETA
    assert a < b                                   # the paper: alpha < beta
    assert torch.allclose(model.local2.part_weights, torch.tensor([a, b, a]))
    losses, change = one_step(model, batch())
    assert all(torch.isfinite(v) for v in losses.values()) and change > 0


def test_rms_normalised_weights_hand_example():
    """``WEIGHTS.NORMALIZE rms``: w / sqrt(mean(w^2)); [0.3, 0.4, 0.3] -> rms = sqrt(0.34 / 3)."""
    _, cfg = tiny_model("MODEL.MBFN.WEIGHTS.NORMALIZE", "rms")
    rms = (0.34 / 3) ** 0.5
    w = mbfn_part_weights(cfg)
    assert w == pytest.approx([0.3 / rms, 0.4 / rms, 0.3 / rms])
    assert w == pytest.approx([0.8911, 1.1882, 0.8911], abs=1e-4)
    # unweighted squared norm on average
    assert sum(v * v for v in w) == pytest.approx(3.0)
    assert w[1] / w[0] == pytest.approx(0.4 / 0.3)                # the paper's ratio beta : alpha
    _, lit = tiny_model()
    # the literal weights stay the default
    assert mbfn_part_weights(lit) == [0.3, 0.4, 0.3]


def test_branch_global_switch_removes_the_red_dotted_area():
    model, _ = tiny_model("MODEL.MBFN.BRANCH_GLOBAL.ENABLED", "False")
    for b in (model.local1, model.local2):
        assert b.global_head is None and isinstance(b.reduce, torch.nn.Identity)
    assert model.feat_dim == 512 + 2 * 16 + 3 * 16
    losses, change = one_step(model, batch())
    assert not any(k.endswith(("local1_global", "local2_global")) for k in losses) and change > 0


@pytest.mark.parametrize("opts,match", [
    (["MODEL.MBFN.USE_GLOBAL", "False", "MODEL.MBFN.USE_LOCAL1", "False",
      "MODEL.MBFN.USE_LOCAL2", "False"],
     "at least one branch"),
    (["MODEL.MBFN.LOCAL2.NUM_PARTS", "9"], r"MODEL.MBFN.LOCAL2.NUM_PARTS=9 must be an int in 1..8"),
    (["MODEL.MBFN.LOCAL1.NUM_PARTS", "0"], "MODEL.MBFN.LOCAL1.NUM_PARTS"),
    (["MODEL.MBFN.LOCAL2.DIRECTION", "diagonal"], "MODEL.MBFN.LOCAL2.DIRECTION"),
    (["MODEL.MBFN.WEIGHTS.NORMALIZE", "l1"], "MODEL.MBFN.WEIGHTS.NORMALIZE"),
    (["MODEL.MBFN.BRANCH_GLOBAL.ENABLED", "1"], "MODEL.MBFN.BRANCH_GLOBAL.ENABLED"),
    (["MODEL.MBFN.WEIGHTS.VALUES", "[0.5, 0.5]"], "MODEL.MBFN.WEIGHTS.VALUES has 2 weights"),
    (["MODEL.MBFN.WEIGHTS.ALPHA", "-0.3"], "MODEL.MBFN.WEIGHTS.ALPHA"),
    (["MODEL.MBFN.WEIGHTS.APPLY_AT", "never"], "MODEL.MBFN.WEIGHTS.APPLY_AT"),
    (["MODEL.MBFN.WEIGHTS.FUSION", "max"], "MODEL.MBFN.WEIGHTS.FUSION"),
    (["MODEL.MBFN.LOSS.LAMBDA", "-1.0"], "MODEL.MBFN.LOSS.LAMBDA"),
    (["MODEL.MBFN.SPLIT_AT", "layer1"], "MODEL.MBFN.SPLIT_AT"),
])
def test_invalid_config_values_name_the_key(opts, match):
    with pytest.raises(ValueError, match=match):
        tiny_model(*opts)


def test_more_parts_than_columns_is_a_clear_error():
    model, _ = tiny_model("MODEL.MBFN.LOCAL2.DIRECTION", "vertical",
                          "MODEL.MBFN.LOCAL2.NUM_PARTS", "5")
    model.eval()
    with pytest.raises(ValueError, match="4 columns .* into 5 vertical parts"):
        model(torch.rand(2, 3, *HW) * 255)


@pytest.mark.slow
def test_overfit_real_sample_and_eval_only_round_trip(veri_root, datasets_root, tmp_path):
    """Demo config (6 epochs) on the real 57-image VeRi-776 sample: loss falls, mAP from its
    untrained value to >= 90%; `--eval-only` on model_final.pth reproduces the metrics."""
    datasets_root(veri_root)
    out = str(tmp_path / "mbfn")
    os.makedirs(out)
    # 18 iterations
    cfg = make_cfg(DEMO, ["OUTPUT_DIR", out, "SOLVER.MAX_EPOCH", "6"], [add_mbfn_config])
    seed_everything(0)
    untrained = evaluate(
        cfg, PluginTrainer.build_model(PluginTrainer.auto_scale_hyperparams(cfg, 4)))
    seed_everything(0)
    _, trained, losses = train(cfg)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    print(f"MBFN real sample: loss {first:.3f} -> {last:.3f}; mAP {untrained['mAP']:.2f} -> "
          f"{trained['mAP']:.2f}; Rank-1 {untrained['Rank-1']:.2f} -> {trained['Rank-1']:.2f}")
    assert last < 0.5 * first
    assert trained["mAP"] >= 90.0
    assert trained["mAP"] - untrained["mAP"] >= 20.0

    args = engine.default_argument_parser().parse_args(
        ["--config-file", os.path.join(os.path.dirname(os.path.dirname(__file__)), DEMO),
         "--eval-only",
         "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), "MODEL.DEVICE", "cpu",
         "OUTPUT_DIR", str(tmp_path / "eval"), "SOLVER.MAX_EPOCH", "6"])
    again = engine.main(args, add_mbfn_config)
    for k in ("Rank-1", "Rank-5", "mAP", "mINP"):
        assert again[k] == pytest.approx(trained[k], abs=1e-6), k


@pytest.mark.parametrize("path,dataset", [
    ("configs/veri/mbfn.yml", "VeRi"), ("configs/vehicleid/mbfn_small.yml", "SmallVehicleID"),
    ("configs/vehicleid/mbfn_medium.yml", "MediumVehicleID"),
    ("configs/vehicleid/mbfn_large.yml", "LargeVehicleID"), ("configs/vric/mbfn.yml", "VRIC"),
])
def test_paper_configs_carry_the_paper_settings(path, dataset):
    from fastreid.data.datasets import DATASET_REGISTRY

    from fastreid_plugins.mbfn import validate_mbfn_config
    cfg = make_cfg(path, (), [add_mbfn_config])
    validate_mbfn_config(cfg)
    assert cfg.MODEL.META_ARCHITECTURE == "MBFN" and cfg.MODEL.BACKBONE.DEPTH == "50x"
    assert (dataset,) == cfg.DATASETS.NAMES and DATASET_REGISTRY.get(dataset) is not None
    assert (cfg.SOLVER.OPT, cfg.SOLVER.BASE_LR, list(cfg.SOLVER.STEPS),
            cfg.SOLVER.IMS_PER_BATCH) == ("AMSGrad", 3e-4, [20, 40], 32)
    assert list(cfg.INPUT.SIZE_TRAIN) == [384, 128] and cfg.INPUT.REA.ENABLED \
        and cfg.INPUT.FLIP.ENABLED
    m = cfg.MODEL.MBFN
    assert (cfg.MODEL.LOSSES.TRI.MARGIN, m.LOSS.LAMBDA, m.CAM_REDUCTION) == (1.2, 0.1, 4)
    assert (m.WEIGHTS.ALPHA, m.WEIGHTS.BETA, m.LOCAL1.NUM_PARTS, m.LOCAL2.NUM_PARTS) == \
        (0.3, 0.4, 2, 3)
    assert mbfn_part_weights(cfg) == [0.3, 0.4, 0.3] and m.WEIGHTS.NORMALIZE == "none"
    assert m.SPLIT_AT == "after_layer4" and m.BRANCH_GLOBAL.ENABLED     # "after res_conv5"; Fig. 3
    assert m.LOCAL1.DIRECTION == m.LOCAL2.DIRECTION == "horizontal"
