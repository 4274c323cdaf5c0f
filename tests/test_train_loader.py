"""One training data path (issue 26, point 2): dataset -> sampler (PK or global PK) -> seeded
sampler -> loader, built once in :mod:`fastreid_plugins.data.train_loader`, checked once (the
datasets root: ``tests/test_datasets_root.py``)."""

import sys

import pytest
from helpers import make_cfg

import fastreid_plugins  # noqa: F401
from fastreid_plugins import distributed, engine
from fastreid_plugins.seeding import SeededSampler, derive_seed

BOT = "configs/demo/bagtricks_r18.yml"
CLIP = "configs/demo/clip_senet.yml"


def count_calls(monkeypatch, owner, name):
    """Replace ``owner.<name>`` by a counting wrapper, also in every loaded module that bound the
    same object by name (``from x import f``); returns the list of calls' positional args."""
    original = getattr(owner, name)
    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    for mod in list(sys.modules.values()):
        if (mod is not owner and getattr(mod, "__name__", "").startswith(("fastreid", "tests"))
                and getattr(mod, name, None) is original):
            monkeypatch.setattr(mod, name, counting)
    return calls


def _trainer(kind):
    if kind == "plugin":
        return engine.PluginTrainer, make_cfg(BOT, ["SEED", "3"])
    from fastreid_plugins.clip_senet import CLIPSENetTrainer, add_clip_senet_config
    return CLIPSENetTrainer, make_cfg(CLIP, ["SEED", "3"], [add_clip_senet_config])


@pytest.mark.parametrize("kind", ["plugin", "clip_senet"])
def test_train_loader_is_built_once_and_checked_once(kind, veri_root, datasets_root,
                                                     monkeypatch):
    """One dataset read, one loader object, one item check and one batch check per
    ``build_train_loader``, for the engine's trainer and for CLIP-SENet's ``dataset_cls`` (before
    issue 26: FastReID's ``build_reid_train_loader`` twice and, with a ``dataset_cls``, the item
    check twice); FastReID's own train-loader builder is neither called nor patched."""
    import fastreid.data.build as db
    from fastreid.data.data_utils import DataLoaderX
    from fastreid.data.datasets.veri import VeRi

    from fastreid_plugins.data import validation
    from fastreid_plugins.patches.base import is_patched

    datasets_root(veri_root)
    trainer_cls, cfg = _trainer(kind)
    assert not is_patched(db, "build_reid_train_loader")
    fastreid_builds = count_calls(monkeypatch, db, "build_reid_train_loader")
    loaders = count_calls(monkeypatch, DataLoaderX, "__init__")
    datasets = count_calls(monkeypatch, VeRi, "__init__")  # VeRiViewpoint's base too
    item_checks = count_calls(monkeypatch, validation, "check_dataset_items")
    batch_checks = count_calls(monkeypatch, validation, "check_identity_batches")

    loader = trainer_cls.build_train_loader(cfg)

    assert fastreid_builds == []
    assert len(loaders) == 1 and loaders[0][0] is loader
    assert len(datasets) == 1
    assert [c[1] for c in item_checks] == ["train"]
    assert len(item_checks[0][0]) == len(loader.dataset) > 0
    assert len(batch_checks) == 1 and batch_checks[0][3:] == (1, "NaiveIdentitySampler")
    assert isinstance(loader.dataset, trainer_cls.dataset_cls or db.CommDataset)
    assert isinstance(loader.sampler_state, SeededSampler)
    batch = next(iter(loader))
    assert batch["images"].shape[0] == cfg.SOLVER.IMS_PER_BATCH
    if kind == "clip_senet":
        assert {"viewids", "sie_camids"} <= set(batch)


def test_identity_checks_run_before_the_sampler_is_built(veri_root, datasets_root):
    """``NUM_INSTANCE 0`` is a ConfigError naming the key, not FastReID's ZeroDivisionError from
    the identity sampler's constructor."""
    from fastreid_plugins.errors import ConfigError
    datasets_root(veri_root)
    with pytest.raises(ConfigError, match="DATALOADER.NUM_INSTANCE must be >= 1"):
        engine.PluginTrainer.build_train_loader(make_cfg(BOT, ["DATALOADER.NUM_INSTANCE", "0"]))


def _ddp_rank(monkeypatch, rank, world):
    """Make this process look like ``rank`` of ``world`` to FastReID's ``comm`` (no process group:
    FastReID's shared seed is then drawn locally)."""
    import numpy as np
    from fastreid.utils import comm
    monkeypatch.setattr(comm, "get_world_size", lambda: world)
    monkeypatch.setattr(comm, "get_rank", lambda: rank)
    monkeypatch.setattr(comm, "shared_random_seed", lambda: int(np.random.randint(2 ** 31)))


def test_ddp_uses_the_global_identity_sampler_through_the_one_path(veri_root, datasets_root,
                                                                     monkeypatch):
    """Under DDP (``DIST.GLOBAL_SAMPLER``, default on) every rank's loader draws its slice of one
    global P x K batch of the run's seed; with ``DIST.GLOBAL_SAMPLER False`` FastReID's
    ``NaiveIdentitySampler`` stays, with ``IMS_PER_BATCH / world size`` images per rank."""
    from fastreid.data.samplers import NaiveIdentitySampler
    datasets_root(veri_root)
    cfg = make_cfg(BOT, ["SEED", "5"])
    firsts = []
    for rank in (0, 1):
        _ddp_rank(monkeypatch, rank, 2)
        loader = engine.PluginTrainer.build_train_loader(cfg)
        inner = loader.sampler_state.sampler
        assert isinstance(inner, distributed.GlobalIdentitySampler)
        assert (inner.rank, inner.world_size) == (rank, 2)
        assert loader.batch_sampler.batch_size == 8
        firsts.append(next(iter(loader.batch_sampler)))
    one = distributed.GlobalIdentitySampler(loader.dataset.img_items, 16, 4,
                                            seed=derive_seed(5, 0), rank=0, world_size=1)
    assert firsts[0] + firsts[1] == one.global_batch(0).tolist()

    off = make_cfg(BOT, ["SEED", "5", "DIST.GLOBAL_SAMPLER", "False"])
    loader = engine.PluginTrainer.build_train_loader(off)
    assert isinstance(loader.sampler_state.sampler, NaiveIdentitySampler)
    assert loader.batch_sampler.batch_size == 8
