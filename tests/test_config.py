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


@pytest.mark.parametrize("check, args, bad", [
    ("check_bool", (), [1, 0, "True", None]),
    ("check_int", (1, 4), [0, 5, 2.0, True, "3"]),
    ("check_int", (0,), [-1, 1.5, False]),
    ("check_number", (), [-0.1, True, "0.3", None]),
    ("check_choice", (("sum", "mean"),), ["Sum", "", None]),
])
def test_value_checks_refuse_bad_values_naming_the_key(check, args, bad):
    import fastreid_plugins.config as C
    for value in bad:
        with pytest.raises(ConfigError, match=r"^MODEL\.X\.KEY=" + repr(value).replace(".", r"\.")):
            getattr(C, check)(value, "MODEL.X.KEY", *args)


@pytest.mark.parametrize("check, args, good", [
    ("check_bool", (), [True, False]),
    ("check_int", (1, 4), [1, 4]),
    ("check_int", (0,), [0, 10 ** 9]),
    ("check_number", (), [0, 0.0, 3, 1e-9]),
    ("check_choice", (("sum", "mean"),), ["sum", "mean"]),
])
def test_value_checks_accept_the_boundaries(check, args, good):
    import fastreid_plugins.config as C
    for value in good:
        assert getattr(C, check)(value, "MODEL.X.KEY", *args) is None


def test_check_messages_say_what_was_expected():
    from fastreid_plugins.config import check_choice, check_int
    with pytest.raises(ConfigError, match=r"must be an int in 1\.\.4$"):
        check_int(5, "K", 1, 4)
    with pytest.raises(ConfigError, match=r"must be an int >= 0$"):
        check_int(-1, "K", 0)
    with pytest.raises(ConfigError, match=r"must be one of \('sum', 'mean'\)$"):
        check_choice("x", "K", ["sum", "mean"])
