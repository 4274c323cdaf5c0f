"""The datasets root (issue 26, point 2): one accessor, ``fastreid_plugins.data.datasets_root()``
(``$FASTREID_DATASETS``, FastReID's default ``datasets``), and one setter,
``fastreid_plugins.data.set_datasets_root``, that also points FastReID's own copy."""

import os
import sys

import pytest
from helpers import make_cfg

import fastreid_plugins  # noqa: F401
from fastreid_plugins import data, engine
from fastreid_plugins.data import train_loader
from fastreid_plugins.data.validation import expected_layout
from fastreid_plugins.errors import DatasetNotFoundError

BOT = "configs/demo/bagtricks_r18.yml"


def test_datasets_root_reads_the_environment_with_fastreids_default(monkeypatch):
    monkeypatch.delenv("FASTREID_DATASETS", raising=False)
    assert data.datasets_root() == "datasets"
    monkeypatch.setenv("FASTREID_DATASETS", "/some/where")
    assert data.datasets_root() == "/some/where"
    assert "/some/where/veri/" in expected_layout(
        sys.modules["fastreid.data.datasets.veri"].VeRi)


def test_set_datasets_root_points_ours_and_fastreids(monkeypatch, tmp_path):
    import fastreid.data.build as db

    from fastreid_plugins.patches import base
    monkeypatch.setattr(db, "_root", db._root)  # both restored after the test
    monkeypatch.setenv("FASTREID_DATASETS", "before")
    assert data.set_datasets_root(tmp_path) == str(tmp_path)
    assert data.datasets_root() == os.environ["FASTREID_DATASETS"] == db._root == str(tmp_path)
    assert "datasets_root" in base.APPLIED
    for bad, err in (("", ValueError), (3, TypeError)):
        with pytest.raises(err):
            data.set_datasets_root(bad)
    assert data.datasets_root() == str(tmp_path)


def test_every_loader_reads_the_one_root(veri_root, tmp_path, monkeypatch):
    """The engine's train and test loaders and the package's datasets read
    ``datasets_root()``, never a copy: with FastReID's ``_root`` at the real sample and
    ``$FASTREID_DATASETS`` at an empty folder, they look in the empty folder."""
    import fastreid.data.build as db

    from fastreid_plugins.data.veri_viewpoint import VeRiViewpoint
    monkeypatch.setattr(db, "_root", veri_root)
    monkeypatch.setenv("FASTREID_DATASETS", str(tmp_path))
    cfg = make_cfg(BOT)
    for build in (lambda: engine.PluginTrainer.build_train_loader(cfg),
                  lambda: engine.PluginTrainer.build_test_loader(cfg, "VeRi"),
                  VeRiViewpoint):
        with pytest.raises(DatasetNotFoundError, match=str(tmp_path)):
            build()
    monkeypatch.setenv("FASTREID_DATASETS", veri_root)
    assert len(VeRiViewpoint().train) > 0
    assert engine.PluginTrainer.build_test_loader(cfg, "VeRi")[1] > 0
    # the copies issue 26 removed stay removed
    assert not hasattr(engine, "_root") and not hasattr(engine, "set_datasets_root")
    assert train_loader.datasets_root is data.datasets_root
