"""Shared part-based building blocks (fastreid_plugins/modeling/parts.py) against hand-computed
values."""

import copy

import pytest
import torch
from torch import nn

import fastreid_plugins  # noqa: F401  (patches first)
from fastreid_plugins.config import get_cfg
from fastreid_plugins.layers import ChannelAttention
from fastreid_plugins.modeling.base import build_backbone
from fastreid_plugins.modeling.parts import (
    PartBranch,
    PartHead,
    ReduceConv,
    copy_stage,
    edge_middle_weights,
    part_bounds,
    split_backbone,
    split_parts,
    stage_out_channels,
)


def _r18(last_stride=1):
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.DEPTH = "18x"
    cfg.MODEL.BACKBONE.FEAT_DIM = 512
    cfg.MODEL.BACKBONE.LAST_STRIDE = last_stride
    cfg.MODEL.BACKBONE.PRETRAIN = False
    return build_backbone(cfg)


# ------------------------------------------------------------------ part splitting
@pytest.mark.parametrize("size,n,expected", [
    (8, 4, [(0, 2), (2, 4), (4, 6), (6, 8)]),
    (8, 3, [(0, 3), (3, 6), (6, 8)]),               # uneven: 3, 3, 2
    (24, 5, [(0, 5), (5, 10), (10, 15), (15, 20), (20, 24)]),
    (6, 4, [(0, 2), (2, 4), (4, 5), (5, 6)]),       # torch.chunk would give only 3 chunks here
    (5, 5, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]),
    (7, 1, [(0, 7)]),
])
def test_part_bounds_hand_computed(size, n, expected):
    assert part_bounds(size, n) == expected


def test_split_horizontal_uneven_equals_hand_slices():
    x = torch.arange(2 * 3 * 7 * 5, dtype=torch.float32).view(2, 3, 7, 5)
    parts = split_parts(x, 3, "horizontal")
    # 7 rows into 3 stripes: rows 0-2, 3-4, 5-6 (first 7 % 3 = 1 stripe gets the extra row)
    hand = [x[:, :, 0:3, :], x[:, :, 3:5, :], x[:, :, 5:7, :]]
    assert len(parts) == 3
    for p, h in zip(parts, hand):
        assert p.shape == h.shape
        assert torch.equal(p, h)
    # stripes tile the map top to bottom
    assert torch.equal(torch.cat(parts, 2), x)


def test_split_vertical_uneven_equals_hand_slices():
    x = torch.randn(1, 2, 4, 5)
    parts = split_parts(x, 2, "vertical")
    assert [tuple(p.shape) for p in parts] == [(1, 2, 4, 3), (1, 2, 4, 2)]
    assert torch.equal(parts[0], x[..., 0:3]) and torch.equal(parts[1], x[..., 3:5])


def test_split_four_horizontal_stripes_h_over_4():
    x = torch.randn(2, 8, 24, 8)  # ResNet-50 map at 384x128 with last stride 1
    parts = split_parts(x, 4)
    assert [p.shape[2] for p in parts] == [6, 6, 6, 6]
    assert all(p.shape[3] == 8 and p.shape[1] == 8 for p in parts)


@pytest.mark.parametrize("n,direction,match", [
    (9, "horizontal", "8 rows"), (5, "vertical", "4 columns"), (0, "horizontal", "positive"),
    (2, "diagonal", "direction"),
])
def test_split_errors(n, direction, match):
    with pytest.raises(ValueError, match=match):
        split_parts(torch.zeros(1, 1, 8, 4), n, direction)


def test_split_rejects_non_4d():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        split_parts(torch.zeros(3, 8, 4), 2)


# ------------------------------------------------------------------ branch stages (MGN split)
def test_split_backbone_reproduces_resnet_forward():
    bb = _r18().eval()
    x = torch.randn(2, 3, 64, 32)
    for split in ("after_layer4", "layer3.1", "layer4"):
        trunk, stage = split_backbone(bb, split)
        with torch.no_grad():
            assert torch.allclose(stage(trunk(x)), bb(x), atol=1e-5)
    trunk, stage = split_backbone(bb, "layer3.1")
    # MGN's split: the trunk ends with layer3[0]; the branch owns layer3[1:] and layer4
    assert trunk[-1] is bb.layer3[0]
    assert list(stage[0]) == list(bb.layer3)[1:] and stage[1] is bb.layer4
    assert stage_out_channels(trunk, stage) == 512


def test_paper_split_shares_the_whole_resnet():
    """The papers' split ("branches ... after the Conv_5 layer"): the trunk is the ResNet through
    layer4 and the branch stage is empty (the identity), also with stride_one."""
    bb = _r18(last_stride=1).eval()
    trunk, stage = split_backbone(bb, "after_layer4")
    assert trunk[-1] is bb.layer4 and trunk[-2] is bb.layer3 and len(stage) == 0
    for s in (copy_stage(stage), copy_stage(stage, stride_one=True)):
        assert len(list(s.parameters())) == 0
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        t = trunk(x)
        assert torch.equal(copy_stage(stage, stride_one=True)(t), t)
        assert t.shape == (1, 512, 4, 2)                 # LAST_STRIDE 1: stride 16
    assert stage_out_channels(trunk, stage) == 512


def _published_r18(path, seed=1):
    """A torchvision ResNet-18 file (the published layout, classifier included), seeded random."""
    import torchvision
    torch.manual_seed(seed)
    net = torchvision.models.resnet18()
    with torch.no_grad():
        for v in net.state_dict().values():
            if v.dtype.is_floating_point:
                v.copy_(torch.randn_like(v))
    torch.save(net.state_dict(), path)
    return net.state_dict()


@pytest.mark.parametrize("meta,split", [("MFGNet", "layer3.1"), ("MFGNet", "after_layer4"),
                                        ("MBFN", "layer3.1"), ("MBFN", "after_layer4")])
def test_pretrained_weights_reach_the_trunk_and_every_branch_copy(tmp_path, meta, split):
    """Branch stages are deep copies made *after* the backbone builder loaded the file: every
    value of the file is in the trunk or in each branch's own copy."""
    from fastreid_plugins.engine import PluginTrainer
    from fastreid_plugins.mbfn import add_mbfn_config
    from fastreid_plugins.mfgnet import add_mfgnet_config
    path = str(tmp_path / "resnet18-published.pth")
    ref = _published_r18(path)
    cfg = get_cfg(add_mfgnet_config, add_mbfn_config)
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", meta, "MODEL.BACKBONE.DEPTH", "18x",
                         "MODEL.BACKBONE.FEAT_DIM", "512", "MODEL.BACKBONE.PRETRAIN", "True",
                         "MODEL.BACKBONE.PRETRAIN_PATH", path, "MODEL.HEADS.NUM_CLASSES", "4",
                         "MODEL.DEVICE", "cpu", f"MODEL.{meta.upper()}.SPLIT_AT", split])
    model = PluginTrainer.build_model(cfg)
    branches = ([model.global_branch, model.local_branch] if meta == "MFGNet"
                else [b for _, b in model.branches()])
    trunk = dict(model.trunk.named_parameters())
    # trunk = Sequential(conv1, bn1, relu, maxpool, layer1, layer2, layer3[0] | layer3, [layer4])
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2"]
    names += {"layer3.1": ["layer3.0"], "layer4": ["layer3"],
              "after_layer4": ["layer3", "layer4"]}[split]
    checked = 0
    for i, n in enumerate(names):
        for k, v in trunk.items():
            if k.split(".")[0] == str(i):
                assert torch.equal(v, ref[n + k[len(str(i)):]]), k
                checked += 1
    for b in branches:
        own = dict(b.stage.named_parameters())
        assert (len(own) == 0) == (split == "after_layer4")
        for k, v in own.items():
            # stage = Sequential(Sequential(layer3[1:]), layer4) or Sequential(layer4)
            head, rest = k.split(".", 1)
            if split == "layer3.1" and head == "0":
                blk, tail = rest.split(".", 1)
                src = f"layer3.{int(blk) + 1}.{tail}"
            else:
                src = "layer4." + rest
            assert torch.equal(v, ref[src]), k
            checked += 1
    n_backbone = len([k for k in ref if not k.startswith("fc.") and "running" not in k
                      and "num_batches" not in k])
    assert checked >= n_backbone          # every backbone parameter of the file was found


def test_split_backbone_errors():
    with pytest.raises(ValueError, match="split point"):
        split_backbone(_r18(), "layer2")
    with pytest.raises(ValueError, match="MODEL.BACKBONE.NAME"):
        split_backbone(nn.Sequential(nn.Conv2d(3, 8, 3)))


def test_copy_stage_is_independent_and_stride_one_matches_last_stride_1():
    bb2 = _r18(last_stride=2).eval()
    bb1 = _r18(last_stride=1).eval()
    bb1.load_state_dict(bb2.state_dict())
    trunk, stage = split_backbone(bb2)
    a, b = copy_stage(stage), copy_stage(stage, stride_one=True)
    # own weights: equal values, different storage
    pa, pb, ps = (dict(m.named_parameters()) for m in (a, b, stage))
    for k in ps:
        assert torch.equal(pa[k], ps[k]) and pa[k].data_ptr() != ps[k].data_ptr()
        assert pb[k].data_ptr() != pa[k].data_ptr()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        t = trunk(x)
        assert a(t).shape[-2:] == (2, 2)            # 64 / 32
        assert b(t).shape[-2:] == (4, 4)            # 64 / 16: layer4 at stride 1
        assert torch.allclose(b(t), bb1(x), atol=1e-5)  # = the same ResNet built with LAST_STRIDE 1
        with torch.no_grad():
            next(a.parameters()).add_(1.0)
        assert not torch.equal(next(a.parameters()), next(stage.parameters()))


# ------------------------------------------------------------------ heads
def test_part_head_eval_and_train_hand_computed():
    torch.manual_seed(0)
    head = PartHead(in_channels=4, num_classes=3, embed_dim=2)
    with torch.no_grad():
        head.bnneck.running_mean.copy_(torch.tensor([0.5, -1.0]))
        head.bnneck.running_var.copy_(torch.tensor([4.0, 0.25]))
        head.bnneck.weight.copy_(torch.tensor([2.0, 1.0]))
    x = torch.randn(5, 4, 3, 2)
    W = head.embed.weight[:, :, 0, 0]                     # (2, 4)
    f = x.mean((2, 3)) @ W.t()                            # GAP then 1x1 conv
    n = (f - torch.tensor([0.5, -1.0])) / torch.sqrt(torch.tensor([4.0, 0.25]) + 1e-5) \
        * torch.tensor([2.0, 1.0])                        # BNNeck, bias frozen at 0
    head.eval()
    assert torch.allclose(head(x), n, atol=1e-5)
    head.train()
    out = head(x, torch.tensor([0, 1, 2, 0, 1]))
    assert torch.allclose(out["features"], f, atol=1e-5)  # triplet feature: before the BNNeck
    mu, var = f.mean(0), f.var(0, unbiased=False)
    n_train = (f - mu) / torch.sqrt(var + 1e-5) * torch.tensor([2.0, 1.0])
    assert torch.allclose(out["cls_outputs"], n_train @ head.weight.t(), atol=1e-4)
    assert not head.bnneck.bias.requires_grad


def test_part_head_errors():
    with pytest.raises(ValueError, match="MODEL.HEADS.CLS_LAYER"):
        PartHead(4, 3, cls_type="Softmax")
    with pytest.raises(ValueError, match="MODEL.HEADS.NUM_CLASSES"):
        PartHead(4, -1)
    empty = PartHead(4, 0)   # NUM_CLASSES 0: FastReID's "from the training set"; eval still works
    assert empty.weight.shape == (0, 4)
    assert empty.eval()(torch.randn(2, 4, 2, 2)).shape == (2, 4)
    with pytest.raises(ValueError, match="0 classes"):
        empty.train()(torch.randn(2, 4, 2, 2), torch.tensor([0, 1]))


def test_reduce_conv_then_head_is_conv_gap_conv():
    red, head = ReduceConv(8, 2).eval(), PartHead(2, 3, embed_dim=6, with_bnneck=False).eval()
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        bn = red[1]
        y = torch.einsum("bchw,oc->bohw", x, red[0].weight[:, :, 0, 0])
        y = torch.relu((y - bn.running_mean.view(1, -1, 1, 1))
                       / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
                       * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1))
        hand = y.mean((2, 3)) @ head.embed.weight[:, :, 0, 0].t()
        assert torch.allclose(head(red(x)), hand, atol=1e-5)
    assert head(red(x)).shape == (2, 6)


# ------------------------------------------------------------------ branches, CAM, weights
def test_edge_middle_weights():
    assert edge_middle_weights(3, 0.3, 0.4) == [0.3, 0.4, 0.3]
    assert edge_middle_weights(4, 0.3, 0.4) == [0.3, 0.4, 0.4, 0.3]
    assert edge_middle_weights(2, 0.3, 0.4) == [0.3, 0.3]
    assert edge_middle_weights(1, 0.3, 0.4) == [0.3]


def _pool_heads(n, c):
    return [PartHead(c, 2, embed_dim=0, with_bnneck=False) for _ in range(n)]


def test_cam_branch_map_and_parts_follow_the_cam():
    """A branch with CAM: its map is y * sigmoid(W2 relu(W1 GAP y)) + y (y = stage output), and
    both the branch-global feature and the stripes are taken from that re-weighted map."""
    torch.manual_seed(0)
    stage = nn.Conv2d(3, 8, 1)
    cam = ChannelAttention(8, 4)
    branch = PartBranch(copy.deepcopy(stage), cam=cam,
                        global_head=PartHead(8, 2, with_bnneck=False),
                        part_heads=_pool_heads(2, 8)).eval()
    plain = PartBranch(copy.deepcopy(stage), global_head=PartHead(8, 2, with_bnneck=False),
                       part_heads=_pool_heads(2, 8)).eval()
    x = torch.randn(2, 3, 6, 4)
    with torch.no_grad():
        y = stage(x)
        s = y.mean((2, 3))                                            # (B, C) GAP
        h = torch.relu(s @ cam.fc1.weight[:, :, 0, 0].t() + cam.fc1.bias)
        w = torch.sigmoid(h @ cam.fc2.weight[:, :, 0, 0].t() + cam.fc2.bias)  # (B, C) in (0, 1)
        m = y * w[:, :, None, None] + y
        assert torch.allclose(branch.feature_map(x), m, atol=1e-5)
        assert torch.allclose(plain.feature_map(x), y, atol=1e-6)
        # eval descriptor = [GAP(m), GAP(m top half), GAP(m bottom half)]
        hand = torch.cat([m.mean((2, 3)), m[:, :, :3].mean((2, 3)), m[:, :, 3:].mean((2, 3))], 1)
        assert torch.allclose(branch(x), hand, atol=1e-5)
        # the CAM only rescales channels by 1 + w in (1, 2)
        ratio = branch(x)[:, :8] / plain(x)[:, :8]
        assert torch.allclose(ratio, 1 + w, atol=1e-4)


def test_branch_part_weights_hand_example():
    """Three stripes with GAP values 1, 2, 3 weighted (0.3, 0.4, 0.3)."""
    x = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 3, 1).repeat(2, 1, 1, 2)  # rows of 1s, 2s, 3s
    t = torch.tensor([0, 1])
    for at, train_w, test_w in [("both", True, True), ("train", True, False),
                                ("test", False, True)]:
        b = PartBranch(nn.Identity(), part_heads=_pool_heads(3, 1), part_weights=[0.3, 0.4, 0.3],
                       weight_at=at)
        b.eval()
        assert torch.allclose(b(x)[0], torch.tensor([0.3, 0.8, 0.9] if test_w else [1.0, 2.0, 3.0]))
        b.train()
        out = b(x, t)
        assert torch.allclose(out["part_feature"][0],
                              torch.tensor([0.3, 0.8, 0.9] if train_w else [1.0, 2.0, 3.0]))
        # CE is computed on each unweighted part
        assert torch.allclose(out["parts"][2]["features"][0], torch.tensor([3.0]))
    s = PartBranch(nn.Identity(), part_heads=_pool_heads(3, 1), part_weights=[0.3, 0.4, 0.3],
                   part_fusion="sum").eval()
    assert torch.allclose(s(x)[0], torch.tensor([0.3 * 1 + 0.4 * 2 + 0.3 * 3]))
    assert s.out_dim == 1


def test_branch_errors():
    with pytest.raises(ValueError, match="global head or at least one part"):
        PartBranch(nn.Identity())
    with pytest.raises(ValueError, match="2 part weights given for 3 parts"):
        PartBranch(nn.Identity(), part_heads=_pool_heads(3, 1), part_weights=[0.3, 0.4])
    with pytest.raises(ValueError, match="weight_at"):
        PartBranch(nn.Identity(), part_heads=_pool_heads(1, 1), weight_at="never")
