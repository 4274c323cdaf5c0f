"""CLIP-SENet building blocks: AFEM (Eq. 4), fusion (Eq. 3/5), CV embeddings, SEM (TinyCLIP)."""

import pytest
import torch
import torch.nn.functional as F

import fastreid_plugins  # noqa: F401
from fastreid_plugins.clip_senet import (
    AFEM,
    TINYCLIP_VARIANTS,
    CameraViewEmbedding,
    FeatureFusion,
    SemanticExtractionModule,
    SEMWeightsError,
    load_sem_weights,
    tinyclip_parameter_counts,
    tinyclip_vision_config,
)
from fastreid_plugins.clip_senet.tinyclip import CLIP_MEAN, CLIP_STD, count_parameters

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            patch_size=16, image_size=32, projection_dim=24)


def tiny_sem(seed=0, **kw):
    torch.manual_seed(seed)
    return SemanticExtractionModule(tinyclip_vision_config("TinyCLIP-ViT-61M-32", **{**TINY, **kw}))


# ---------------------------------------------------------------------------------------- AFEM
def test_afem_enhance_hand_example():
    afem = AFEM(4, 4, groups=2)
    with torch.no_grad():
        afem.group_weight.copy_(torch.tensor([0.5, -1.0]))
    h = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    # groups [1, 2] * 0.5 and [3, 4] * -1, added to h
    assert torch.allclose(afem.enhance(h), torch.tensor([[1.5, 3.0, 0.0, 0.0]]))


def test_afem_forward_hand_example():
    """h = ReLU(BN(Wx + b)) with W = I, b = 0 and an identity BN; then h + w_g * h_g."""
    afem = AFEM(4, 4, groups=4).eval()
    with torch.no_grad():
        afem.fc.weight.copy_(torch.eye(4))
        afem.fc.bias.zero_()
        afem.bn.running_mean.zero_()
        afem.bn.running_var.fill_(1.0 - afem.bn.eps)  # BN(x) = x exactly
        afem.bn.weight.fill_(1.0)
        afem.bn.bias.zero_()
        afem.group_weight.copy_(torch.tensor([2.0, 0.0, -0.5, 1.0]))
    x = torch.tensor([[1.0, -3.0, 2.0, 0.5]])
    # ReLU -> [1, 0, 2, 0.5]; * (1 + w) = [3, 0, 1, 1]
    assert torch.allclose(afem(x), torch.tensor([[3.0, 0.0, 1.0, 1.0]]), atol=1e-6)


def test_afem_group_validation_and_init():
    with pytest.raises(ValueError, match="AFEM.GROUPS"):
        AFEM(512, 2048, groups=33)
    with pytest.raises(ValueError, match="groups G=0"):
        AFEM(512, 2048, groups=0)
    for g in (4, 8, 16, 32, 64, 128):  # Table V's range divides 2048
        assert AFEM(512, 2048, groups=g).group_weight.shape == (g,)
    torch.manual_seed(0)
    w = AFEM(8, 4096, groups=4096).group_weight.detach()  # initialised from N(0, 1)
    assert abs(w.mean().item()) < 0.06 and abs(w.std().item() - 1.0) < 0.06


# ------------------------------------------------------------------------------ fusion, Eq. 3/5
def test_fusion_eq3_and_eq5():
    fus = FeatureFusion(2, 1, 2, combine="sum")
    with torch.no_grad():
        fus.fc.weight.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, -1.0]]))
        fus.fc.bias.copy_(torch.tensor([0.5, 0.0]))
    f_cnn, f_clip = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0]])
    f_fuse = torch.tensor([[1 + 3 + 0.5, 4 - 3.0]])  # FC([f_cnn; f_clip])
    assert torch.allclose(fus(f_cnn, f_clip), f_fuse)  # AFEM off: f = f_fuse
    f_afem = torch.tensor([[10.0, 20.0]])
    assert torch.allclose(fus(f_cnn, f_clip, f_afem), f_afem + f_fuse)
    fus.combine = "concat"
    assert torch.allclose(fus(f_cnn, f_clip, f_afem), torch.cat([f_afem, f_fuse], 1))
    assert fus.combined_dim() == 4 and fus.combined_dim(with_afem=False) == 2
    with pytest.raises(ValueError, match="COMBINE"):
        FeatureFusion(2, 1, 2, combine="max")


# ------------------------------------------------------------------------------- CV embeddings
def test_cv_embedding_values_and_unknown():
    cv = CameraViewEmbedding(6, num_cameras=3, num_viewpoints=8, coe=3.0)
    assert cv.camera_embed.shape == (4, 6) and cv.view_embed.shape == (9, 6)  # + unknown row
    cams, views = torch.tensor([0, 2, -1]), torch.tensor([7, -1, 3])
    out = cv(3, camids=cams, viewids=views)
    E_c, E_v = cv.camera_embed.detach(), cv.view_embed.detach()
    expect = 3.0 * torch.stack([E_c[0] + E_v[7], E_c[2] + E_v[8], E_c[3] + E_v[3]])
    assert torch.allclose(out, expect)
    # the unknown entries are their own rows, not one of the known cameras / viewpoints
    assert not any(torch.allclose(E_v[8], E_v[i]) for i in range(8))
    # absent side information = unknown for every image
    assert torch.allclose(cv(2), 3.0 * (E_c[3] + E_v[8]).expand(2, 6))
    # each embedding switches off on its own
    cam_only = CameraViewEmbedding(6, 3, 8, camera=True, viewpoint=False, coe=1.0)
    assert cam_only.view_embed is None
    assert torch.allclose(cam_only(1, camids=torch.tensor([1])), cam_only.camera_embed[1:2])
    view_only = CameraViewEmbedding(6, 3, 8, camera=False, viewpoint=True, coe=1.0)
    assert view_only.camera_embed is None
    # gradients reach the embeddings
    out.sum().backward()
    assert cv.camera_embed.grad.abs().sum() > 0 and cv.view_embed.grad[8].abs().sum() > 0


def test_cv_embedding_errors():
    cv = CameraViewEmbedding(4, num_cameras=3, num_viewpoints=8)
    with pytest.raises(ValueError, match="NUM_CAMERAS"):
        cv(2, camids=torch.tensor([0, 3]), viewids=torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="NUM_VIEWPOINTS"):
        cv(1, camids=torch.tensor([0]), viewids=torch.tensor([-2]))
    with pytest.raises(ValueError, match="batch of 2"):
        cv(2, camids=torch.tensor([0]))
    with pytest.raises(ValueError, match="camera and/or viewpoint"):
        CameraViewEmbedding(4, 3, 8, camera=False, viewpoint=False)


# ------------------------------------------------------------------------------------- SEM
def expected_vision_params(width, layers, mlp, patch, size, proj):
    """CLIP ViT parameter count written out from the architecture (independent of the code)."""
    tokens = (size // patch) ** 2 + 1
    embed = 3 * patch * patch * width + width + tokens * width
    attn, norms = 4 * (width * width + width), 2 * 2 * width
    layer = attn + norms + (width * mlp + mlp) + (mlp * width + width)
    return embed + 2 * width + layers * layer + 2 * width + width * proj


def test_sem_default_builds_offline_with_tinyclip_61m_shape():
    sem = SemanticExtractionModule(tinyclip_vision_config("TinyCLIP-ViT-61M-32"))
    cfg = sem.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.patch_size,
            cfg.image_size, sem.out_dim) == (640, 12, 10, 32, 224, 512)
    assert count_parameters(sem) == expected_vision_params(640, 12, 2560, 32, 224, 512)
    sem.eval()
    with torch.no_grad():
        out = sem(torch.rand(1, 3, 320, 320) * 255)  # a re-id batch at the paper's 320 x 320
    assert out.shape == (1, 512) and torch.isfinite(out).all()
    names = [n for n, _ in sem.named_modules()]
    assert not any("text" in n for n in names)


def test_parameter_counts_sem_vs_full_tinyclip():
    """The paper: dropping the text tower about halves TinyCLIP's parameters."""
    c61 = tinyclip_parameter_counts("TinyCLIP-ViT-61M-32")
    c40 = tinyclip_parameter_counts("TinyCLIP-ViT-40M-32")
    assert c61["sem"] == expected_vision_params(640, 12, 2560, 32, 224, 512)  # 61.4 M
    assert c40["sem"] == expected_vision_params(512, 12, 2048, 32, 224, 512)  # 39.7 M
    # text tower written out: token + position embedding, layers, final LN, projection
    for c, layers in ((c61, 9), (c40, 6)):
        w = 512
        layer = 4 * (w * w + w) + 4 * w + (w * 4 * w + 4 * w) + (4 * w * w + w)
        text = 49408 * w + 77 * w + layers * layer + 2 * w + w * 512
        assert c["text"] == text + 1  # + CLIP's logit scale
        assert c["full"] == c["sem"] + c["text"]
        assert 0.4 < c["ratio"] < 0.6
    print(f"\nTinyCLIP-ViT-61M-32: SEM {c61['sem'] / 1e6:.2f} M of {c61['full'] / 1e6:.2f} M "
          f"({100 * c61['ratio']:.1f} %); TinyCLIP-ViT-40M-32: SEM {c40['sem'] / 1e6:.2f} M of "
          f"{c40['full'] / 1e6:.2f} M ({100 * c40['ratio']:.1f} %)")


def test_sem_clip_input_conversion():
    sem = tiny_sem()
    # an image whose pixels equal CLIP's mean becomes all zeros; size is the encoder's
    img = (torch.tensor(CLIP_MEAN) * 255).view(1, 3, 1, 1).expand(2, 3, 48, 80).clone()
    x = sem.to_clip_input(img)
    assert x.shape == (2, 3, 32, 32) and x.abs().max() < 1e-5
    img = torch.rand(1, 3, 64, 64) * 255
    manual = F.interpolate(img / 255, size=(32, 32), mode="bilinear", align_corners=False)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    manual = (manual - mean) / std
    assert torch.allclose(sem.to_clip_input(img), manual, atol=1e-5)


def test_sem_matches_transformers_clip_and_loads_hf_directory(tmp_path):
    """A transformers CLIPModel directory (text tower included) loads; outputs equal CLIP's."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig

    vision = tinyclip_vision_config("TinyCLIP-ViT-61M-32", **TINY)
    text = CLIPTextConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, vocab_size=100, max_position_embeddings=8,
                          bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=24)
    torch.manual_seed(1)
    clip = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                projection_dim=24)).eval()
    clip.save_pretrained(tmp_path / "tiny_clip")
    sem = tiny_sem(seed=2).eval()
    info = load_sem_weights(sem, str(tmp_path / "tiny_clip"))
    assert info["ignored_text"] > 0
    img = torch.rand(2, 3, 40, 40) * 255
    with torch.no_grad():
        ref = clip.get_image_features(pixel_values=sem.to_clip_input(img))
        ref = getattr(ref, "pooler_output", ref)
        assert torch.allclose(sem(img), ref, atol=1e-5)


def test_sem_state_dict_round_trip(tmp_path):
    src = tiny_sem(seed=3).eval()
    path = tmp_path / "sem.pth"
    torch.save(src.state_dict(), path)
    dst = tiny_sem(seed=4).eval()
    img = torch.rand(3, 3, 64, 64) * 255
    with torch.no_grad():
        assert not torch.allclose(src(img), dst(img))
        load_sem_weights(dst, str(path))
        assert torch.allclose(src(img), dst(img))


def test_sem_weight_errors(tmp_path):
    sem = tiny_sem()
    with pytest.raises(FileNotFoundError, match="SEM.WEIGHTS is empty"):
        load_sem_weights(sem, "")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sem_weights(sem, str(tmp_path / "missing.pth"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_sem_weights(sem, str(tmp_path / "empty_dir"))
    # a differently sized encoder: every mismatched shape is listed
    torch.save(tiny_sem(hidden_size=48, num_attention_heads=2).state_dict(), tmp_path / "w48.pth")
    with pytest.raises(SEMWeightsError,
                       match=r"(?s)shape mismatch \(38\).*checkpoint \(48,\) vs SEM \(32,\)"):
        load_sem_weights(sem, str(tmp_path / "w48.pth"))
    # missing / unexpected keys
    state = tiny_sem().state_dict()
    state.pop("proj.weight")
    state["vit.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(SEMWeightsError, match=r"(?s)missing in checkpoint \(1\).*proj.weight.*"
                                              r"unexpected in checkpoint \(1\).*vit.extra.weight"):
        load_sem_weights(sem, str(tmp_path / "partial.pth"))
    # an open_clip-format file is converted (tests/test_tinyclip_weights.py); a fragment of one
    # is refused, naming its format and what is missing
    torch.save({"visual.conv1.weight": torch.zeros(1)}, tmp_path / "openclip.pt")
    with pytest.raises(SEMWeightsError, match=r"(?s)open_clip format.*missing in checkpoint"):
        load_sem_weights(sem, str(tmp_path / "openclip.pt"))
    # a transformers directory whose config is another encoder
    from transformers import CLIPVisionModel
    other = tinyclip_vision_config("TinyCLIP-ViT-61M-32", **{**TINY, "num_hidden_layers": 3})
    CLIPVisionModel(other).save_pretrained(tmp_path / "other")
    with pytest.raises(SEMWeightsError, match="num_hidden_layers: checkpoint 3 vs configured 2"):
        load_sem_weights(sem, str(tmp_path / "other"))


def test_sem_freeze_and_variants():
    sem = tiny_sem().freeze()
    assert sem.frozen and not any(p.requires_grad for p in sem.parameters())
    assert set(TINYCLIP_VARIANTS) == {"TinyCLIP-ViT-61M-32", "TinyCLIP-ViT-40M-32"}
    cfg40 = tinyclip_vision_config("TinyCLIP-ViT-40M-32")
    assert (cfg40.hidden_size, cfg40.num_hidden_layers, cfg40.num_attention_heads) == (512, 12, 8)
    with pytest.raises(ValueError, match="SEM.VARIANT"):
        tinyclip_vision_config("TinyCLIP-ViT-8M-16")
    with pytest.raises(ValueError, match="not divisible"):
        tinyclip_vision_config("TinyCLIP-ViT-61M-32", hidden_size=30, num_attention_heads=4)
