"""One method protocol: every method package exposes the same surface, validates its keys with
ConfigError, and configures its losses the same way (FastReID's MODEL.LOSSES honoured, or refused
with the reason)."""

import pytest

import fastreid_plugins
from fastreid_plugins import clip_senet, mbfn, mfgnet, svrn
from fastreid_plugins.config import get_cfg
from fastreid_plugins.errors import ConfigError, MissingConfigError
from fastreid_plugins.method import Method

from helpers import ROOT

PACKAGES = (mfgnet, mbfn, svrn, clip_senet)


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: p.__name__.rsplit(".", 1)[1])
def test_same_surface(pkg):
    import os
    m = pkg.METHOD
    assert isinstance(m, Method) and fastreid_plugins.METHODS[m.meta_arch] is m
    assert "METHOD" in pkg.__all__
    assert m.add_config.__name__.startswith("add_") and m.validate_config.__name__.startswith(
        "validate_")
    assert os.path.isfile(os.path.join(ROOT, m.project, "train_net.py"))
    # without add_config: MissingConfigError (a KeyError too) naming add_config
    with pytest.raises(MissingConfigError, match=m.add_config.__name__) as e:
        m.validate_config(get_cfg())
    assert isinstance(e.value, KeyError) and not str(e.value).startswith("'")
    # with it: the defaults validate
    m.validate_config(get_cfg(m.add_config))


@pytest.mark.parametrize("pkg,key,value", [
    (mfgnet, "NAME", ("CrossEntropyLoss", "TripletLoss")), (mfgnet, "TRI.SCALE", 2.0),
    (mbfn, "NAME", ("CrossEntropyLoss", "TripletLoss")), (mbfn, "CE.SCALE", 0.5)],
    ids=["mfgnet-name", "mfgnet-tri-scale", "mbfn-name", "mbfn-ce-scale"])
def test_fixed_loss_methods_refuse_loss_keys_they_would_ignore(pkg, key, value):
    cfg = get_cfg(pkg.METHOD.add_config)
    node = cfg.MODEL.LOSSES
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ConfigError, match=rf"MODEL\.LOSSES\.{key}=.* does not apply to "
                                          rf"{pkg.METHOD.name}"):
        pkg.METHOD.validate_config(cfg)


def test_clip_senet_validation_names_the_key():
    cfg = get_cfg(clip_senet.METHOD.add_config)
    cfg.MODEL.CLIPSENET.CV.POSITION = "tokens"
    with pytest.raises(ConfigError, match="MODEL.CLIPSENET.CV.POSITION='tokens'"):
        clip_senet.validate_clip_senet_config(cfg)
    cfg = get_cfg(clip_senet.METHOD.add_config)
    cfg.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "CircleLoss")
    with pytest.raises(ConfigError, match="CircleLoss"):
        clip_senet.validate_clip_senet_config(cfg)
    cfg = get_cfg(clip_senet.METHOD.add_config)
    cfg.MODEL.CLIPSENET.SEM.ENABLED = False
    with pytest.raises(ConfigError, match="AFEM.ENABLED needs"):
        clip_senet.validate_clip_senet_config(cfg)
