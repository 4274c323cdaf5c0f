"""CLIP-SENet against the paper point by point: every ablation row (Tables IV-VI, Fig. 3) builds and
trains a step, the SEM's optimizer group, AFEM's weight shapes, the four-viewpoint grouping."""

import pytest
import torch
from fastreid.modeling import build_model

import fastreid_plugins  # noqa: F401
from fastreid_plugins.clip_senet import CLIPSENetTrainer, add_clip_senet_config
from fastreid_plugins.clip_senet.modules import AFEM, VIEWPOINT_GROUPS, CameraViewEmbedding
from fastreid_plugins.method import METHODS
from fastreid_plugins.reproduce import get_row, get_table
from tests.helpers import make_cfg

DEMO = "configs/demo/clip_senet.yml"
PAPER = "configs/veri/clip_senet.yml"

def _distinct_rows():
    """Every row key, each distinct override list once (e.g. Table IV's last row, Table V's
    G = 32 and Fig. 3's CLIP-SENet + SupCon are all the paper config)."""
    seen, rows = set(), []
    for r in METHODS["clip_senet"].rows:
        if r.overrides not in seen:
            seen.add(r.overrides)
            rows.append(r.key)
    return rows


ROWS = _distinct_rows()


def tiny(*opts):
    """The demo config (ResNet-18, a small random ViT as SEM) with 4 classes, then ``opts``."""
    return make_cfg(DEMO, ["MODEL.HEADS.NUM_CLASSES", 4, *opts], [add_clip_senet_config])


def batch(n=8, size=32):
    g = torch.Generator().manual_seed(0)
    return {"images": torch.rand(n, 3, size, size, generator=g) * 255,
            "targets": torch.arange(n) % 4, "camids": torch.arange(n) % 3,
            "sie_camids": torch.arange(n) % 3, "viewids": torch.arange(n) % 8}


@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS)
def test_every_ablation_row_builds_and_trains_a_step(row):
    torch.manual_seed(0)
    cfg = tiny(*get_row(row).overrides)
    model = build_model(cfg)
    optimizer, _ = CLIPSENetTrainer.build_optimizer(cfg, model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    losses = model(batch(4))
    triplet = "TripletLoss" in cfg.MODEL.LOSSES.NAME
    assert set(losses) == {"loss_cls", "loss_triplet" if triplet else "loss_supcon"}
    assert all(torch.isfinite(v) for v in losses.values())
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    changed = {n.split(".")[0] for n, p in model.named_parameters()
               if not torch.equal(before[n], p.detach())}
    present = {n for n in ("backbone", "sem", "fusion", "afem", "cv", "heads")
               if getattr(model, n) is not None}
    assert present <= changed  # every component of the row is trained
    c = cfg.MODEL.CLIPSENET
    assert (model.sem is not None, model.afem is not None, model.cv is not None) == (
        c.SEM.ENABLED, c.AFEM.ENABLED, c.CV.CAMERA or c.CV.VIEWPOINT)


def test_table_iv_rows_are_the_papers_checkmarks_with_one_cv_position():
    marks = {"baseline": (0, 0, 0), "sem": (1, 0, 0), "sem_afem": (1, 1, 0), "cv": (0, 0, 1),
             "sem_cv": (1, 0, 1), "sem_afem_cv": (1, 1, 1)}  # Table IV: SEM / AFEM / CV
    assert [r.row for r in get_table("clip_senet", "table_iv").rows] == list(marks)
    positions = set()
    for row, (sem, afem, cv) in marks.items():
        cfg = make_cfg(PAPER, get_row(f"clip_senet/table_iv/{row}").overrides,
                       [add_clip_senet_config])
        c = cfg.MODEL.CLIPSENET
        assert (c.SEM.ENABLED, c.AFEM.ENABLED, c.CV.CAMERA and c.CV.VIEWPOINT) == (
            bool(sem), bool(afem), bool(cv))
        positions.add(c.CV.POSITION)
    assert positions == {"feature"}  # rows 4-6 put CV at the same place
    assert get_row("clip_senet/table_iv/sem_afem_cv").overrides == ()  # row 6 = the paper config
    with pytest.raises(KeyError, match="table_iv"):
        get_row("clip_senet/table_iv/sem_only")


def test_readme_lists_the_table_iv_and_v_rows_as_in_the_data():
    import os

    from tests.helpers import ROOT
    text = open(os.path.join(ROOT, "projects", "CLIPSENet", "README.md")).read()
    lines = {ln.split("|")[1].strip(): ln for ln in text.splitlines() if ln.startswith("| IV `")}
    for r in get_table("clip_senet", "table_iv").rows:
        row, overrides = r.row, r.overrides
        line = next(v for k, v in lines.items() if k.startswith(f"IV `{row}`"))
        written = " ".join(map(str, overrides)).replace("MODEL.CLIPSENET.", "$K.")
        assert (f"`{written}`" if overrides else "(none)") in line, row
    assert "`$K.AFEM.GROUPS 4` (8, 16, 32, 64, 128)" in text
    assert [int(r.row.split("_")[1]) for r in get_table("clip_senet", "table_v").rows] == [
        4, 8, 16, 32, 64, 128]


# ---------------------------------------------------------------------------------------------
# SEM learning rate / weight decay
# ---------------------------------------------------------------------------------------------
def test_sem_has_its_own_lr_and_weight_decay_group():
    torch.manual_seed(0)
    cfg = tiny("MODEL.CLIPSENET.SEM.LR_FACTOR", 0.01, "MODEL.CLIPSENET.SEM.WEIGHT_DECAY", 0.0,
               "SOLVER.WEIGHT_DECAY", 0.0, "SOLVER.WEIGHT_DECAY_NORM", 0.0)
    model = build_model(cfg)
    optimizer, _ = CLIPSENetTrainer.build_optimizer(cfg, model)
    base = cfg.SOLVER.BASE_LR
    sem_numel = sum(p.numel() for p in model.sem.parameters())
    by_lr = {}
    for g in optimizer.param_groups:
        by_lr[round(g["lr"] / base, 6)] = by_lr.get(round(g["lr"] / base, 6), 0) + g[
            "params"][0].numel()
    assert by_lr[0.01] == sem_numel  # the SEM, and only the SEM, at lr x 0.01
    assert set(by_lr) == {0.01, 1.0}
    # Adam's first step moves a parameter by lr * g / (|g| + eps), i.e. by ~lr (up to float32
    # rounding of the parameter: the tolerance is 2 %, the two groups differ 100x)
    sem_before = [p.detach().clone() for p in model.sem.parameters()]
    fuse_before = model.fusion.fc.weight.detach().clone()
    model.train()
    optimizer.zero_grad()
    sum(model(batch()).values()).backward()
    optimizer.step()
    sem_step = max((p.detach() - b).abs().max().item()
                   for p, b in zip(model.sem.parameters(), sem_before))
    fuse_step = (model.fusion.fc.weight.detach() - fuse_before).abs().max().item()
    assert sem_step == pytest.approx(0.01 * base, rel=2e-2)
    assert fuse_step == pytest.approx(base, rel=2e-2)


def test_sem_weight_decay_applies_to_the_whole_sem():
    cfg = tiny("MODEL.CLIPSENET.SEM.WEIGHT_DECAY", 0.01, "SOLVER.WEIGHT_DECAY", 0.0005,
               "SOLVER.WEIGHT_DECAY_NORM", 0.0005)
    model = build_model(cfg)
    optimizer, _ = CLIPSENetTrainer.build_optimizer(cfg, model)
    by_wd = {}
    for g in optimizer.param_groups:
        by_wd[g["weight_decay"]] = by_wd.get(g["weight_decay"], 0) + g["params"][0].numel()
    assert by_wd[0.01] == sum(p.numel() for p in model.sem.parameters())
    assert {g["lr"] for g in optimizer.param_groups} == {cfg.SOLVER.BASE_LR}  # factor 1
    with pytest.raises(ValueError, match="LR_FACTOR"):
        bad = tiny("MODEL.CLIPSENET.SEM.LR_FACTOR", -1.0)
        CLIPSENetTrainer.build_optimizer(bad, build_model(bad))


# ---------------------------------------------------------------------------------------------
# AFEM weight shapes, viewpoint grouping
# ---------------------------------------------------------------------------------------------
def test_afem_per_channel_group_weights_hand_example():
    afem = AFEM(3, 4, groups=2, weight_shape="channel")
    assert afem.group_weight.shape == (2, 2)
    with torch.no_grad():
        afem.group_weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
    h = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    # h + w * h with w = [1, -2, 0.5, 0]
    assert torch.equal(afem.enhance(h), torch.tensor([[2.0, -2.0, 4.5, 4.0]]))
    group = AFEM(3, 4, groups=2)
    assert group.group_weight.shape == (2,)
    with pytest.raises(ValueError, match="WEIGHT_SHAPE"):
        AFEM(3, 4, groups=2, weight_shape="element")
    model = build_model(tiny("MODEL.CLIPSENET.AFEM.WEIGHT_SHAPE", "channel"))
    assert model.afem.group_weight.shape == (32, 512 // 32)


def test_four_viewpoint_grouping():
    # Wang et al.: 0 front, 1 rear, 2 left, 3 left front, 4 left rear, 5 right, 6 right front,
    # 7 right rear -> 0 front, 1 front side, 2 rear side, 3 rear; pure sides -> unknown (-1)
    assert VIEWPOINT_GROUPS["paper4"] == (0, 3, -1, 1, 2, -1, 1, 2)
    cv = CameraViewEmbedding(4, 2, 4, camera=False, view_map=VIEWPOINT_GROUPS["paper4"], coe=1.0)
    out = cv(9, viewids=torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, -1]))
    table = cv.view_embed.detach()
    expected = table[torch.tensor([0, 3, 4, 1, 2, 4, 1, 2, 4])]  # row 4 = unknown
    assert torch.equal(out.detach(), expected)
    with pytest.raises(ValueError, match="NUM_VIEWPOINTS"):
        CameraViewEmbedding(4, 2, 3, camera=False, view_map=VIEWPOINT_GROUPS["paper4"])
    model = build_model(tiny("MODEL.CLIPSENET.CV.VIEWPOINT_GROUPS", "paper4",
                             "MODEL.CLIPSENET.CV.NUM_VIEWPOINTS", 4))
    assert model.cv.view_embed.shape == (5, 512)
    with pytest.raises(ValueError, match="VIEWPOINT_GROUPS"):
        build_model(tiny("MODEL.CLIPSENET.CV.VIEWPOINT_GROUPS", "paper5"))
