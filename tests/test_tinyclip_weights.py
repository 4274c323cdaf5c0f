"""TinyCLIP weights for CLIP-SENet's SEM: open_clip-format .pt converted on load (checked against
open_clip itself), Hugging Face hub ids (cache, offline errors), position-embedding resizing for
the 320x320 re-id input, and the activation travelling with the state dict (--eval-only)."""

import contextlib
import json
import socket

import open_clip  # noqa: E402  (setup.py's dev extra: the independent reference, never skipped)
import pytest
import torch

import fastreid_plugins  # noqa: F401
from fastreid_plugins.clip_senet import SemanticExtractionModule, SEMWeightsError
from fastreid_plugins.clip_senet.tinyclip import (
    CLIP_MEAN,
    CLIP_STD,
    load_sem_weights,
    resize_position_embedding,
    skip_random_init,
    tinyclip_vision_config,
)

# TinyCLIP-ViT-61M-32's image tower (microsoft/Cream TinyCLIP/src/open_clip/model_configs/
# TinyCLIP-ViT-61M-32-Text-29M.json): width 640, 12 layers, patch 32, 224 px, head width 64
VIT_61M = dict(image_size=224, layers=12, width=640, patch_size=32)
# a small text tower: it is dropped on load, only its presence in the file matters here
SMALL_TEXT = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
TINY_VIT = dict(image_size=64, layers=2, width=32, patch_size=16, head_width=16)
TINY_SEM = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                patch_size=16, image_size=64, projection_dim=24)


def random_open_clip(vision, seed=0, embed_dim=512):
    """An open_clip CLIP ViT whose every image-tower tensor is random (LayerNorms included)."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(embed_dim=embed_dim, vision_cfg=dict(vision), text_cfg=dict(SMALL_TEXT))
    with torch.no_grad():
        for p in model.visual.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def sem_for(seed=1, fast=False, **overrides):
    """A SEM (TinyCLIP-ViT-61M-32 unless overridden); ``fast`` skips random init (every tensor
    is loaded next)."""
    torch.manual_seed(seed)
    config = tinyclip_vision_config("TinyCLIP-ViT-61M-32", **overrides)
    with skip_random_init() if fast else contextlib.nullcontext():
        return SemanticExtractionModule(config).eval()


def clip_normalised(img):
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (img / 255 - mean) / std


def save_open_clip_checkpoint(model, path):
    """As open_clip's training script saves a (DDP) run: {"epoch", "name", "state_dict"} with
    ``module.`` prefixes."""
    torch.save({"epoch": 1, "name": "tinyclip",
                "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)


def test_open_clip_61m_checkpoint_gives_open_clips_image_embedding(tmp_path):
    ref = random_open_clip(VIT_61M)
    path = tmp_path / "TinyCLIP-ViT-61M-32-Text-29M-LAION400M.pt"
    save_open_clip_checkpoint(ref, path)
    # the fixture is open_clip's own format: open_clip's loader reads it back (strictly)
    assert not open_clip.load_checkpoint(ref, str(path)).missing_keys

    sem = sem_for(fast=True)  # TinyCLIP-ViT-61M-32 as configured by the project
    info = load_sem_weights(sem, str(path))
    assert info["format"] == "open_clip" and info["ignored_text"] > 0
    img = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        ours = sem(img)
        theirs = ref.encode_image(clip_normalised(img))
    assert ours.shape == theirs.shape == (1, 512)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_tinyclip_zoo_prefixes_convert_the_same(tmp_path):
    """TinyCLIP's own checkpoints name the tower ``_image_encoder.(module.)visual.*``."""
    ref = random_open_clip(TINY_VIT, seed=3, embed_dim=24)
    state = {}
    for k, v in ref.state_dict().items():
        if k.startswith("visual."):
            state["_image_encoder.module." + k] = v
        elif k == "logit_scale":
            state["_logit_scale.module.logit_scale"] = v
        else:
            state["_text_encoder.module." + k] = v
    torch.save({"state_dict": state}, tmp_path / "zoo.pt")
    sem = sem_for(**TINY_SEM)
    load_sem_weights(sem, str(tmp_path / "zoo.pt"))
    img = torch.rand(3, 3, 64, 64) * 255
    with torch.no_grad():
        assert torch.allclose(sem(img), ref.encode_image(clip_normalised(img)), atol=1e-5)


def test_open_clip_non_vit_entries_are_refused(tmp_path):
    ref = random_open_clip(TINY_VIT, seed=4, embed_dim=24)
    state = dict(ref.state_dict())
    state["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(32)  # layer scale
    torch.save(state, tmp_path / "ls.pt")
    with pytest.raises(SEMWeightsError, match=r"ls_1\.gamma"):
        load_sem_weights(sem_for(**TINY_SEM), str(tmp_path / "ls.pt"))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_position_embedding_resize_equals_open_clips(mode):
    """The grid part is resized as open_clip's ``resize_pos_embed`` does (class token kept)."""
    src = random_open_clip(TINY_VIT, seed=5, embed_dim=24)  # 4x4 grid
    dst = random_open_clip(dict(TINY_VIT, image_size=96), seed=6, embed_dim=24)  # 6x6 grid
    state = {"visual.positional_embedding": src.visual.positional_embedding.detach().clone()}
    open_clip.model.resize_pos_embed(state, dst, interpolation=mode)
    ours = resize_position_embedding(src.visual.positional_embedding.detach(), 37, mode)
    assert ours.shape == (37, 32)
    assert torch.allclose(ours, state["visual.positional_embedding"], atol=1e-6)
    assert torch.equal(ours[0], src.visual.positional_embedding[0])  # class token untouched
    const = torch.ones(17, 4)  # a constant grid stays constant
    assert torch.allclose(resize_position_embedding(const, 101, mode), torch.ones(101, 4))


def test_sem_at_another_input_size_loads_a_resized_checkpoint(tmp_path):
    """TinyCLIP's 224 px weights for a SEM at the paper's 320 px: here 64 px -> 96 px."""
    ref = random_open_clip(TINY_VIT, seed=7, embed_dim=24)
    save_open_clip_checkpoint(ref, tmp_path / "tiny.pt")
    sem96 = sem_for(**dict(TINY_SEM, image_size=96))
    with pytest.raises(SEMWeightsError, match="POS_EMBED_INTERP"):
        load_sem_weights(sem96, str(tmp_path / "tiny.pt"))
    load_sem_weights(sem96, str(tmp_path / "tiny.pt"), pos_embed_interp="bilinear")
    expected = resize_position_embedding(ref.visual.positional_embedding.detach(), 37, "bilinear")
    assert torch.equal(sem96.vit.embeddings.position_embedding.weight.detach(), expected)
    img = torch.rand(2, 3, 96, 96) * 255
    with torch.no_grad():
        assert sem96(img).shape == (2, 24)  # runs at 96 px without resizing the image


def test_sem_input_size_through_the_model_config(tmp_path):
    """SEM.INPUT_SIZE + SEM.POS_EMBED_INTERP from the config (the paper config uses 320)."""
    from fastreid.modeling import build_model

    from fastreid_plugins.clip_senet import add_clip_senet_config
    from tests.helpers import make_cfg

    ref = random_open_clip(dict(TINY_VIT, width=64), seed=8, embed_dim=64)
    save_open_clip_checkpoint(ref, tmp_path / "tiny.pt")
    cfg = make_cfg("configs/demo/clip_senet.yml", [
        "MODEL.HEADS.NUM_CLASSES", 4, "MODEL.CLIPSENET.SEM.PRETRAIN", True,
        "MODEL.CLIPSENET.SEM.WEIGHTS", str(tmp_path / "tiny.pt"),
        "MODEL.CLIPSENET.SEM.INPUT_SIZE", 112, "MODEL.CLIPSENET.SEM.NUM_HEADS", 4,
        "MODEL.CLIPSENET.SEM.INTERMEDIATE_SIZE", 256], [add_clip_senet_config])
    model = build_model(cfg)
    assert model.sem.image_size == 112
    assert model.sem.vit.embeddings.position_embedding.weight.shape == (1 + 7 * 7, 64)


# ---------------------------------------------------------------------------------------------
# Hugging Face hub ids
# ---------------------------------------------------------------------------------------------
REPO = "wkcn/TinyCLIP-ViT-61M-32-Text-29M-LAION400M"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a socket was opened: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def fill_hub_cache(cache, repo, files, revision="0123456789abcdef0123456789abcdef01234567"):
    """Write ``repo`` into a Hugging Face cache folder in the hub's layout
    (models--org--name/{refs/main, snapshots/<revision>/<file>})."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(revision)
    snap = root / "snapshots" / revision
    snap.mkdir(parents=True)
    for name, write in files.items():
        write(snap / name)
    return snap


def test_hub_id_offline_not_cached_names_the_id_and_how_to_download(hub_cache, no_network,
                                                                     monkeypatch):
    monkeypatch.setenv("FASTREID_PLUGINS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as e:
        load_sem_weights(sem_for(**TINY_SEM), REPO)
    msg = str(e.value)
    assert REPO in msg and f"hf download {REPO}" in msg and str(hub_cache) in msg
    monkeypatch.delenv("FASTREID_PLUGINS_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # transformers' / huggingface_hub's own switch
    with pytest.raises(FileNotFoundError, match="downloads are off"):
        load_sem_weights(sem_for(**TINY_SEM), REPO)


def test_hub_id_from_the_cache_offline_with_its_activation(hub_cache, no_network, monkeypatch):
    """A cached hub id loads offline; its config.json's activation builds the SEM."""
    from fastreid.modeling import build_model
    from transformers import CLIPVisionModel

    from fastreid_plugins.clip_senet import add_clip_senet_config
    from tests.helpers import make_cfg

    vision = tinyclip_vision_config("TinyCLIP-ViT-61M-32", **dict(
        TINY_SEM, hidden_size=64, projection_dim=64, intermediate_size=256, image_size=64,
        hidden_act="quick_gelu"))
    torch.manual_seed(9)
    hf = CLIPVisionModel(vision).eval()
    fill_hub_cache(hub_cache, REPO, {
        "config.json": lambda p: p.write_text(json.dumps(vision.to_dict())),
        "model.safetensors": lambda p: hf.save_pretrained(p.parent)})
    monkeypatch.setenv("FASTREID_PLUGINS_OFFLINE", "1")
    cfg = make_cfg("configs/demo/clip_senet.yml", [
        "MODEL.HEADS.NUM_CLASSES", 4, "MODEL.CLIPSENET.SEM.PRETRAIN", True,
        "MODEL.CLIPSENET.SEM.WEIGHTS", REPO, "MODEL.CLIPSENET.SEM.USE_PROJECTION", False,
        "MODEL.CLIPSENET.SEM.NUM_HEADS", 2, "MODEL.CLIPSENET.SEM.INTERMEDIATE_SIZE", 256],
        [add_clip_senet_config])
    model = build_model(cfg)
    assert model.sem.hidden_act == "quick_gelu"
    assert torch.equal(model.sem.vit.embeddings.patch_embedding.weight,
                       hf.vision_model.embeddings.patch_embedding.weight
                       if hasattr(hf, "vision_model") else hf.embeddings.patch_embedding.weight)


# ---------------------------------------------------------------------------------------------
# --eval-only builds the SEM that was trained
# ---------------------------------------------------------------------------------------------
def test_activation_travels_with_the_state_dict():
    trained = sem_for(seed=10, **dict(TINY_SEM, hidden_act="quick_gelu"))
    rebuilt = sem_for(seed=11, **TINY_SEM)  # --eval-only: no config.json, the variant's gelu
    assert rebuilt.hidden_act == "gelu"
    img = torch.rand(2, 3, 64, 64) * 255
    rebuilt.load_state_dict(trained.state_dict())
    assert rebuilt.hidden_act == "quick_gelu"
    with torch.no_grad():
        assert torch.equal(rebuilt(img), trained(img))
    # a state dict without the entry (written before it existed) keeps the built activation
    old = {k: v for k, v in trained.state_dict().items() if k != "hidden_act_code"}
    plain = sem_for(seed=12, **TINY_SEM)
    plain.load_state_dict(old)
    assert plain.hidden_act == "gelu"


def test_hub_id_online_is_downloaded_once_into_the_cache(hub_cache, tmp_path, monkeypatch):
    """Online, a hub id is fetched (here from a hub-like HTTP server on 127.0.0.1) into the
    Hugging Face cache; the second build reads the cache without a request."""
    import hashlib
    import http.server
    import threading

    from huggingface_hub import constants
    from transformers import CLIPVisionModelWithProjection

    vision = tinyclip_vision_config("TinyCLIP-ViT-61M-32", **dict(TINY_SEM, projection_dim=24))
    torch.manual_seed(13)
    src = tmp_path / "src"
    CLIPVisionModelWithProjection(vision).save_pretrained(src)
    files = {name: (src / name).read_bytes() for name in ("config.json", "model.safetensors")}
    commit = "fedcba9876543210fedcba9876543210fedcba98"
    requests = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def _send(self, body):
            name = self.path.rsplit("/", 1)[-1]
            if not self.path.startswith(f"/{REPO}/resolve/") or name not in files:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.end_headers()
                return
            data = files[name]
            self.send_response(200)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", '"' + hashlib.sha1(data).hexdigest() + '"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_HEAD(self):
            requests.append(("HEAD", self.path))
            self._send(False)

        def do_GET(self):
            requests.append(("GET", self.path))
            self._send(True)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("FASTREID_PLUGINS_OFFLINE", raising=False)
    try:
        sem = sem_for(**dict(TINY_SEM, projection_dim=24))
        load_sem_weights(sem, REPO)
        assert any(m == "GET" and p.endswith("/model.safetensors") for m, p in requests)
        snap = hub_cache / ("models--" + REPO.replace("/", "--")) / "snapshots" / commit
        assert (snap / "model.safetensors").is_file() and (snap / "config.json").is_file()
        # offline now: the cached copy is enough
        monkeypatch.setenv("FASTREID_PLUGINS_OFFLINE", "1")
        before = len(requests)
        again = sem_for(seed=14, **dict(TINY_SEM, projection_dim=24))
        load_sem_weights(again, REPO)
        assert len(requests) == before
        for (k, a), b in zip(sem.state_dict().items(), again.state_dict().values()):
            assert torch.equal(a, b), k
    finally:
        server.shutdown()


def test_eval_only_model_equals_the_trained_one_with_a_config_json_activation(tmp_path):
    """Training built the SEM from a folder whose config.json says quick_gelu; --eval-only
    (every PRETRAIN off, MODEL.WEIGHTS loaded strictly) computes the same features."""
    from fastreid.modeling import build_model
    from transformers import CLIPVisionModelWithProjection

    from fastreid_plugins.clip_senet import add_clip_senet_config
    from fastreid_plugins.config import get_cfg
    from fastreid_plugins.engine import load_model_weights, prepare_for_host
    from tests.helpers import ROOT

    vision = tinyclip_vision_config("TinyCLIP-ViT-61M-32", **dict(
        TINY_SEM, hidden_size=64, projection_dim=64, intermediate_size=128, image_size=64,
        hidden_act="quick_gelu"))
    CLIPVisionModelWithProjection(vision).save_pretrained(tmp_path / "tinyclip")

    def cfg_for(eval_only):
        cfg = get_cfg(add_clip_senet_config)
        cfg.merge_from_file(f"{ROOT}/configs/demo/clip_senet.yml")
        cfg.merge_from_list(["MODEL.HEADS.NUM_CLASSES", 4, "MODEL.DEVICE", "cpu",
                             "MODEL.CLIPSENET.SEM.PRETRAIN", True,
                             "MODEL.CLIPSENET.SEM.WEIGHTS", str(tmp_path / "tinyclip"),
                             "MODEL.CLIPSENET.SEM.INTERMEDIATE_SIZE", 128])
        return prepare_for_host(cfg, eval_only=eval_only)

    torch.manual_seed(0)
    trained = build_model(cfg_for(False)).eval()
    assert trained.sem.hidden_act == "quick_gelu"
    torch.save({"model": trained.state_dict()}, tmp_path / "model_final.pth")
    cfg = cfg_for(True)
    assert not cfg.MODEL.CLIPSENET.SEM.PRETRAIN
    rebuilt = build_model(cfg).eval()
    assert rebuilt.sem.hidden_act == "gelu"  # nothing tells the builder
    load_model_weights(rebuilt, str(tmp_path / "model_final.pth"))
    assert rebuilt.sem.hidden_act == "quick_gelu"
    img = torch.rand(2, 3, 112, 112) * 255
    with torch.no_grad():
        assert torch.equal(rebuilt(img), trained(img))
