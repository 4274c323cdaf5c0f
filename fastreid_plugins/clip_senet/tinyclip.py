"""Semantic Extraction Module (SEM): TinyCLIP's image encoder, built offline with ``transformers``.

CLIP-SENet's SEM is the *image encoder only* of TinyCLIP; the text tower is never built. The
architecture hyper-parameters of the supported TinyCLIP variants are kept here
(:data:`TINYCLIP_VARIANTS`) so the encoder builds without network access, with random weights;
pretrained weights come from a local path (:func:`load_sem_weights`).

Hyper-parameters (TinyCLIP's official open_clip model configs, microsoft/Cream
``TinyCLIP/src/open_clip/model_configs/``; ViT head width 64, MLP ratio 4, ``nn.GELU`` since
TinyCLIP's ``CLIP(quick_gelu=False)`` default is used, LayerNorm eps 1e-5, CLIP normalisation):

================================  =====  ======  =====  =====  ====  ====================
variant                           width  layers  heads  patch  size  text (width x layers)
================================  =====  ======  =====  =====  ====  ====================
TinyCLIP-ViT-61M-32 (Text-29M)    640    12      10     32     224   512 x 9, 8 heads
TinyCLIP-ViT-40M-32 (Text-19M)    512    12      8      32     224   512 x 6, 8 heads
================================  =====  ======  =====  =====  ====  ====================

Both project to a 512-d joint embedding. Hugging Face checkpoints:
``wkcn/TinyCLIP-ViT-61M-32-Text-29M-LAION400M`` and ``wkcn/TinyCLIP-ViT-40M-32-Text-19M-LAION400M``.

Reference:
    - Wu et al., "TinyCLIP: CLIP Distillation via Affinity Mimicking and Weight Inheritance",
      ICCV 2023.
    - Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
      ICML 2021 (CLIP; image normalisation constants).
    - Lu, Fu, Chu, Wang, Xu, "CLIP-SENet: CLIP-based Semantic Enhancement Network for Vehicle
      Re-identification", arXiv:2502.16815 (2025), Sec. III (SEM).
"""

import json
import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.base import state_dict_mismatch

__all__ = ["TINYCLIP_VARIANTS", "CLIP_MEAN", "CLIP_STD", "SemanticExtractionModule",
           "SEMWeightsError", "tinyclip_vision_config", "tinyclip_full_config", "load_sem_weights",
           "read_state_dict", "count_parameters", "tinyclip_parameter_counts"]

logger = logging.getLogger(__name__)

#: CLIP's image normalisation (on [0, 1] RGB), used by TinyCLIP (open_clip OPENAI_DATASET_MEAN/STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Architecture of each supported TinyCLIP variant (vision tower, and the text tower for counting).
TINYCLIP_VARIANTS = {
    "TinyCLIP-ViT-61M-32": {
        "hf_name": "wkcn/TinyCLIP-ViT-61M-32-Text-29M-LAION400M",
        "vision": dict(hidden_size=640, num_hidden_layers=12, num_attention_heads=10,
                       intermediate_size=2560, patch_size=32, image_size=224),
        "text": dict(hidden_size=512, num_hidden_layers=9, num_attention_heads=8,
                     intermediate_size=2048, max_position_embeddings=77, vocab_size=49408),
        "projection_dim": 512,
    },
    "TinyCLIP-ViT-40M-32": {
        "hf_name": "wkcn/TinyCLIP-ViT-40M-32-Text-19M-LAION400M",
        "vision": dict(hidden_size=512, num_hidden_layers=12, num_attention_heads=8,
                       intermediate_size=2048, patch_size=32, image_size=224),
        "text": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                     intermediate_size=2048, max_position_embeddings=77, vocab_size=49408),
        "projection_dim": 512,
    },
}
_COMMON = dict(hidden_act="gelu", layer_norm_eps=1e-5)
#: Vision fields that change parameter shapes or the computation: they must match a checkpoint.
_SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "patch_size", "image_size")


class SEMWeightsError(ValueError):
    """SEM weights are in an unsupported format or do not match the configured encoder."""


def _variant(name):
    if name not in TINYCLIP_VARIANTS:
        raise ValueError(f"MODEL.CLIPSENET.SEM.VARIANT={name!r} is not a known TinyCLIP variant; "
                         f"choose one of {sorted(TINYCLIP_VARIANTS)}.")
    return TINYCLIP_VARIANTS[name]


def tinyclip_vision_config(variant="TinyCLIP-ViT-61M-32", **overrides):
    """The ``transformers.CLIPVisionConfig`` of a TinyCLIP variant's image encoder.

    Args:
        variant (str): a key of :data:`TINYCLIP_VARIANTS`.
        **overrides: ``CLIPVisionConfig`` fields to replace (``None`` / 0 / "" keep the variant's
            value), e.g. a small random-init encoder for CPU runs.

    Returns:
        transformers.CLIPVisionConfig

    Raises:
        ValueError: unknown variant, or a width not divisible by the number of heads.
    """
    from transformers import CLIPVisionConfig

    v = _variant(variant)
    fields = dict(v["vision"], projection_dim=v["projection_dim"], **_COMMON)
    fields.update({k: val for k, val in overrides.items() if val not in (None, 0, "")})
    if fields["hidden_size"] % fields["num_attention_heads"]:
        raise ValueError(f"SEM hidden size {fields['hidden_size']} is not divisible by its "
                         f"{fields['num_attention_heads']} attention heads")
    if fields["image_size"] % fields["patch_size"]:
        raise ValueError(f"SEM input size {fields['image_size']} is not a multiple of its patch "
                         f"size {fields['patch_size']}")
    return CLIPVisionConfig(**fields)


def tinyclip_full_config(variant="TinyCLIP-ViT-61M-32"):
    """The ``transformers.CLIPConfig`` of the whole TinyCLIP (image + text towers).

    Only used to *count* what dropping the text tower saves (:func:`tinyclip_parameter_counts`);
    the model never builds the text tower.
    """
    from transformers import CLIPConfig, CLIPTextConfig

    v = _variant(variant)
    vision = tinyclip_vision_config(variant)
    text = CLIPTextConfig(**v["text"], projection_dim=v["projection_dim"], **_COMMON)
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                      projection_dim=v["projection_dim"])


def count_parameters(module):
    """Number of parameters (``numel``) of ``module``."""
    return sum(p.numel() for p in module.parameters())


def tinyclip_parameter_counts(variant="TinyCLIP-ViT-61M-32"):
    """Parameters of the SEM (image encoder + projection) vs the full TinyCLIP (+ text tower).

    Both models are built on the ``meta`` device (no memory, no weights).

    Returns:
        dict: ``{"sem": int, "full": int, "text": int, "ratio": sem / full}``.
    """
    from transformers import CLIPModel

    with torch.device("meta"):
        full = CLIPModel(tinyclip_full_config(variant))
        sem = SemanticExtractionModule(tinyclip_vision_config(variant), use_projection=True)
    n_full, n_sem = count_parameters(full), count_parameters(sem)
    return {"sem": n_sem, "full": n_full, "text": n_full - n_sem, "ratio": n_sem / n_full}


def _vision_transformer(config):
    """``CLIPVisionModel(config)``'s transformer (transformers 5 has no ``.vision_model``)."""
    from transformers import CLIPVisionModel

    model = CLIPVisionModel(config)
    return getattr(model, "vision_model", model)


class SemanticExtractionModule(nn.Module):
    """TinyCLIP image encoder on a re-id batch: f_clip = proj(LN(CLS token of ViT(x))).

    The module takes the re-id pipeline's images as they are (``(B, 3, H, W)`` RGB in [0, 255],
    any H, W) and converts them itself: scale to [0, 1], bilinear resize to the encoder's input
    size (224 for TinyCLIP; the aspect ratio is not kept), CLIP normalisation. An optional
    per-image ``token_bias`` (B, D) is added to every token after the patch + position embedding
    and before the pre-LayerNorm, which is where TransReID adds its side-information embedding.

    Reference:
        - CLIP-SENet Sec. III-B / Fig. 2 (SEM: TinyCLIP image encoder, text tower dropped).
        - Wu et al., ICCV 2023 (TinyCLIP); Radford et al., ICML 2021 (CLIP ViT, normalisation).
        - He et al., "TransReID", ICCV 2021, Eq. 6 (SIE added to the token embeddings).

    Args:
        config (transformers.CLIPVisionConfig): encoder architecture
            (:func:`tinyclip_vision_config`).
        use_projection (bool): apply CLIP's visual projection (output dim ``projection_dim``) as in
            CLIP's image embedding; otherwise output the post-LN CLS token (``hidden_size``).
        freeze (bool): fix the encoder's parameters (``requires_grad=False``).

    Shape:
        - images: (B, 3, H, W) in [0, 255]; token_bias: (B, hidden_size) or None
        - output: (B, out_dim)
    """

    def __init__(self, config, use_projection=True, freeze=False):
        super().__init__()
        self.config = config
        self.image_size = int(config.image_size)
        self.hidden_size = int(config.hidden_size)
        self.vit = _vision_transformer(config)
        self.proj = nn.Linear(config.hidden_size, config.projection_dim, bias=False) \
            if use_projection else None
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, std=config.hidden_size ** -0.5)
        self.out_dim = int(config.projection_dim if use_projection else config.hidden_size)
        self.register_buffer("clip_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1) * 255.0, False)
        self.register_buffer("clip_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255.0, False)
        self.frozen = False
        if freeze:
            self.freeze()

    def freeze(self):
        """Fix the encoder's parameters (they then get no gradient and no optimizer entry)."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.frozen = True
        return self

    def to_clip_input(self, images):
        """(B, 3, H, W) [0, 255] re-id images -> (B, 3, S, S) CLIP-normalised encoder input."""
        x = images.float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False)
        return (x - self.clip_mean) / self.clip_std

    def forward(self, images, token_bias=None):
        pixels = self.to_clip_input(images).to(self.vit.embeddings.patch_embedding.weight.dtype)
        tokens = self.vit.embeddings(pixels)  # (B, 1 + N, D): CLS + patches, + positions
        if token_bias is not None:
            tokens = tokens + token_bias.unsqueeze(1).to(tokens.dtype)
        hidden = self.vit.encoder(inputs_embeds=self.vit.pre_layrnorm(tokens))
        hidden = hidden.last_hidden_state if hasattr(hidden, "last_hidden_state") else hidden[0]
        pooled = self.vit.post_layernorm(hidden[:, 0])
        return self.proj(pooled) if self.proj is not None else pooled


# --------------------------------------------------------------------------------------------
# Loading local weights
# --------------------------------------------------------------------------------------------
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TEXT_PREFIXES = ("text_model.", "text_projection.", "logit_scale")
_VIT_PREFIXES = ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")


def read_state_dict(path):
    """Read a ``.safetensors`` or a torch (``.bin``/``.pt``/``.pth``) state-dict file.

    A dict with a ``"state_dict"`` or ``"model"`` entry is unwrapped.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        SEMWeightsError: the file holds no state dict.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SEM weights file not found: {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(path)
    else:
        from fastreid_plugins.compat import load_checkpoint_file
        state = load_checkpoint_file(path)
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise SEMWeightsError(f"{path!r} holds no state dict (got {type(state).__name__})")
    return state


def _config_mismatch(sem_config, hf_json):
    vision = hf_json.get("vision_config", hf_json)
    diffs = []
    for field in _SHAPE_FIELDS:
        if field in vision and int(vision[field]) != int(getattr(sem_config, field)):
            diffs.append(f"{field}: checkpoint {vision[field]} vs configured "
                         f"{getattr(sem_config, field)}")
    return vision, diffs


def resolve_weights(path):
    """``(weights_file, config_json_or_None)`` for a file or a ``transformers`` directory.

    Raises:
        FileNotFoundError: the path, or a weights file inside the directory, does not exist.
    """
    if not path:
        raise FileNotFoundError(
            "MODEL.CLIPSENET.SEM.PRETRAIN is True but MODEL.CLIPSENET.SEM.WEIGHTS is empty. "
            "Download a TinyCLIP checkpoint in Hugging Face format (e.g. "
            "https://huggingface.co/wkcn/TinyCLIP-ViT-61M-32-Text-29M-LAION400M), set "
            "MODEL.CLIPSENET.SEM.WEIGHTS to its local directory (or to a state-dict file), or set "
            "MODEL.CLIPSENET.SEM.PRETRAIN False for a randomly initialised encoder.")
    if os.path.isdir(path):
        files = [os.path.join(path, f) for f in _WEIGHT_FILES
                 if os.path.isfile(os.path.join(path, f))]
        if not files:
            raise FileNotFoundError(f"No weights in the transformers directory {path!r}: expected "
                                    f"one of {', '.join(_WEIGHT_FILES)}.")
        cfg_file = os.path.join(path, "config.json")
        hf_json = json.load(open(cfg_file)) if os.path.isfile(cfg_file) else None
        return files[0], hf_json
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.CLIPSENET.SEM.WEIGHTS={path!r} does not exist (expected a "
                                "transformers checkpoint directory or a state-dict file).")
    return path, None


def hf_activation(path):
    """The ``hidden_act`` of a ``transformers`` directory's vision config, or None."""
    if path and os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        vision = json.load(open(os.path.join(path, "config.json")))
        vision = vision.get("vision_config", vision)
        return vision.get("hidden_act")
    return None


def _map_key(key):
    """Checkpoint key -> SEM key, ``None`` for text-tower keys (dropped), unchanged if unknown."""
    if key.startswith("module."):
        key = key[len("module."):]
    if key.startswith(_TEXT_PREFIXES):
        return None
    if key.startswith("vision_model."):
        key = "vit." + key[len("vision_model."):]
    elif key.startswith("visual_projection."):
        key = "proj." + key[len("visual_projection."):]
    elif key.startswith(_VIT_PREFIXES):
        key = "vit." + key
    if key.endswith("embeddings.position_ids"):  # a non-persistent buffer in recent transformers
        return None
    return key


def load_sem_weights(sem, path):
    """Load TinyCLIP image-encoder weights from a local path into ``sem``, strictly.

    Accepted sources (the text tower's entries are ignored; it is never built):

    * a ``transformers`` directory (``config.json`` + ``model.safetensors`` or
      ``pytorch_model.bin``), as published on the Hugging Face hub for TinyCLIP; its vision
      config must match the configured encoder;
    * a state-dict file (``.safetensors``/``.bin``/``.pt``/``.pth``) with ``transformers`` CLIP
      keys (``vision_model.*``, ``visual_projection.weight``) or this module's own keys
      (``vit.*``, ``proj.weight``, e.g. ``sem.state_dict()``).

    Args:
        sem (SemanticExtractionModule): the module to fill.
        path (str): directory or file.

    Returns:
        dict: ``{"file": str, "loaded": int, "ignored_text": int}``.

    Raises:
        FileNotFoundError: empty or missing path, or no weights file in the directory.
        SEMWeightsError: open_clip-format checkpoint, a directory config that does not match the
            encoder (fields listed), or missing / unexpected / wrongly shaped keys (all listed).
    """
    weights_file, hf_json = resolve_weights(path)
    if hf_json is not None:
        _, diffs = _config_mismatch(sem.config, hf_json)
        if diffs:
            raise SEMWeightsError(
                f"The checkpoint in {path!r} is a different encoder than the configured SEM:\n  "
                + "\n  ".join(diffs)
                + "\nSet MODEL.CLIPSENET.SEM.VARIANT (and the SEM size overrides) to match it.")
    state = read_state_dict(weights_file)
    if any(k.startswith(("visual.", "_image_encoder.", "module.visual.")) for k in state):
        raise SEMWeightsError(
            f"{weights_file!r} looks like an open_clip / TinyCLIP-repository checkpoint; use the "
            "Hugging Face transformers format instead (e.g. the wkcn/TinyCLIP-* repositories).")
    own = sem.state_dict()
    mapped, ignored_text = {}, 0
    for k, v in state.items():
        nk = _map_key(k)
        if nk is None:
            ignored_text += not k.endswith("position_ids")
            continue
        if nk.startswith("proj.") and sem.proj is None:
            continue  # the checkpoint's projection is not used (SEM.USE_PROJECTION False)
        mapped[nk] = v
    report = state_dict_mismatch(own, mapped, what="SEM", limit=20)
    if report:
        raise SEMWeightsError(
            f"SEM weights {weights_file!r} do not match the configured TinyCLIP image encoder"
            + report + "\nCheck MODEL.CLIPSENET.SEM.VARIANT, the SEM size overrides and "
            "SEM.USE_PROJECTION.")
    sem.load_state_dict(mapped, strict=True)
    logger.info(f"Loaded SEM weights from {weights_file} ({len(mapped)} tensors; "
                f"{ignored_text} text-tower tensors ignored)")
    return {"file": weights_file, "loaded": len(mapped), "ignored_text": ignored_text}
