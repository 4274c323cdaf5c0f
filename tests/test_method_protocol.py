"""One method protocol: every method's record resolves the same surface from its package,
validates its keys with ConfigError, and configures its losses the same way (FastReID's
MODEL.LOSSES honoured, or refused with the reason)."""

import pytest
from helpers import ROOT

import fastreid_plugins
from fastreid_plugins import clip_senet, mbfn, mfgnet, svrn
from fastreid_plugins.config import get_cfg
from fastreid_plugins.engine import PluginTrainer
from fastreid_plugins.errors import ConfigError, MissingConfigError
from fastreid_plugins.method import METHODS, Method, method_for_meta_arch

PACKAGES = (mfgnet, mbfn, svrn, clip_senet)
#: each package's own functions and trainer (what its record must resolve to)
OWN = {"mfgnet": (mfgnet.add_mfgnet_config, mfgnet.validate_mfgnet_config, PluginTrainer),
       "mbfn": (mbfn.add_mbfn_config, mbfn.validate_mbfn_config, PluginTrainer),
       "svrn": (svrn.add_svrn_config, svrn.validate_svrn_config, PluginTrainer),
       "clip_senet": (clip_senet.add_clip_senet_config, clip_senet.validate_clip_senet_config,
                      clip_senet.CLIPSENetTrainer)}


def test_one_record_per_method_package():
    assert list(METHODS) == ["mfgnet", "mbfn", "svrn", "clip_senet"] == list(OWN)
    assert fastreid_plugins.METHODS is METHODS
    assert [p.__name__ for p in PACKAGES] == [f"fastreid_plugins.{k}" for k in METHODS]
    for pkg in PACKAGES:   # the old per-package surface is gone: the record is the one home
        assert not hasattr(pkg, "METHOD") and "METHOD" not in pkg.__all__


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: p.__name__.rsplit(".", 1)[1])
def test_same_surface(pkg):
    import os
    key = pkg.__name__.rsplit(".", 1)[1]
    m = METHODS[key]
    assert isinstance(m, Method) and m.key == key and m.package is pkg
    assert method_for_meta_arch(m.meta_arch) is m
    assert (m.add_config, m.validate_config, m.trainer) == OWN[key]
    assert {"add_config", "validate_config", "Trainer"} <= set(pkg.__all__)
    assert m.add_config.__name__ == f"add_{key}_config"
    assert m.validate_config.__name__ == f"validate_{key}_config"
    assert os.path.isfile(os.path.join(ROOT, m.train_script))
    # the meta-architecture the record names is the one the package registers
    from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
    assert META_ARCH_REGISTRY.get(m.meta_arch).__module__.startswith(pkg.__name__)
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
    m = METHODS[pkg.__name__.rsplit(".", 1)[1]]
    cfg = get_cfg(m.add_config)
    node = cfg.MODEL.LOSSES
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ConfigError, match=rf"MODEL\.LOSSES\.{key}=.* does not apply to "
                                          rf"{m.name}"):
        m.validate_config(cfg)


def test_clip_senet_validation_names_the_key():
    cfg = get_cfg(METHODS["clip_senet"].add_config)
    cfg.MODEL.CLIPSENET.CV.POSITION = "tokens"
    with pytest.raises(ConfigError, match="MODEL.CLIPSENET.CV.POSITION='tokens'"):
        clip_senet.validate_clip_senet_config(cfg)
    cfg = get_cfg(METHODS["clip_senet"].add_config)
    cfg.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "CircleLoss")
    with pytest.raises(ConfigError, match="CircleLoss"):
        clip_senet.validate_clip_senet_config(cfg)
    cfg = get_cfg(METHODS["clip_senet"].add_config)
    cfg.MODEL.CLIPSENET.SEM.ENABLED = False
    with pytest.raises(ConfigError, match="AFEM.ENABLED needs"):
        clip_senet.validate_clip_senet_config(cfg)


# ---------------------------------------------------------------------------------------------
# what the record drives: launch_main (every train_net.py) and the tools' trainer choice
# ---------------------------------------------------------------------------------------------
def test_launch_main_resolves_method_keys_through_the_records():
    from fastreid_plugins.engine import _resolve_methods
    assert _resolve_methods(("svrn",)) == ((svrn.add_svrn_config,), PluginTrainer)
    assert _resolve_methods(("clip_senet",)) == ((clip_senet.add_clip_senet_config,),
                                                 clip_senet.CLIPSENetTrainer)
    # the old positional add_fns still work, alone or after a key; trainer_cls wins
    assert _resolve_methods((mfgnet.add_mfgnet_config,)) == ((mfgnet.add_mfgnet_config,),
                                                             PluginTrainer)
    assert _resolve_methods(("mbfn", mfgnet.add_mfgnet_config), PluginTrainer) == (
        (mbfn.add_mbfn_config, mfgnet.add_mfgnet_config), PluginTrainer)
    assert _resolve_methods(("mfgnet", "mbfn"))[1] is PluginTrainer   # same trainer: no question
    with pytest.raises(KeyError, match=r"unknown method 'svrnn'; known: \['mfgnet'"):
        _resolve_methods(("svrnn",))
    with pytest.raises(ValueError, match="trainers differ.*pass trainer_cls"):
        _resolve_methods(("svrn", "clip_senet"))


def test_every_train_net_runs_its_record():
    """Each ``projects/<Name>/train_net.py`` runs its record's add_config and trainer (read by
    running the script with ``launch_main`` recorded)."""
    import os

    from tests.ddp_jobs import project
    for key, m in METHODS.items():
        assert project(os.path.basename(m.project)) == (m.add_config, m.trainer), key


def test_tools_pick_the_trainer_of_the_meta_architectures_record():
    from fastreid_plugins.tools import plugin_config_fns, trainer_class_for
    assert plugin_config_fns() == [m.add_config for m in METHODS.values()]
    for m in METHODS.values():
        cfg = get_cfg()
        cfg.MODEL.META_ARCHITECTURE = m.meta_arch
        assert trainer_class_for(cfg) is m.trainer
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "Baseline"
    assert trainer_class_for(cfg) is PluginTrainer
    assert method_for_meta_arch("Baseline") is None
    cfg.MODEL.META_ARCHITECTURE = "SVRNN"
    with pytest.raises(ConfigError, match=r"'SVRNN' is not registered; known: .*'CLIPSENet'"):
        trainer_class_for(cfg)
