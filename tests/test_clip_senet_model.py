"""CLIPSENet meta-architecture: train/eval contracts, loss switch, ablations, CV, backbones."""

import pytest
import torch
from fastreid.modeling import build_model
from fastreid.solver import build_optimizer

import fastreid_plugins  # noqa: F401
from fastreid_plugins import seeding
from fastreid_plugins.clip_senet import CLIPSENet, add_clip_senet_config, build_cnn_backbone
from fastreid_plugins.config import get_cfg
from fastreid_plugins.losses.supcon import supcon_loss
from tests.helpers import make_cfg

DEMO = "configs/demo/clip_senet.yml"


def model_for(*opts, seed=0):
    """The demo model (4 classes; last stride 2 keeps these CPU tests fast)."""
    torch.manual_seed(seed)
    cfg = make_cfg(DEMO, ["MODEL.HEADS.NUM_CLASSES", 4, "MODEL.BACKBONE.LAST_STRIDE", 2, *opts],
                   [add_clip_senet_config])
    return build_model(cfg), cfg


@pytest.fixture(scope="module")
def demo_model():
    return model_for()[0]


def batch(n=8, size=32):
    g = torch.Generator().manual_seed(0)
    return {"images": torch.rand(n, 3, size, size, generator=g) * 255,
            "targets": torch.arange(n) % 4, "camids": torch.arange(n) % 3,
            "sie_camids": torch.arange(n) % 3,
            "viewids": torch.tensor([0, 1, 2, 3, 4, 5, 6, -1])[:n]}


def test_train_and_eval_contracts(demo_model):
    model = demo_model
    assert isinstance(model, CLIPSENet)
    b = batch()
    original = b["images"].clone()
    model.train()
    losses = model(b)
    assert set(losses) == {"loss_cls", "loss_supcon"}
    assert all(v.dim() == 0 and torch.isfinite(v) and v.requires_grad for v in losses.values())
    sum(losses.values()).backward()
    assert model.sem.vit.embeddings.patch_embedding.weight.grad is not None  # SEM is trained
    assert model.cv.view_embed.grad is not None
    assert torch.equal(b["images"], original)  # the caller's batch is not modified
    model.eval()
    with torch.no_grad():
        feats = model(b)
        bare = model(b["images"])  # bare tensor (ONNX export): unknown camera / viewpoint
    assert feats.shape == (8, 512) and bare.shape == (8, 512)  # f_fuse dim = R18's 512
    assert not torch.allclose(feats, bare)  # the side information is used


def test_supcon_is_on_the_pre_bnneck_feature(demo_model):
    model = demo_model
    model.train()
    b = batch()
    torch.manual_seed(5)
    loss = model(b)["loss_supcon"]
    torch.manual_seed(5)
    with torch.no_grad():
        f = model.features(b)
    assert loss.item() == pytest.approx(supcon_loss(f, b["targets"], 0.1).item(), rel=1e-5)


def test_triplet_switch_and_unknown_loss():
    model, _ = model_for("MODEL.LOSSES.NAME", '("CrossEntropyLoss", "TripletLoss")')
    model.train()
    assert set(model(batch())) == {"loss_cls", "loss_triplet"}
    with pytest.raises(ValueError, match="CircleLoss"):
        model_for("MODEL.LOSSES.NAME", '("CrossEntropyLoss", "CircleLoss")')


@pytest.mark.parametrize("opts, dim, parts", [
    (("MODEL.CLIPSENET.COMBINE", "concat"), 1024, {"sem", "afem", "cv"}),
    (("MODEL.CLIPSENET.AFEM.ENABLED", False), 512, {"sem", "cv"}),
    (("MODEL.CLIPSENET.AFEM.GROUPS", 4), 512, {"sem", "afem", "cv"}),
    (("MODEL.CLIPSENET.AFEM.GROUPS", 128), 512, {"sem", "afem", "cv"}),
    (("MODEL.CLIPSENET.CV.CAMERA", False, "MODEL.CLIPSENET.CV.VIEWPOINT", False), 512,
     {"sem", "afem"}),
    (("MODEL.CLIPSENET.SEM.ENABLED", False, "MODEL.CLIPSENET.AFEM.ENABLED", False,
      "MODEL.CLIPSENET.CV.POSITION", "feature"), 512, {"cv"}),
    (("MODEL.CLIPSENET.SEM.ENABLED", False, "MODEL.CLIPSENET.AFEM.ENABLED", False,
      "MODEL.CLIPSENET.CV.CAMERA", False, "MODEL.CLIPSENET.CV.VIEWPOINT", False), 512, set()),
    (("MODEL.CLIPSENET.SEM.USE_PROJECTION", False), 512, {"sem", "afem", "cv"}),
])
def test_ablation_switches(opts, dim, parts):
    model, _ = model_for(*opts)
    present = {name for name in ("sem", "afem", "cv") if getattr(model, name) is not None}
    assert present == parts
    model.eval()
    with torch.no_grad():
        assert model(batch(4)).shape == (4, dim)
        model.train()
        assert all(torch.isfinite(v) for v in model(batch(4)).values())


def test_cv_position_feature_and_sem_tokens(demo_model):
    feat = demo_model
    assert feat.cv.dim == 512  # the default: the final feature
    tok, _ = model_for("MODEL.CLIPSENET.CV.POSITION", "sem_tokens")
    assert tok.cv.dim == 64  # the SEM width: added to its tokens
    for m in (tok, feat):
        m.eval()
        b = batch(4)
        with torch.no_grad():
            a = m(b)
            b2 = dict(b, viewids=torch.tensor([5, 5, 5, 5]))
            assert not torch.allclose(a, m(b2))  # viewpoint changes the feature


def test_cv_keys_in_training_and_eval_fallbacks(demo_model):
    model = demo_model
    model.train()
    b = batch()
    with pytest.raises(KeyError, match="sie_camids"):
        model({k: v for k, v in b.items() if k != "sie_camids"})
    with pytest.raises(KeyError, match="viewids"):
        model({k: v for k, v in b.items() if k != "viewids"})
    model.eval()
    with torch.no_grad():
        # test loaders' camids are raw camera indices: used when sie_camids is absent
        no_sie = {k: v for k, v in b.items() if k != "sie_camids"}
        assert torch.allclose(model(no_sie), model(b))
        unknown = dict(b, sie_camids=torch.full((8,), -1), viewids=torch.full((8,), -1))
        bare = model(b["images"])
        assert torch.allclose(model(unknown), bare, atol=1e-6)
    with pytest.raises(ValueError, match="NUM_CAMERAS"), torch.no_grad():
        model(dict(b, sie_camids=torch.full((8,), 20)))


def test_config_errors():
    with pytest.raises(ValueError, match="AFEM.GROUPS"):
        model_for("MODEL.CLIPSENET.AFEM.GROUPS", 3)
    with pytest.raises(ValueError, match="CV.POSITION 'sem_tokens' needs the SEM"):
        model_for("MODEL.CLIPSENET.SEM.ENABLED", False, "MODEL.CLIPSENET.AFEM.ENABLED", False,
                  "MODEL.CLIPSENET.CV.POSITION", "sem_tokens")
    with pytest.raises(ValueError, match="AFEM.ENABLED needs"):
        model_for("MODEL.CLIPSENET.SEM.ENABLED", False, "MODEL.CLIPSENET.CV.POSITION", "feature")
    with pytest.raises(ValueError, match="CV.POSITION"):
        model_for("MODEL.CLIPSENET.CV.POSITION", "input")
    with pytest.raises(FileNotFoundError, match="SEM.WEIGHTS is empty"):
        model_for("MODEL.CLIPSENET.SEM.PRETRAIN", True)
    with pytest.raises(ValueError, match="COMBINE"):
        model_for("MODEL.CLIPSENET.COMBINE", "max")
    with pytest.raises(KeyError, match="add_clip_senet_config"):
        cfg = get_cfg()
        cfg.MODEL.META_ARCHITECTURE = "CLIPSENet"
        build_model(cfg)


def test_sem_loaded_from_config_and_frozen(tmp_path):
    src, _ = model_for(seed=1)
    torch.save(src.sem.state_dict(), tmp_path / "sem.pth")
    model, cfg = model_for("MODEL.CLIPSENET.SEM.PRETRAIN", True,
                           "MODEL.CLIPSENET.SEM.WEIGHTS", str(tmp_path / "sem.pth"),
                           "MODEL.CLIPSENET.SEM.FREEZE", True, seed=2)
    for k, v in src.sem.state_dict().items():
        assert torch.equal(model.sem.state_dict()[k], v)
    assert not any(p.requires_grad for p in model.sem.parameters())
    # the optimizer gets no SEM parameter, and a training step leaves the SEM untouched
    optimizer, _ = build_optimizer(cfg, model)
    sem_ids = {id(p) for p in model.sem.parameters()}
    assert not any(id(p) in sem_ids for g in optimizer.param_groups for p in g["params"])
    before = {k: v.clone() for k, v in model.sem.state_dict().items()}
    plain = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    sum(model(batch()).values()).backward()
    plain.step()
    assert all(torch.equal(before[k], v) for k, v in model.sem.state_dict().items())
    assert model.cv.view_embed.grad is not None  # CV still trains through the frozen encoder


def test_no_text_tower_in_the_model(demo_model):
    model = demo_model
    kinds = {type(m).__name__ for m in model.modules()}
    assert not any("Text" in k for k in kinds)
    assert not any("text" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("name, depth, ibn, se, cls", [
    ("build_resnext_backbone", "101x", True, False, "ResNeXt"),  # the paper's CNN backbone
    ("build_resnet_backbone", "50x", True, False, "ResNet"),     # Table VI
    ("build_resnet_backbone", "101x", True, False, "ResNet"),
    ("build_resnet_backbone", "101x", True, True, "ResNet"),     # SE-ResNet101-IBN
])
def test_table_vi_backbones_by_config(name, depth, ibn, se, cls):
    cfg = get_cfg(add_clip_senet_config)
    cfg.merge_from_list(["MODEL.BACKBONE.NAME", name, "MODEL.BACKBONE.DEPTH", depth,
                         "MODEL.BACKBONE.WITH_IBN", ibn, "MODEL.BACKBONE.WITH_SE", se,
                         "MODEL.BACKBONE.PRETRAIN", False])
    with torch.device("meta"):  # structure only: no memory, no initialisation cost
        bb = build_cnn_backbone(cfg)
    kinds = {type(m).__name__ for m in bb.modules()}
    assert type(bb).__name__ == cls
    assert bb.layer4[-1].conv3.out_channels == 2048  # f_cnn is 2048-d (FEAT_DIM)
    assert len(bb.layer3) == (23 if depth == "101x" else 6)
    assert ("IBN" in kinds) == ibn and ("SELayer" in kinds) == se


def test_resnext_imagenet_weights_from_local_file(tmp_path):
    """IBN-Net's release format (a plain state dict with fc.*) loads; a wrong file fails clearly."""
    cfg = get_cfg(add_clip_senet_config)
    # DEPTH 50x: the same key layout as 101x (resnext101_ibn_a-6ace051d.pth) at half the size
    cfg.merge_from_list(["MODEL.BACKBONE.NAME", "build_resnext_backbone", "MODEL.BACKBONE.DEPTH",
                         "50x", "MODEL.BACKBONE.WITH_IBN", True, "MODEL.BACKBONE.PRETRAIN", False])
    torch.manual_seed(0)
    ref = build_cnn_backbone(cfg)
    state = dict(ref.state_dict(), **{"fc.weight": torch.zeros(1000, 2048),
                                      "fc.bias": torch.zeros(1000)})
    torch.save(state, tmp_path / "resnext101_ibn_a.pth")
    cfg.merge_from_list(["MODEL.BACKBONE.PRETRAIN", True,
                         "MODEL.BACKBONE.PRETRAIN_PATH", str(tmp_path / "resnext101_ibn_a.pth")])
    torch.manual_seed(1)
    loaded = build_cnn_backbone(cfg)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in loaded.state_dict().items())
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    cfg.MODEL.BACKBONE.PRETRAIN_PATH = str(tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not fit the backbone"):
        build_cnn_backbone(cfg)
    cfg.MODEL.BACKBONE.PRETRAIN_PATH = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_cnn_backbone(cfg)


PAPER_CONFIGS = ["configs/veri/clip_senet.yml"] + [
    f"configs/{d}/clip_senet_{s}.yml" for d in ("vehicleid", "veriwild")
    for s in ("small", "medium", "large")]


@pytest.mark.parametrize("path", PAPER_CONFIGS)
def test_paper_configs(path):
    cfg = make_cfg(path, (), [add_clip_senet_config])
    c = cfg.MODEL.CLIPSENET
    assert cfg.MODEL.META_ARCHITECTURE == "CLIPSENet"
    assert (cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.DEPTH, cfg.MODEL.BACKBONE.WITH_IBN) == \
        ("build_resnext_backbone", "101x", True)
    assert c.SEM.VARIANT == "TinyCLIP-ViT-61M-32" and c.AFEM.GROUPS == 32 and c.COMBINE == "sum"
    assert (c.SEM.INPUT_SIZE, c.SEM.POS_EMBED_INTERP, c.SEM.LR_FACTOR) == (320, "bilinear", 1.0)
    assert c.CV.POSITION == "feature" and c.AFEM.WEIGHT_SHAPE == "group"
    assert tuple(cfg.INPUT.SIZE_TRAIN) == (320, 320) and tuple(cfg.INPUT.SIZE_TEST) == (320, 320)
    assert cfg.SOLVER.IMS_PER_BATCH == 128 and cfg.DATALOADER.NUM_INSTANCE == 8  # 16 ids x 8
    assert cfg.MODEL.LOSSES.NAME == ("CrossEntropyLoss", "SupConLoss")
    assert cfg.MODEL.LOSSES.CE.EPSILON == 0.1 and cfg.SOLVER.OPT == "Adam"
    assert seeding.resolve_seed(cfg, draw=False) == 3407  # the paper's global seed (IV-B1)
    if "veri/" in path:
        assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_EPOCH, cfg.SOLVER.SCHED) == \
            (0.0005, 24, "CosineAnnealingLR")
        assert cfg.TEST.RERANK.ENABLED and c.CV.CAMERA and c.CV.VIEWPOINT
        assert cfg.DATASETS.NAMES == ("VeRiViewpoint",)
    else:
        assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_EPOCH, cfg.SOLVER.SCHED) == \
            (0.00035, 120, "MultiStepLR")
        assert cfg.SOLVER.WARMUP_ITERS > 0 and not cfg.TEST.RERANK.ENABLED
        assert not c.CV.VIEWPOINT and ("veriwild" in path) == c.CV.CAMERA
        size = path.rsplit("_", 1)[1][:-4].capitalize()
        assert cfg.DATASETS.TESTS[0].startswith(size)
    # tests run offline with an empty torch.hub cache: the paper weights are a clear error
    with pytest.raises(FileNotFoundError, match="PRETRAIN_PATH"):
        build_model(cfg)


@pytest.mark.parametrize("opts", [
    (),                                                              # the paper's model
    ("MODEL.CLIPSENET.AFEM.GROUPS", 4), ("MODEL.CLIPSENET.AFEM.GROUPS", 128),   # Table V
    ("MODEL.CLIPSENET.SEM.VARIANT", "TinyCLIP-ViT-40M-32"),
    ("MODEL.BACKBONE.NAME", "build_resnet_backbone", "MODEL.BACKBONE.WITH_SE", True),  # Table VI
])
def test_paper_model_structure(opts):
    """The full-size model from the VeRi config (weights off), built on the meta device."""
    cfg = make_cfg("configs/veri/clip_senet.yml",
                   ["MODEL.BACKBONE.PRETRAIN", False, "MODEL.CLIPSENET.SEM.PRETRAIN", False,
                    "MODEL.HEADS.NUM_CLASSES", 576, *opts], [add_clip_senet_config])
    with torch.device("meta"):
        model = CLIPSENet(cfg)  # (build_model would move it to a device)
    assert model.fusion.fc.in_features == 2048 + 512 and model.fusion.fc.out_features == 2048
    assert model.heads.weight.shape == (576, 2048)
    assert model.cv.camera_embed.shape[0] == 21 and model.cv.view_embed.shape[0] == 9
    assert model.cv.dim == 2048  # CV at the final feature
    # the SEM at the paper's 320 px: a 10 x 10 grid of /32 patches + the class token
    assert model.sem.image_size == 320
    assert model.sem.vit.embeddings.position_embedding.weight.shape == (101, model.sem.hidden_size)


def test_onnx_export_bare_tensor(demo_model, tmp_path):
    """The eval forward on a bare image tensor exports to ONNX and matches onnxruntime."""
    import onnxruntime as ort
    model = demo_model.eval()
    x = torch.rand(2, 3, 64, 64) * 255
    path = str(tmp_path / "clip_senet.onnx")
    torch.onnx.export(model, (x,), path, input_names=["images"], output_names=["feat"],
                      dynamo=False, opset_version=17)
    out = ort.InferenceSession(path).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert out.shape == ref.shape == (2, 512)
    assert abs(out - ref).max() < 1e-4
