"""Semantic Extraction Module (SEM): TinyCLIP's image encoder, built offline with ``transformers``.

CLIP-SENet's SEM is the *image encoder only* of TinyCLIP; the text tower is never built. The
architecture hyper-parameters of the supported TinyCLIP variants are kept here
(:data:`TINYCLIP_VARIANTS`) so the encoder builds without network access, with random weights;
pretrained weights come from a local Hugging Face folder, a hub id (downloaded into the Hugging
Face cache when online) or an open_clip / TinyCLIP model-zoo ``.pt`` converted on load
(:func:`load_sem_weights`).

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

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_checkpoint_file
from ..errors import SEMWeightsError
from ..modeling.base import state_dict_mismatch
from ..modeling.pretrained import is_offline

if TYPE_CHECKING:
    from transformers import CLIPConfig, CLIPVisionConfig

__all__ = ["TINYCLIP_VARIANTS", "CLIP_MEAN", "CLIP_STD", "SemanticExtractionModule",
           "SEMWeightsError", "tinyclip_vision_config", "tinyclip_full_config", "load_sem_weights",
           "read_state_dict", "count_parameters", "tinyclip_parameter_counts", "ACTIVATIONS",
           "POS_EMBED_MODES", "resize_position_embedding", "convert_open_clip_state_dict",
           "resolve_weights", "resolve_weights_activation", "is_offline"]

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
#: Activations a SEM can use; the index is stored in the SEM's state dict (``hidden_act_code``).
ACTIVATIONS = ("gelu", "quick_gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu")
#: Position-embedding resize modes (``SEM.POS_EMBED_INTERP``; "" refuses a different grid).
POS_EMBED_MODES = ("bilinear", "bicubic")
#: Vision fields that change parameter shapes or the computation: they must match a checkpoint.
_SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "patch_size", "image_size")


def _variant(name):
    if name not in TINYCLIP_VARIANTS:
        raise ValueError(f"MODEL.CLIPSENET.SEM.VARIANT={name!r} is not a known TinyCLIP variant; "
                         f"choose one of {sorted(TINYCLIP_VARIANTS)}.")
    return TINYCLIP_VARIANTS[name]


def tinyclip_vision_config(variant: str = "TinyCLIP-ViT-61M-32",
                           **overrides: Any) -> CLIPVisionConfig:
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
    if fields["hidden_act"] not in ACTIVATIONS:
        raise ValueError(f"SEM activation {fields['hidden_act']!r} (MODEL.CLIPSENET.SEM.HIDDEN_ACT "
                         f"or the weights' config.json) is not one of {ACTIVATIONS}")
    if fields["hidden_size"] % fields["num_attention_heads"]:
        raise ValueError(f"SEM hidden size {fields['hidden_size']} is not divisible by its "
                         f"{fields['num_attention_heads']} attention heads")
    if fields["image_size"] % fields["patch_size"]:
        raise ValueError(f"SEM input size {fields['image_size']} is not a multiple of its patch "
                         f"size {fields['patch_size']}")
    return CLIPVisionConfig(**fields)


def tinyclip_full_config(variant: str = "TinyCLIP-ViT-61M-32") -> CLIPConfig:
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


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (``numel``) of ``module``."""
    return sum(p.numel() for p in module.parameters())


def tinyclip_parameter_counts(variant: str = "TinyCLIP-ViT-61M-32"
                              ) -> Dict[str, Union[int, float]]:
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


@contextlib.contextmanager
def skip_random_init():
    """Skip random initialisation while building a SEM whose every tensor is loaded next
    (``transformers``' ``no_init_weights``; a no-op where that helper does not exist)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # other transformers versions: initialise as usual
        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        yield


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

    The MLP activation is part of the state dict (buffer ``hidden_act_code``, an index into
    :data:`ACTIVATIONS`): loading a state dict trained with another activation switches the
    module to it (logged), so a SEM rebuilt without its pretrained ``config.json`` (e.g. for
    ``--eval-only``) computes what the trained one computed.

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

    def __init__(self, config: CLIPVisionConfig, use_projection: bool = True,
                 freeze: bool = False) -> None:
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
        self.register_buffer("hidden_act_code",
                             torch.tensor(ACTIVATIONS.index(config.hidden_act), dtype=torch.long))
        self.frozen = False
        if freeze:
            self.freeze()

    @property
    def hidden_act(self):
        """The MLP activation's name (a key of :data:`ACTIVATIONS`)."""
        return self.config.hidden_act

    def set_activation(self, name: str) -> SemanticExtractionModule:
        """Use activation ``name`` in every MLP of the encoder (in place).

        Raises:
            ValueError: ``name`` is not in :data:`ACTIVATIONS`.
        """
        from transformers.activations import ACT2FN

        if name not in ACTIVATIONS:
            raise ValueError(f"SEM activation {name!r} is not one of {ACTIVATIONS}")
        for layer in self.vit.encoder.layers:
            layer.mlp.activation_fn = ACT2FN[name]
        self.config.hidden_act = name
        self.hidden_act_code.fill_(ACTIVATIONS.index(name))
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "hidden_act_code"
        if key not in state_dict:  # checkpoints written before the activation was stored
            state_dict[key] = self.hidden_act_code.detach().clone()
        else:
            code = int(state_dict[key])
            if not 0 <= code < len(ACTIVATIONS):
                raise SEMWeightsError(f"{key}={code} names no known activation {ACTIVATIONS}")
            if ACTIVATIONS[code] != self.hidden_act:
                logger.info(f"SEM activation: {self.hidden_act} -> {ACTIVATIONS[code]} "
                            "(from the loaded state dict)")
                self.set_activation(ACTIVATIONS[code])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def freeze(self) -> SemanticExtractionModule:
        """Fix the encoder's parameters (they then get no gradient and no optimizer entry)."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.frozen = True
        return self

    def to_clip_input(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) [0, 255] re-id images -> (B, 3, S, S) CLIP-normalised encoder input."""
        x = images.float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False)
        return (x - self.clip_mean) / self.clip_std

    def forward(self, images: torch.Tensor,
                token_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        pixels = self.to_clip_input(images).to(self.vit.embeddings.patch_embedding.weight.dtype)
        tokens = self.vit.embeddings(pixels)  # (B, 1 + N, D): CLS + patches, + positions
        if token_bias is not None:
            tokens = tokens + token_bias.unsqueeze(1).to(tokens.dtype)
        hidden = self.vit.encoder(inputs_embeds=self.vit.pre_layrnorm(tokens))
        hidden = hidden.last_hidden_state if hasattr(hidden, "last_hidden_state") else hidden[0]
        pooled = self.vit.post_layernorm(hidden[:, 0])
        return self.proj(pooled) if self.proj is not None else pooled


# --------------------------------------------------------------------------------------------
# Loading pretrained weights: local folder / file, Hugging Face hub id, open_clip .pt
# --------------------------------------------------------------------------------------------
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TEXT_PREFIXES = ("text_model.", "text_projection.", "logit_scale")
_VIT_PREFIXES = ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_POS_KEY = "vit.embeddings.position_embedding.weight"


def read_state_dict(path: str) -> Dict[str, Any]:
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
        state = load_checkpoint_file(path)
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise SEMWeightsError(f"{path!r} holds no state dict (got {type(state).__name__})")
    return state


def _config_mismatch(sem_config, hf_json, allow_image_size=False):
    vision = hf_json.get("vision_config", hf_json)
    diffs = []
    for field in _SHAPE_FIELDS:
        if allow_image_size and field == "image_size":
            continue
        if field in vision and int(vision[field]) != int(getattr(sem_config, field)):
            diffs.append(f"{field}: checkpoint {vision[field]} vs configured "
                         f"{getattr(sem_config, field)}")
    return vision, diffs


def _predownload_hint(repo_id):
    return (f"Pre-download it on a machine with network access: `hf download {repo_id}` "
            f"(huggingface_hub >= 0.34; older: `huggingface-cli download {repo_id}`) fills the "
            "Hugging Face cache (~/.cache/huggingface/hub, or $HF_HUB_CACHE / $HF_HOME) that this "
            f"lookup reads; or `hf download {repo_id} --local-dir DIR` and set "
            "MODEL.CLIPSENET.SEM.WEIGHTS to DIR.")


def _hub_snapshot(repo_id):
    """The local folder holding ``repo_id``'s ``config.json`` and weights, from the Hugging Face
    cache, downloading them (``huggingface_hub``, the library ``transformers`` uses) unless
    offline."""
    from huggingface_hub import constants, hf_hub_download

    offline = is_offline()
    cache = constants.HF_HUB_CACHE
    try:
        cfg_file = hf_hub_download(repo_id, "config.json", local_files_only=offline)
    except Exception as e:  # offline cache miss, no network, unknown repo, ...
        if offline:
            raise FileNotFoundError(
                f"MODEL.CLIPSENET.SEM.WEIGHTS={repo_id!r} is a Hugging Face hub id that is not in "
                f"the local cache ({cache}), and downloads are off (FASTREID_PLUGINS_OFFLINE / "
                f"HF_HUB_OFFLINE). " + _predownload_hint(repo_id)) from e
        raise FileNotFoundError(
            f"Could not download the Hugging Face hub id MODEL.CLIPSENET.SEM.WEIGHTS={repo_id!r} "
            f"from {constants.ENDPOINT} into {cache} ({type(e).__name__}: {e}). "
            + _predownload_hint(repo_id)) from e
    folder = os.path.dirname(cfg_file)
    errors = []
    for name in _WEIGHT_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return folder
        try:
            hf_hub_download(repo_id, name, local_files_only=offline)
            return folder
        except Exception as e:  # this repo may only have the other file
            errors.append(f"{name}: {type(e).__name__}")
    raise FileNotFoundError(f"The hub repository {repo_id!r} has no weights file in {folder} "
                            f"({'; '.join(errors)}). " + _predownload_hint(repo_id))


def resolve_weights(path: str) -> Tuple[str, Optional[Dict[str, Any]]]:
    """``(weights_file, config_json_or_None)`` for a file, a ``transformers`` directory, or a
    Hugging Face hub id (``"org/name"`` that is no local path; see :func:`_hub_snapshot`).

    Raises:
        FileNotFoundError: empty path, missing file / directory / weights in it, or a hub id that
            cannot be fetched (the message names the id and how to pre-download it).
    """
    if not path:
        raise FileNotFoundError(
            "MODEL.CLIPSENET.SEM.PRETRAIN is True but MODEL.CLIPSENET.SEM.WEIGHTS is empty. "
            "Set it to a TinyCLIP checkpoint: a Hugging Face hub id (e.g. "
            "wkcn/TinyCLIP-ViT-61M-32-Text-29M-LAION400M), a local copy of such a folder, a "
            "TinyCLIP model-zoo .pt (open_clip format) or a state-dict file; or set "
            "MODEL.CLIPSENET.SEM.PRETRAIN False for a randomly initialised encoder.")
    if not os.path.exists(path) and _HUB_ID.match(path) and not path.endswith(
            (".pt", ".pth", ".bin", ".safetensors")):
        path = _hub_snapshot(path)
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
                                "Hugging Face hub id or folder, a TinyCLIP / open_clip .pt, or a "
                                "state-dict file).")
    return path, None


def resolve_weights_activation(path: str) -> Tuple[str, Optional[str]]:
    """Resolve ``path`` once (a hub id is fetched here) and read its activation.

    Returns:
        tuple: ``(local_path, hidden_act or None)``; ``local_path`` is a folder or file that
        :func:`load_sem_weights` reads without network; the activation comes from a
        ``transformers`` folder's ``config.json`` (open_clip / TinyCLIP ``.pt`` files use
        ``nn.GELU``, the variant's default, and carry no such field).
    """
    weights_file, hf_json = resolve_weights(path)
    act = None
    if hf_json is not None:
        act = hf_json.get("vision_config", hf_json).get("hidden_act")
        return os.path.dirname(weights_file), act
    return weights_file, act


def resize_position_embedding(pos: torch.Tensor, num_positions: int,
                              mode: str = "bilinear") -> torch.Tensor:
    """Resize a ViT position embedding (class token + square grid) to another grid.

    The class-token row is kept; the ``g x g`` grid rows are interpolated to ``g' x g'``
    (``F.interpolate``, ``align_corners=False``), as CLIP-ReID does when it runs CLIP's ViT at the
    re-id input size (``resize_pos_embed``: bilinear) and as open_clip does (``resize_pos_embed``:
    bicubic with ``antialias=True``, whose cubic kernel differs from plain bicubic).

    Args:
        pos (Tensor): (1 + g*g, D).
        num_positions (int): 1 + g'*g'.
        mode (str): "bilinear" or "bicubic".

    Returns:
        Tensor: (num_positions, D), same dtype as ``pos``.

    Raises:
        ValueError: unknown mode, or a token count that is not 1 + a square.
    """
    if mode not in POS_EMBED_MODES:
        raise ValueError(f"position-embedding interpolation {mode!r} must be one of "
                         f"{POS_EMBED_MODES} (MODEL.CLIPSENET.SEM.POS_EMBED_INTERP)")
    g0, g1 = math.isqrt(pos.shape[0] - 1), math.isqrt(num_positions - 1)
    if g0 * g0 + 1 != pos.shape[0] or g1 * g1 + 1 != num_positions:
        raise ValueError(f"position embeddings of {pos.shape[0]} -> {num_positions} tokens are "
                         "not a class token plus a square grid")
    grid = pos[1:].float().reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(g1, g1), mode=mode, align_corners=False,
                         antialias=mode == "bicubic")
    grid = grid.permute(0, 2, 3, 1).reshape(g1 * g1, -1).to(pos.dtype)
    return torch.cat([pos[:1], grid], dim=0)


_OPEN_CLIP_BLOCK = {"ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.",
                    "attn.out_proj.": "self_attn.out_proj.", "mlp.c_fc.": "mlp.fc1.",
                    "mlp.c_proj.": "mlp.fc2."}
_OPEN_CLIP_TOP = {"class_embedding": "vit.embeddings.class_embedding",
                  "positional_embedding": _POS_KEY,
                  "conv1.weight": "vit.embeddings.patch_embedding.weight",
                  "ln_pre.weight": "vit.pre_layrnorm.weight",
                  "ln_pre.bias": "vit.pre_layrnorm.bias",
                  "ln_post.weight": "vit.post_layernorm.weight",
                  "ln_post.bias": "vit.post_layernorm.bias"}


def _open_clip_visual_key(key):
    """The ``visual.*`` part of an open_clip / TinyCLIP key, or None for the text tower."""
    if key.startswith("module."):
        key = key[len("module."):]
    if key.startswith("_image_encoder."):  # TinyCLIP's own checkpoints
        key = key[len("_image_encoder."):]
        key = key[len("module."):] if key.startswith("module.") else key
    return key[len("visual."):] if key.startswith("visual.") else None


def is_open_clip_state_dict(state):
    """True for open_clip / OpenAI CLIP / TinyCLIP checkpoints (``visual.conv1.weight`` etc.)."""
    return any((_open_clip_visual_key(k) or "") == "conv1.weight" for k in state)


def convert_open_clip_state_dict(state: Dict[str, torch.Tensor], source: str = "checkpoint"
                                 ) -> Tuple[Dict[str, torch.Tensor], int]:
    """Convert an open_clip-format CLIP ViT state dict to the SEM's keys.

    open_clip (and OpenAI CLIP, and TinyCLIP's model zoo, whose keys may carry ``module.`` /
    ``_image_encoder.`` prefixes) keep each block's attention input projection as one
    ``attn.in_proj_weight`` (3D, D) / ``in_proj_bias`` (3D,): it is split into q, k, v in that
    order (``nn.MultiheadAttention``'s layout). The visual projection ``proj`` (D, E), applied as
    ``x @ proj``, becomes ``proj.weight`` = ``proj.T`` (E, D) of an ``nn.Linear``. Other names map
    one to one (``ln_1`` -> ``layer_norm1``, ``mlp.c_fc`` -> ``mlp.fc1``, ``conv1`` ->
    ``patch_embedding``, ``positional_embedding`` -> ``position_embedding.weight``, ...). The text
    tower and ``logit_scale`` are dropped.

    Reference:
        open_clip ``VisionTransformer`` / OpenAI CLIP ``model.py`` (key layout);
        ``transformers`` ``CLIPVisionModel`` (target layout).

    Args:
        state (dict[str, Tensor]): the checkpoint's state dict.
        source (str): name used in error messages.

    Returns:
        tuple: ``(sem_state, n_dropped_text)``.

    Raises:
        SEMWeightsError: ``visual.*`` entries with no counterpart in a CLIP ViT (e.g. a ResNet
            tower, layer scale, attention pooling, TinyCLIP's pruning masks); all are listed.
    """
    out, unknown, dropped = {}, [], 0
    block = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
    for key, value in state.items():
        sub = _open_clip_visual_key(key)
        if sub is None:
            dropped += 1
            continue
        if sub in _OPEN_CLIP_TOP:
            out[_OPEN_CLIP_TOP[sub]] = value
        elif sub == "proj":
            out["proj.weight"] = value.t().contiguous()
        elif block.match(sub):
            i, rest = block.match(sub).groups()
            prefix = f"vit.encoder.layers.{i}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[-1]  # weight / bias
                for name, part in zip("qkv", value.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{name}_proj.{kind}"] = part.contiguous()
                continue
            for old, new in _OPEN_CLIP_BLOCK.items():
                if rest.startswith(old):
                    out[prefix + new + rest[len(old):]] = value
                    break
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise SEMWeightsError(
            f"{source!r} is an open_clip-format checkpoint with image-tower entries that a CLIP "
            f"ViT (the SEM) does not have: {sorted(unknown)[:20]}"
            f"{' ...' if len(unknown) > 20 else ''}. Only plain ViT towers (TinyCLIP-ViT-*, "
            "CLIP ViT-B/32 ...) can be converted.")
    return out, dropped


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


def load_sem_weights(sem: SemanticExtractionModule, path: str,
                     pos_embed_interp: str = "") -> Dict[str, Any]:
    """Load TinyCLIP image-encoder weights into ``sem``, strictly.

    Accepted sources (the text tower's entries are ignored; it is never built):

    * a ``transformers`` directory (``config.json`` + ``model.safetensors`` or
      ``pytorch_model.bin``), as published on the Hugging Face hub for TinyCLIP; its vision
      config must match the configured encoder;
    * a Hugging Face hub id, e.g. ``wkcn/TinyCLIP-ViT-61M-32-Text-29M-LAION400M``: the folder is
      taken from the Hugging Face cache, downloaded there first when online (see
      :func:`resolve_weights`);
    * an open_clip-format checkpoint (TinyCLIP's model zoo ``TinyCLIP-ViT-*.pt``, open_clip's own
      ``state_dict`` / ``{"state_dict": ...}`` files), converted by
      :func:`convert_open_clip_state_dict`;
    * a state-dict file (``.safetensors``/``.bin``/``.pt``/``.pth``) with ``transformers`` CLIP
      keys (``vision_model.*``, ``visual_projection.weight``) or this module's own keys
      (``vit.*``, ``proj.weight``, e.g. ``sem.state_dict()``).

    A checkpoint whose position embedding has another grid than the SEM's (e.g. TinyCLIP's 224
    for a SEM at 320) is resized with :func:`resize_position_embedding` when
    ``pos_embed_interp`` is "bilinear" or "bicubic", and refused when it is "".

    Args:
        sem (SemanticExtractionModule): the module to fill.
        path (str): directory, file or hub id.
        pos_embed_interp (str): "", "bilinear" or "bicubic".

    Returns:
        dict: ``{"file": str, "loaded": int, "ignored_text": int, "format": str}``.

    Raises:
        FileNotFoundError: empty or missing path, no weights file in the directory, or a hub id
            that cannot be fetched.
        SEMWeightsError: a directory config that does not match the encoder (fields listed), an
            open_clip checkpoint that is not a plain ViT, or missing / unexpected / wrongly shaped
            keys (all listed).
    """
    weights_file, hf_json = resolve_weights(path)
    if hf_json is not None:
        _, diffs = _config_mismatch(sem.config, hf_json, allow_image_size=bool(pos_embed_interp))
        if diffs:
            raise SEMWeightsError(
                f"The checkpoint in {path!r} is a different encoder than the configured SEM:\n  "
                + "\n  ".join(diffs)
                + "\nSet MODEL.CLIPSENET.SEM.VARIANT (and the SEM size overrides) to match it"
                + ("" if pos_embed_interp else ", or MODEL.CLIPSENET.SEM.POS_EMBED_INTERP "
                   "bilinear to resize its position embedding") + ".")
    state = read_state_dict(weights_file)
    own = sem.state_dict()
    if is_open_clip_state_dict(state):
        mapped, ignored_text = convert_open_clip_state_dict(state, weights_file)
        fmt = "open_clip"
        if sem.proj is None:
            mapped.pop("proj.weight", None)
    else:
        fmt = "transformers"
        mapped, ignored_text = {}, 0
        for k, v in state.items():
            nk = _map_key(k)
            if nk is None:
                ignored_text += not k.endswith("position_ids")
                continue
            if nk.startswith("proj.") and sem.proj is None:
                continue  # the checkpoint's projection is not used (SEM.USE_PROJECTION False)
            mapped[nk] = v
    mapped.setdefault("hidden_act_code", own["hidden_act_code"])
    pos = mapped.get(_POS_KEY)
    if (pos is not None and pos.dim() == 2 and pos.shape[1] == own[_POS_KEY].shape[1]
            and pos.shape[0] != own[_POS_KEY].shape[0]):
        if not pos_embed_interp:
            raise SEMWeightsError(
                f"SEM weights {weights_file!r} have {pos.shape[0]} position embeddings, the "
                f"configured SEM ({sem.image_size}x{sem.image_size}, patch "
                f"{sem.config.patch_size}) needs {own[_POS_KEY].shape[0]}: set "
                "MODEL.CLIPSENET.SEM.POS_EMBED_INTERP bilinear (or bicubic) to resize them, or "
                "MODEL.CLIPSENET.SEM.INPUT_SIZE to the checkpoint's size.")
        mapped[_POS_KEY] = resize_position_embedding(pos, own[_POS_KEY].shape[0],
                                                     pos_embed_interp)
        logger.info(f"SEM position embedding resized ({pos_embed_interp}): {pos.shape[0]} -> "
                    f"{own[_POS_KEY].shape[0]} tokens")
    report = state_dict_mismatch(own, mapped, what="SEM", limit=20)
    if report:
        raise SEMWeightsError(
            f"SEM weights {weights_file!r} ({fmt} format) do not match the configured TinyCLIP "
            "image encoder" + report + "\nCheck MODEL.CLIPSENET.SEM.VARIANT, the SEM size "
            "overrides and SEM.USE_PROJECTION.")
    sem.load_state_dict(mapped, strict=True)
    logger.info(f"Loaded SEM weights from {weights_file} ({fmt} format, {len(mapped)} tensors; "
                f"{ignored_text} text-tower tensors ignored)")
    return {"file": weights_file, "loaded": len(mapped), "ignored_text": ignored_text,
            "format": fmt}
