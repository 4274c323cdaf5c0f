"""Shared plugin keys: one table of defaults; a config built without them fails at once."""

import pytest
from fastreid.config import get_cfg as fastreid_get_cfg
from fastreid.modeling import build_model

import fastreid_plugins  # noqa: F401
from fastreid_plugins.config import PLUGIN_DEFAULTS, add_plugins_config, get_cfg
from fastreid_plugins.errors import ConfigError, UserError
from fastreid_plugins.svrn import add_svrn_config


def _get(cfg, dotted):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def test_add_plugins_config_sets_every_default_and_keeps_set_values():
    cfg = get_cfg()
    for key, value in PLUGIN_DEFAULTS.items():
        assert _get(cfg, key) == value, key
    cfg.TEST.RERANK.KNN = "ivf"
    add_plugins_config(cfg)
    assert cfg.TEST.RERANK.KNN == "ivf"


def test_a_fastreid_only_config_is_refused_by_name():
    """FastReID's get_cfg alone lacks DIST.*, TEST.RERANK.KNN, ...: building a plugin model from
    it fails at once with the fix, not with yacs' AttributeError inside from_config."""
    cfg = fastreid_get_cfg()
    add_svrn_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "SVRN"
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.DEVICE = "cpu"
    with pytest.raises(ConfigError, match=r"MODEL.META_ARCHITECTURE SVRN needs a config with "
                                          r"the plugin keys.*add_plugins_config") as e:
        build_model(cfg)
    assert isinstance(e.value, UserError) and "DIST.GATHER_LOSSES" in str(e.value)


def test_fastreid_baseline_still_builds_from_fastreid_config():
    """The patched ResNet/ResNeXt builders replace FastReID's, so they must keep accepting
    FastReID's own configs (no plugin keys)."""
    cfg = fastreid_get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnext_backbone"
    cfg.MODEL.BACKBONE.DEPTH = "50x"
    cfg.MODEL.BACKBONE.WITH_IBN = True
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.HEADS.NUM_CLASSES = 4
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert type(model.backbone.layer4[0].bn1).__name__ != "IBN"  # IBN-Net's layout by default
