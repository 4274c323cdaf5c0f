"""MFG-Net (Xu et al., Array 2022): contracts, the paper's split and global-branch convs, loss terms
vs FastReID's losses, every Table 3 / Table 4 ablation row (the registry's
``mfgnet/table{3,4}/<row>``), config validation, equivalence to FastReID's Baseline when reduced
to it, a weights-change check, and overfitting the real VeRi-776 sample with an ``--eval-only``
round trip."""

import os

import pytest
import torch
import torch.nn.functional as F
from fastreid.modeling.losses import cross_entropy_loss, triplet_loss
from fastreid.utils.events import EventStorage

import fastreid_plugins  # noqa: F401
from fastreid_plugins import engine
from fastreid_plugins.engine import PluginTrainer
from fastreid_plugins.mfgnet import MFGNet, add_mfgnet_config
from fastreid_plugins.modeling.parts import PartBranch
from fastreid_plugins.reproduce import get_row, get_table
from tests.helpers import evaluate, make_cfg, seed_everything, train

DEMO = "configs/demo/mfgnet.yml"
# small and fast: 96x64 input -> 6x4 conv5 maps (R18, last stride 1), enough rows for 6 stripes
TINY = ["MODEL.HEADS.NUM_CLASSES", "4", "INPUT.SIZE_TRAIN", "[96, 64]",
        "INPUT.SIZE_TEST", "[96, 64]",
        "MODEL.MFGNET.LOCAL.EMBED_DIM", "16"]
C = 512   # R18 conv5 channels; the global branch keeps them (paper: 1x1 convs keep the scale)
TABLE3 = [r.key for r in get_table("mfgnet", "table3").rows]   # mfgnet/table3/<k>_divisions
TABLE4 = [r.key for r in get_table("mfgnet", "table4").rows]


def tiny_model(*opts):
    cfg = make_cfg(DEMO, TINY + list(opts), [add_mfgnet_config])
    torch.manual_seed(0)
    return PluginTrainer.build_model(cfg), cfg


def batch(n_ids=4, k=2, hw=(96, 64), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.rand(n_ids * k, 3, *hw, generator=g) * 255,
            "targets": torch.arange(n_ids).repeat_interleave(k)}


def one_step(model, data):
    """One Adam step; returns (loss dict, max parameter change)."""
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    with EventStorage(0):
        losses = model(data)
    total = sum(losses.values())
    opt.zero_grad()
    total.backward()
    opt.step()
    change = max((p.detach() - before[k]).abs().max().item() for k, p in model.named_parameters()
                 if p.requires_grad)
    return losses, change


def test_registered_and_output_shapes_train_eval():
    model, cfg = tiny_model()
    assert isinstance(model, MFGNet)
    data = batch()
    model.train()
    with EventStorage(0):
        losses = model(data)
    assert sorted(losses) == sorted(["loss_cls_global", "loss_triplet_global"]
                                    + [f"loss_cls_stripe{i}" for i in range(4)])
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    model.eval()
    images = data["images"].clone()
    with torch.no_grad():
        feat = model(data)
        bare = model(images)
    assert feat.shape == (8, C + 4 * 16) == (8, model.feat_dim)
    assert torch.equal(feat, bare)                    # bare tensor input (ONNX export path)
    assert torch.equal(images, data["images"])        # input not normalised in place
    # the test feature is the concat of the global feature and every stripe feature
    x = model.trunk(model.preprocess_image(images))
    with torch.no_grad():
        assert torch.allclose(feat, torch.cat([model.global_branch(x), model.local_branch(x)], 1))


def test_training_requires_targets():
    model, _ = tiny_model()
    model.train()
    with pytest.raises(KeyError, match="targets"):
        model(batch()["images"])


@pytest.mark.parametrize("alpha,beta,reduction", [(1.0, 0.1, "sum"), (2.0, 0.5, "mean")])
def test_loss_terms_equal_fastreid_losses_computed_independently(alpha, beta, reduction):
    model, cfg = tiny_model("MODEL.MFGNET.LOSS.ALPHA", str(alpha),
                            "MODEL.MFGNET.LOSS.BETA", str(beta),
                            "MODEL.MFGNET.LOSS.CE_REDUCTION", reduction)
    data = batch()
    t = data["targets"]
    model.train()
    with EventStorage(0):
        out = model.branch_outputs(model.preprocess_image(data), t)
        losses = model.losses(out, t)
        again = model(data)                           # the full forward gives the same terms
    g = out["global"]["global"]
    stripes = out["local"]["parts"]
    n_cls = 1 + len(stripes)
    scale = alpha / (n_cls if reduction == "mean" else 1)
    # Eq. 1 with eps = 0 is plain softmax CE: check FastReID's function against torch's too
    assert torch.allclose(cross_entropy_loss(g["cls_outputs"], t, 0.0),
                          F.cross_entropy(g["cls_outputs"], t))
    assert torch.allclose(losses["loss_cls_global"], scale * F.cross_entropy(g["cls_outputs"], t))
    for i, s in enumerate(stripes):
        assert torch.allclose(losses[f"loss_cls_stripe{i}"],
                              scale * cross_entropy_loss(s["cls_outputs"], t, 0.0))
    # Eq. 2: batch-hard triplet, margin 0.3, on the global feature after the 1x1 conv after GAP
    gb = model.global_branch
    with torch.no_grad():
        m = gb.feature_map(model.trunk(model.preprocess_image(data)))      # CAM'd branch map
        f = gb.global_head.embed(gb.reduce(m).mean((2, 3), keepdim=True))[..., 0, 0]
    assert torch.allclose(g["features"], f, atol=1e-5)
    assert torch.allclose(losses["loss_triplet_global"],
                          beta * triplet_loss(g["features"], t, 0.3, False, True))
    # and the batch-hard triplet by hand: mean_i relu(max_pos d - min_neg d + 0.3)
    d = torch.cdist(g["features"], g["features"]).clamp_min(1e-12)
    same = t[:, None] == t[None, :]
    d_ap = d.masked_fill(~same, -1).max(1).values
    d_an = d.masked_fill(same, 1e9).min(1).values
    hand = torch.relu(d_ap - d_an + 0.3).mean()
    assert torch.allclose(losses["loss_triplet_global"], beta * hand, atol=1e-4)
    # Eq. 3 total
    ce_sum = sum(F.cross_entropy(o["cls_outputs"], t) for o in [g] + stripes)
    total = alpha * ce_sum / (n_cls if reduction == "mean" else 1) \
        + beta * triplet_loss(g["features"], t, 0.3, False, True)
    assert torch.allclose(sum(losses.values()), total, atol=1e-5)
    for k in losses:
        assert torch.allclose(losses[k], again[k], atol=1e-5)


def test_paper_split_and_global_convs_keep_the_scale():
    """Sec. 2.2: both branches start on the shared conv5 map ("built after the Conv_5 layer"); the
    global branch's 1x1 conv before GAP keeps "the scale of the feature map unchanged" (C -> C)
    and the one after GAP fuses the C pooled channels (C -> C)."""
    model, cfg = tiny_model()
    assert cfg.MODEL.MFGNET.SPLIT_AT == "after_layer4"
    gb, lb = model.global_branch, model.local_branch
    assert not list(gb.stage.parameters()) and not list(lb.stage.parameters())
    assert tuple(gb.reduce[0].weight.shape) == (C, C, 1, 1)
    assert tuple(gb.global_head.embed.weight.shape) == (C, C, 1, 1)
    model.eval()
    x = batch()["images"]
    with torch.no_grad():
        conv5 = model.trunk(model.preprocess_image(x))
        assert conv5.shape == (8, C, 6, 4)
        m = gb.cam(conv5)                                           # global CAM on the conv5 map
        f = gb.global_head.embed(gb.reduce(m).mean((2, 3), keepdim=True))[..., 0, 0]
        n = gb.global_head.bnneck(f[..., None, None])[..., 0, 0]
        ml = lb.cam(conv5)                                          # local CAM, then 4 stripes
        rows = [(0, 2), (2, 4), (4, 5), (5, 6)]                     # 6 rows into 4: 2, 2, 1, 1
        stripes = [lb.part_heads[i](ml[:, :, a:b]) for i, (a, b) in enumerate(rows)]
        assert torch.allclose(model(x), torch.cat([n] + stripes, 1), atol=1e-5)
    # the MGN-style split stays available as a switch: own layer3[1:] + layer4 per branch
    mgn, _ = tiny_model("MODEL.MFGNET.SPLIT_AT", "layer3.1")
    assert len(list(mgn.global_branch.stage.parameters())) > 0
    assert mgn.feat_dim == model.feat_dim


@pytest.mark.slow
@pytest.mark.parametrize("row", TABLE3)
def test_table3_rows_build_and_train_one_step(row):
    """Table 3 counts horizontal division *times* k: k divisions give k + 1 stripes (Sec. 4.3:
    "quartered (the number of horizontal divisions is equal to 3)")."""
    k = int(row.rsplit("/", 1)[1].split("_")[0])
    model, cfg = tiny_model(*get_row(row).overrides)
    assert model.local_branch.num_parts == cfg.MODEL.MFGNET.NUM_STRIPES == k + 1
    losses, change = one_step(model, batch())
    assert sorted(k for k in losses if "stripe" in k) == \
        [f"loss_cls_stripe{i}" for i in range(k + 1)]
    assert all(torch.isfinite(v) for v in losses.values()) and change > 0
    model.eval()
    with torch.no_grad():
        assert model(batch()["images"]).shape == (8, C + (k + 1) * 16)


def test_table3_best_row_is_the_default_four_stripes():
    _, cfg = tiny_model()
    assert get_row("mfgnet/table3/3_divisions").overrides == ("MODEL.MFGNET.NUM_STRIPES", "4")
    assert cfg.MODEL.MFGNET.NUM_STRIPES == 4


@pytest.mark.slow
@pytest.mark.parametrize("row", TABLE4)
def test_table4_rows_build_and_train_one_step(row):
    model, _ = tiny_model(*get_row(row).overrides)
    losses, change = one_step(model, batch())
    assert all(torch.isfinite(v) for v in losses.values()) and change > 0
    name = row.rsplit("/", 1)[1]
    order = ["baseline", "global_no_triplet", "global_triplet", "local", "cam"]
    level = order.index(name)                     # each row adds one component to the previous
    gb = model.global_branch
    assert (not isinstance(gb.reduce, torch.nn.Identity)) == (level >= 1)
    assert ("loss_triplet_global" in losses) == (level >= 2)
    assert (model.local_branch is not None) == (level >= 3)
    assert (not isinstance(gb.cam, torch.nn.Identity)) == (level >= 4)
    if model.local_branch is not None:
        assert (not isinstance(model.local_branch.cam, torch.nn.Identity)) == (level >= 4)
    model.eval()
    with torch.no_grad():
        assert model(batch()["images"]).shape == (8, model.feat_dim)


@pytest.mark.parametrize("key,value,match", [
    ("MODEL.MFGNET.NUM_STRIPES", "0", "MODEL.MFGNET.NUM_STRIPES"),
    ("MODEL.MFGNET.NUM_STRIPES", "9", r"MODEL.MFGNET.NUM_STRIPES=9 must be an int in 1..8"),
    ("MODEL.MFGNET.SPLIT_AT", "layer2", "MODEL.MFGNET.SPLIT_AT"),
    ("MODEL.MFGNET.STRIPE_DIRECTION", "diagonal", "MODEL.MFGNET.STRIPE_DIRECTION"),
    ("MODEL.MFGNET.LOSS.BETA", "-0.1", "MODEL.MFGNET.LOSS.BETA"),
    ("MODEL.MFGNET.LOSS.CE_REDUCTION", "max", "MODEL.MFGNET.LOSS.CE_REDUCTION"),
    ("MODEL.MFGNET.GLOBAL.REDUCE_DIM", "-1", "MODEL.MFGNET.GLOBAL.REDUCE_DIM"),
    ("MODEL.BACKBONE.WITH_NL", "True", "MODEL.BACKBONE.WITH_NL"),
])
def test_invalid_config_values_name_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        tiny_model(key, value)


def test_missing_mfgnet_keys_is_a_keyerror():
    from fastreid_plugins.config import get_cfg
    from fastreid_plugins.mfgnet.config import validate_mfgnet_config
    with pytest.raises(KeyError, match="add_mfgnet_config"):
        validate_mfgnet_config(get_cfg())


def test_more_stripes_than_rows_is_a_clear_error():
    model, _ = tiny_model("MODEL.MFGNET.NUM_STRIPES", "8")   # 96 px high -> 6 rows
    model.eval()
    with pytest.raises(ValueError, match="6 rows .* into 8 horizontal parts"):
        model(torch.rand(2, 3, 96, 64) * 255)


def test_mgn_split_branches_own_their_stage_weights():
    model, _ = tiny_model("MODEL.MFGNET.SPLIT_AT", "layer3.1")
    assert isinstance(model.global_branch, PartBranch)
    g = dict(model.global_branch.stage.named_parameters())
    loc = dict(model.local_branch.stage.named_parameters())
    assert g.keys() == loc.keys()
    assert all(g[k].data_ptr() != loc[k].data_ptr() for k in g)


def test_weights_change_after_one_trainer_step(veri_root, datasets_root, tmp_path):
    """One step of FastReID's trainer (our AMSGrad optimizer) changes the weights of every part."""
    datasets_root(veri_root)
    cfg = make_cfg(DEMO, TINY[2:] + ["OUTPUT_DIR", str(tmp_path)], [add_mfgnet_config])
    seed_everything(0)
    trainer = PluginTrainer(cfg)
    assert all(g["amsgrad"] for g in trainer.optimizer.param_groups)
    model = trainer.model
    names = ["trunk.0.weight", "trunk.7.1.conv2.weight", "global_branch.cam.fc1.weight",
             "global_branch.reduce.0.weight", "global_branch.global_head.embed.weight",
             "global_branch.global_head.weight", "local_branch.part_heads.0.embed.weight",
             "local_branch.part_heads.3.weight", "local_branch.cam.fc2.weight"]
    params = dict(model.named_parameters())
    before = {n: params[n].detach().clone() for n in names}
    with EventStorage(0) as trainer.storage:
        trainer.iter = 0
        trainer.run_step()
    for n in names:
        assert not torch.equal(before[n], params[n].detach()), n


@pytest.mark.slow
def test_overfit_real_sample_and_eval_only_round_trip(veri_root, datasets_root, tmp_path):
    """Demo config (6 epochs) on the real 57-image VeRi-776 sample: loss falls, mAP goes from its
    untrained value to >= 90%; then `--eval-only` on model_final.pth reproduces the metrics."""
    datasets_root(veri_root)
    out = str(tmp_path / "mfgnet")
    os.makedirs(out)
    # 18 iterations
    cfg = make_cfg(DEMO, ["OUTPUT_DIR", out, "SOLVER.MAX_EPOCH", "6"], [add_mfgnet_config])
    seed_everything(0)
    untrained = evaluate(
        cfg, PluginTrainer.build_model(PluginTrainer.auto_scale_hyperparams(cfg, 4)))
    seed_everything(0)
    _, trained, losses = train(cfg)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    print(f"MFG-Net real sample: loss {first:.3f} -> {last:.3f}; mAP {untrained['mAP']:.2f} -> "
          f"{trained['mAP']:.2f}; Rank-1 {untrained['Rank-1']:.2f} -> {trained['Rank-1']:.2f}")
    assert last < 0.5 * first
    assert trained["mAP"] >= 90.0
    assert trained["mAP"] - untrained["mAP"] >= 20.0

    args = engine.default_argument_parser().parse_args(
        ["--config-file", os.path.join(os.path.dirname(os.path.dirname(__file__)), DEMO),
         "--eval-only",
         "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), "MODEL.DEVICE", "cpu",
         "OUTPUT_DIR", str(tmp_path / "eval"), "SOLVER.MAX_EPOCH", "6"])
    again = engine.main(args, add_mfgnet_config)
    for k in ("Rank-1", "Rank-5", "mAP", "mINP"):
        assert again[k] == pytest.approx(trained[k], abs=1e-6), k


@pytest.mark.parametrize("path,dataset,epochs,steps,batch,test_batch", [
    ("configs/veri/mfgnet.yml", "VeRi", 30, [10, 20], 48, 48),
    ("configs/vehicleid/mfgnet_small.yml", "SmallVehicleID", 40, [15, 30], 24, 32),
    ("configs/vehicleid/mfgnet_medium.yml", "MediumVehicleID", 40, [15, 30], 24, 32),
    ("configs/vehicleid/mfgnet_large.yml", "LargeVehicleID", 40, [15, 30], 24, 32),
    ("configs/vric/mfgnet.yml", "VRIC", 40, [15, 30], 32, 32),
])
def test_paper_configs_carry_the_paper_settings(path, dataset, epochs, steps, batch, test_batch):
    from fastreid.data.datasets import DATASET_REGISTRY

    from fastreid_plugins.mfgnet import validate_mfgnet_config
    cfg = make_cfg(path, (), [add_mfgnet_config])
    validate_mfgnet_config(cfg)
    assert cfg.MODEL.META_ARCHITECTURE == "MFGNet" and cfg.MODEL.BACKBONE.DEPTH == "50x"
    assert (dataset,) == cfg.DATASETS.NAMES and DATASET_REGISTRY.get(dataset) is not None
    assert (cfg.SOLVER.OPT, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_EPOCH, list(cfg.SOLVER.STEPS)) == \
        ("AMSGrad", 3e-4, epochs, steps)
    assert batch == cfg.SOLVER.IMS_PER_BATCH and list(cfg.INPUT.SIZE_TRAIN) == [384, 128]
    assert cfg.INPUT.REA.ENABLED and cfg.INPUT.FLIP.ENABLED
    m = cfg.MODEL.MFGNET
    assert (m.LOSS.ALPHA, m.LOSS.BETA, cfg.MODEL.LOSSES.TRI.MARGIN, m.NUM_STRIPES) == \
        (1.0, 0.1, 0.3, 4)
    assert test_batch == cfg.TEST.IMS_PER_BATCH                      # Sec. 4.4-4.6
    assert cfg.TEST.METRIC == "euclidean"                            # Sec. 2.1
    assert m.SPLIT_AT == "after_layer4"                              # Sec. 2.2
    assert (m.GLOBAL.REDUCE_DIM, m.GLOBAL.EMBED_DIM) == (0, 0)       # C -> C, Sec. 2.2


def test_reduced_to_the_baseline_it_computes_fastreids_baseline():
    """MFG-Net without the local branch, CAM and global 1x1 convs, with the Baseline's loss
    settings, is FastReID's BagTricks Baseline (ResNet -> GAP -> BNNeck -> classifier; CE + triplet
    on the pooled feature): its BNNeck and classifier are initialised alike, given the Baseline's
    weights it gives the same descriptor, loss terms and gradients, and its optimiser gets the same
    parameter groups. Our heads' initialisation and
    optimiser settings therefore cannot explain a gap to the Baseline (README, held-out-camera
    check); the reference is FastReID's own ``Baseline`` + ``EmbeddingHead``."""
    common = ["MODEL.HEADS.NUM_CLASSES", "4", "INPUT.SIZE_TRAIN", "[96, 64]",
              "INPUT.SIZE_TEST", "[96, 64]", "SOLVER.OPT", "Adam", "SOLVER.BASE_LR", "0.00035"]
    cb = make_cfg("configs/demo/bagtricks_r18.yml", common)
    cm = make_cfg(DEMO, common + [
        "MODEL.MFGNET.USE_LOCAL", "False", "MODEL.MFGNET.USE_CAM", "False",
        "MODEL.MFGNET.GLOBAL.USE_CONV", "False", "MODEL.LOSSES.CE.EPSILON", "0.1",
        "MODEL.MFGNET.LOSS.BETA", "1.0"], [add_mfgnet_config])
    torch.manual_seed(0)
    base = PluginTrainer.build_model(cb)
    torch.manual_seed(1)
    ours = PluginTrainer.build_model(cm)
    sb, so = base.state_dict(), ours.state_dict()
    assert [v.shape for v in sb.values()] == [v.shape for v in so.values()]
    # initialisation (before loading): the same BNNeck constants and classifier scale as FastReID's
    for k in ("weight", "bias"):
        torch.testing.assert_close(so[f"global_branch.global_head.bnneck.{k}"],
                                   sb[f"heads.bottleneck.0.{k}"])
    w_o, w_b = so["global_branch.global_head.weight"], sb["heads.weight"]
    assert abs(w_o.std() / w_b.std() - 1) < 0.1 and abs(w_o.mean()) < 0.002
    ours.load_state_dict(dict(zip(so.keys(), sb.values())))
    b = batch()
    base.eval()
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(b["images"]), base(b["images"]))
    base.train()
    ours.train()
    with EventStorage(0):
        lb, lo = base(b), ours(b)
    torch.testing.assert_close(lo["loss_cls_global"], lb["loss_cls"])
    torch.testing.assert_close(lo["loss_triplet_global"], lb["loss_triplet"])
    sum(lb.values()).backward()
    sum(lo.values()).backward()
    for (n, pb), po in zip(base.named_parameters(), ours.parameters()):
        torch.testing.assert_close(po.grad, pb.grad, msg=lambda m, n=n: f"{n}: {m}")

    def groups(cfg, model):  # FastReID's per-parameter lr / weight decay (name-dependent rules)
        from fastreid.solver.build import get_default_optimizer_params
        s = cfg.SOLVER
        index = {id(p): i for i, p in enumerate(model.parameters())}
        params = get_default_optimizer_params(
            model, base_lr=s.BASE_LR, weight_decay=s.WEIGHT_DECAY,
            weight_decay_norm=s.WEIGHT_DECAY_NORM, bias_lr_factor=s.BIAS_LR_FACTOR,
            heads_lr_factor=s.HEADS_LR_FACTOR, weight_decay_bias=s.WEIGHT_DECAY_BIAS)
        return sorted((index[id(p)], g["lr"], g["weight_decay"])
                      for g in params for p in g["params"])
    assert groups(cm, ours) == groups(cb, base)

    def hyper(cfg, model):
        opt = PluginTrainer.build_optimizer(cfg, model)[0]
        return [type(opt).__mro__[1:]] + [{k: v for k, v in g.items() if k != "params"}
                                           for g in opt.param_groups]
    assert hyper(cm, ours) == hyper(cb, base)


@pytest.mark.parametrize("fold,n_train,n_query", [("forward", 27, 30), ("reverse", 30, 27)])
def test_heldout_cams_folds_keep_query_cameras_out_of_training(fold, n_train, n_query, veri_root,
                                                               tmp_path):
    """``fastreid_plugins.tools.heldout_cams`` (``projects/MFGNet/heldout_cams.py``): in both
    folds the gallery is the training images and no query camera occurs in training (FastReID's
    VeRi loader reads the split)."""
    from fastreid.data.datasets import VeRi

    from fastreid_plugins.tools import heldout_cams as mod
    ds = VeRi(root=mod.make_split(veri_root, str(tmp_path / "data"), fold))
    def cams(items):  # from the file names (the loader prefixes the training camids)
        return {os.path.basename(p).split("_")[1] for p, _, _ in items}
    assert len(ds.train) == len(ds.gallery) == n_train and len(ds.query) == n_query
    assert {os.path.basename(p) for p, _, _ in ds.train} == \
        {os.path.basename(p) for p, _, _ in ds.gallery}
    assert len(cams(ds.train)) == 4 and len(cams(ds.query)) == 4
    assert not cams(ds.query) & cams(ds.train)
    assert {p for _, p, _ in ds.query} == {p for _, p, _ in ds.gallery} \
        and len({p for _, p, _ in ds.query}) == 4
