"""The method records (``fastreid_plugins.method.METHODS``) against the files they describe: every
config a record lists exists, tests on the dataset it is listed under and builds the record's
meta-architecture; every ``configs/*/<method>*.yml`` is listed by its record (so the record cannot
drift from the folder); the README's method tables say what the records say. Torch-free: the
records are read, their runtime (which imports the method packages) is not touched here.
"""

import ast
import glob
import os
import re

import pytest
import yaml

from fastreid_plugins.method import METHODS, Method, method_for_meta_arch
from fastreid_plugins.reproduce.registry import table_configs
from tests.helpers import ROOT

#: a record's dataset key whose config tests on another FastReID dataset of the same images
SAME_IMAGES = {("clip_senet", "VeRi"): "VeRiViewpoint"}


def _load(path):
    """A config file as a dict, its ``_BASE_`` chain merged in (FastReID's rule: the file wins)."""
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    base = cfg.pop("_BASE_", None)
    if base is None:
        return cfg
    merged = _load(os.path.join(os.path.dirname(path), base))

    def merge(into, new):
        for k, v in new.items():
            if isinstance(v, dict) and isinstance(into.get(k), dict):
                merge(into[k], v)
            else:
                into[k] = v
    merge(merged, cfg)
    return merged


def _tests(cfg):
    tests = cfg["DATASETS"]["TESTS"]
    return list(ast.literal_eval(tests) if isinstance(tests, str) else tests)


def _method_configs_on_disk(key, root=ROOT):
    """Every ``configs/<folder>/<key>.yml`` / ``<key>_*.yml`` under ``root`` (demo included)."""
    out = set()
    for path in glob.glob(os.path.join(root, "configs", "*", "*.yml")):
        stem = os.path.basename(path)[:-len(".yml")]
        if stem == key or stem.startswith(key + "_"):
            out.add(os.path.relpath(path, root).replace(os.sep, "/"))
    return out


def test_the_records_are_the_four_methods_in_a_fixed_order():
    assert list(METHODS) == ["mfgnet", "mbfn", "svrn", "clip_senet"]
    assert [m.name for m in METHODS.values()] == ["MFG-Net", "MBFN", "SVRN", "CLIP-SENet"]
    for key, m in METHODS.items():
        assert isinstance(m, Method) and m.key == key
        assert method_for_meta_arch(m.meta_arch) is m
    assert method_for_meta_arch("Baseline") is None
    with pytest.raises(TypeError):
        METHODS["svrn"].configs["VRIC"] = "configs/vric/svrn.yml"   # read-only


@pytest.mark.parametrize("key", list(METHODS))
def test_every_listed_config_exists_and_tests_on_its_dataset(key):
    m = METHODS[key]
    assert os.path.isfile(os.path.join(ROOT, m.train_script))
    assert os.path.isfile(os.path.join(ROOT, m.project, "README.md"))
    for dataset, path in m.configs.items():
        cfg = _load(os.path.join(ROOT, path))
        assert _tests(cfg) == [SAME_IMAGES.get((key, dataset), dataset)], (dataset, path)
        assert cfg["MODEL"]["META_ARCHITECTURE"] == m.meta_arch, path
    demo = _load(os.path.join(ROOT, m.demo_config))
    assert demo["MODEL"]["META_ARCHITECTURE"] == m.meta_arch


@pytest.mark.parametrize("key", list(METHODS))
def test_every_method_config_in_the_folder_is_listed_by_its_record(key):
    m = METHODS[key]
    listed = set(m.configs.values()) | {m.demo_config}
    assert len(listed) == len(m.configs) + 1   # no config listed twice
    assert _method_configs_on_disk(key) == listed


def test_the_folder_check_can_fail(tmp_path):
    """A config added to the folder and missing from the record is seen (``svrn_x``, not
    ``svrnx``)."""
    fake = tmp_path / "configs" / "vric"
    fake.mkdir(parents=True)
    for name in ("svrn.yml", "svrn_x.yml", "svrnx.yml", "mbfn.yaml"):
        (fake / name).write_text("MODEL:\n  META_ARCHITECTURE: SVRN\n")
    found = _method_configs_on_disk("svrn", str(tmp_path))
    assert found == {"configs/vric/svrn.yml", "configs/vric/svrn_x.yml"}
    assert found - set(METHODS["svrn"].configs.values())   # what the real test would report
    assert _method_configs_on_disk("mbfn", str(tmp_path)) == set()


def _expand(text):
    """Backticked paths of a README cell, ``a_{x,y}.yml`` brace lists expanded."""
    out = []
    for p in re.findall(r"`([^`]+\.yml)`", text):
        m = re.search(r"\{([^}]*)\}", p)
        out += [p[:m.start()] + x + p[m.end():] for x in m.group(1).split(",")] if m else [p]
    return out


def _readme_rows(first_cell):
    """``{first cell: row cells}`` of the README table rows whose first cell matches."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(first_cell, cells[0]):
            rows[cells[0]] = cells
    return rows


def test_readme_paper_config_table_is_the_records():
    """README "Running a paper config": one row per record, its name, project README and every
    paper config (brace lists expanded), nothing else."""
    rows = _readme_rows(r"\[[^]]+\]\(projects/\w+/README\.md\)")
    assert len(rows) == len(METHODS)
    for m in METHODS.values():
        cells = rows[f"[{m.name}]({m.project}/README.md)"]
        assert _expand(cells[1]) == list(m.configs.values()), m.key


def test_readme_reproduce_table_is_the_records_tables():
    """README "Reproducing the papers' tables": one row per record, its tables and their paper
    configs (the default one first)."""
    rows = _readme_rows("|".join(METHODS))
    assert list(rows) == list(METHODS)
    for m in METHODS.values():
        cells = rows[m.key]
        assert set(re.findall(r"`([^`]+)`", cells[1])) == {t.table for t in m.tables}, m.key
        configs = []
        for t in m.tables:
            configs += [c for c in table_configs(t).values() if c not in configs]
        assert _expand(cells[2]) == configs, m.key
