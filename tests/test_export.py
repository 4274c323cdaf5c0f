"""``tools.export``: engines (ONNX / OpenVINO, fp32 / bf16 / int8) behind the accuracy gate, the
gate's arithmetic, extraction with an engine and the search's engine-mismatch refusal."""

import hashlib
import json
import os
import sys

import numpy as np
import pytest
import torch
from fastreid.modeling import build_model

import fastreid_plugins  # noqa: F401
from fastreid_plugins.deploy import GateFailedError, MissingExtraError, require
from fastreid_plugins.deploy.gate import cosine_rows, gate_report
from fastreid_plugins.deploy.onnx import export_onnx
from fastreid_plugins.deploy.runtime import EngineRunner, report_path
from fastreid_plugins.engine import load_model_weights
from fastreid_plugins.errors import ConfigError, DatasetError
from fastreid_plugins.tools import build_tool_cfg
from fastreid_plugins.tools import export as tool
from tests.test_export_onnx import CONFIGS, demo_config, random_weights, real_images

OPTS = ["MODEL.HEADS.NUM_CLASSES", "4"]


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    path = demo_config("bagtricks_r18")
    return path, random_weights(path, tmp_path_factory.mktemp("r18"))


def export(cfg_path, weights, out, fmt, precision, *extra):
    return tool.main(["--config-file", cfg_path, "--format", fmt, "--precision", precision,
                      "--output", str(out), "--calib-count", "16", *extra,
                      "MODEL.WEIGHTS", weights, *OPTS])


# ----------------------------------------------------------------------------- the gate itself
def test_gate_report_by_hand():
    """2 queries (ids 0, 1; camera 0) and 2 gallery images (ids 0, 1; camera 1). PyTorch's
    features rank each query's match first: Rank-1 = mAP = mINP = 100. The "engine" swaps the two
    gallery features: each query's match comes second, AP = 1/2, INP = 1/2, Rank-1 = 0; the
    gallery rows are orthogonal to PyTorch's (cosine 0), the query rows equal (cosine 1)."""
    ref = np.array([[1., 0.], [0., 1.], [1., 0.], [0., 1.]], np.float32)
    got = np.array([[1., 0.], [0., 1.], [0., 1.], [1., 0.]], np.float32)
    pids, camids = np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])
    r = gate_report(ref, got, pids, camids, 2, "cosine", "int8")
    assert r["pytorch"] == {"Rank-1": 100.0, "mAP": 100.0, "mINP": 100.0}
    assert r["engine"] == {"Rank-1": 0.0, "mAP": 50.0, "mINP": 50.0}
    assert r["difference"]["mAP"] == -50.0
    assert r["cosine"] == {"min": 0.0, "mean": 0.5}
    assert not r["passed"] and len(r["failures"]) == 2
    assert r["thresholds"] == {"min_cosine": 0.98, "max_map_drop": 1.0}  # int8 default
    assert r["split"]["map_resolution"] == 50.0 and "coarse" in r["note"]
    same = gate_report(ref, ref * 3, pids, camids, 2, "cosine", "fp32")
    assert same["passed"] and same["thresholds"]["min_cosine"] == 0.9999
    # only the mAP part fails: a drop of 50 points allowed by --max-map-drop 60, not by 40
    r = gate_report(ref, got, pids, camids, 2, "cosine", "fp32", min_cosine=-1, max_map_drop=60)
    assert r["passed"]
    assert not gate_report(ref, got, pids, camids, 2, "cosine", "fp32", min_cosine=-1,
                           max_map_drop=40)["passed"]


def test_cosine_rows_by_hand():
    a = np.array([[3., 4.], [1., 0.]])
    b = np.array([[4., 3.], [-2., 0.]])
    np.testing.assert_allclose(cosine_rows(a, b), [24 / 25, -1.0])


# ----------------------------------------------------------------------------- errors
def test_bad_arguments_and_missing_extra(r18, tmp_path, monkeypatch):
    cfg_path, weights = r18
    with pytest.raises(ConfigError, match="--format openvino --precision fp16"):
        export(cfg_path, weights, tmp_path / "m.onnx", "onnx", "fp16")
    with pytest.raises(ConfigError, match=r"\.xml"):
        export(cfg_path, weights, tmp_path / "m.onnx", "openvino", "fp32")
    with pytest.raises(ConfigError, match="tensorrt takes --precision fp32, fp16 or int8"):
        export(cfg_path, weights, tmp_path / "m.engine", "tensorrt", "bf16")
    with pytest.raises(ConfigError, match="--int8-fp32-modules sem: not a module of Baseline "
                       r"\(its top-level modules: backbone, heads\)"):
        export(cfg_path, weights, tmp_path / "m.onnx", "onnx", "int8", "--int8-fp32-modules", "sem")
    with pytest.raises(ConfigError, match="applies to --precision int8"):
        export(cfg_path, weights, tmp_path / "m.onnx", "onnx", "fp32",
               "--int8-fp32-modules", "heads")
    assert not os.path.exists(tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # (not installed here anyway: no GPU)
    with pytest.raises(MissingExtraError, match="pip install tensorrt"):
        export(cfg_path, weights, tmp_path / "m.engine", "tensorrt", "fp16")
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingExtraError, match=r'pip install -e "\.\[deploy\]"'):
        require("openvino", "--format openvino")
    with pytest.raises(MissingExtraError, match=r'--format openvino needs .*"\.\[deploy\]"'):
        export(cfg_path, weights, tmp_path / "m.xml", "openvino", "fp32")


def test_export_names_the_module_that_cannot_export(tmp_path):
    class NoOnnx(torch.nn.Module):  # aten::special_bessel_j0 has no ONNX symbolic
        def forward(self, x):
            return torch.special.bessel_j0(x)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)
            self.parts = torch.nn.ModuleList([torch.nn.Identity(), NoOnnx()])

        def forward(self, x):
            x = self.conv(x)
            return sum(p(x) for p in self.parts).mean((2, 3))

    with pytest.raises(RuntimeError, match=r"in module 'parts\.1' \(NoOnnx\)"):
        export_onnx(Model().eval(), str(tmp_path / "m.onnx"), 8, 8)


# ----------------------------------------------------------------------------- engines
def test_openvino_int8_engine_gate_extract_and_search(r18, tmp_path, veri_root, datasets_root):
    from fastreid_plugins.tools import extract, search

    datasets_root(veri_root)
    cfg_path, weights = r18
    out = str(tmp_path / "r18_int8.xml")
    res = export(cfg_path, weights, out, "openvino", "int8")
    assert res["written"] and os.path.isfile(out) and os.path.isfile(out[:-4] + ".bin")
    with open(report_path(out)) as f:
        report = json.load(f)
    assert report["passed"] and report["precision"] == "int8" and report["dataset"] == "VeRi"
    assert report["split"] == {"queries": 30, "gallery": 27, "map_resolution": 100 / 30}

    # independent: a rebuilt PyTorch model vs the engine on real test images
    cfg = build_tool_cfg(cfg_path, ["MODEL.WEIGHTS", weights, *OPTS])
    model = build_model(cfg)
    load_model_weights(model, weights)
    images = real_images(cfg.clone(), veri_root, datasets_root, n=8)
    with torch.no_grad():
        ref = model.eval()(images.clone()).numpy()
    runner = EngineRunner(out, "openvino")
    got = runner(images.numpy())
    assert runner.precision == "int8"
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() >= 0.98 and cos.min() >= report["cosine"]["min"] - 1e-6
    assert np.abs(got - ref).max() > 1e-6  # really quantized, not the fp32 graph

    # extraction with the engine: the manifest records it and its gate
    feats = str(tmp_path / "gallery")
    man = extract.main(["--config-file", cfg_path, "--images",
                        os.path.join(veri_root, "veri", "image_test"), "--out", feats,
                        "--backend", "openvino", out, "--no-progress", *OPTS])
    h = hashlib.sha256()
    for p in (out, out[:-4] + ".bin"):
        with open(p, "rb") as f:
            h.update(f.read())
    eng = man["engine"]
    assert (eng["format"], eng["precision"], eng["sha256"]) == ("openvino", "int8", h.hexdigest())
    assert eng["gate"]["cosine"] == report["cosine"] and eng["gate"]["passed"]

    # search: queries of the PyTorch model against the int8 gallery are refused
    q_torch = str(tmp_path / "q_torch")
    extract.main(["--config-file", cfg_path, "--images",
                  os.path.join(veri_root, "veri", "image_query"), "--out", q_torch,
                  "--no-progress", "MODEL.WEIGHTS", weights, *OPTS])
    with pytest.raises(DatasetError, match="Engine mismatch.*torch fp32.*openvino int8"):
        search.main(["--gallery", feats, "--query", q_torch, "--no-progress"])
    # same engine: accepted
    q_ov = str(tmp_path / "q_ov")
    extract.main(["--config-file", cfg_path, "--images",
                  os.path.join(veri_root, "veri", "image_query"), "--out", q_ov,
                  "--backend", "openvino", out, "--no-progress", *OPTS])
    assert search.main(["--gallery", feats, "--query", q_ov, "--no-progress",
                        "--output", str(tmp_path / "r.json")])["index"].shape[0] == 30


def test_failed_gate_refuses_then_force_writes(r18, tmp_path, veri_root, datasets_root):
    datasets_root(veri_root)
    cfg_path, weights = r18
    out = str(tmp_path / "m.onnx")
    with pytest.raises(GateFailedError, match="min cosine"):
        export(cfg_path, weights, out, "onnx", "fp32", "--min-cosine", "1.5")
    assert not os.path.exists(out)
    with open(report_path(out)) as f:
        report = json.load(f)
    assert not report["passed"] and not report["written"] and report["cosine"]["min"] > 0.9999
    res = export(cfg_path, weights, out, "onnx", "fp32", "--min-cosine", "1.5", "--force")
    assert os.path.isfile(out) and res["written"]
    with open(report_path(out)) as f:
        report = json.load(f)
    assert report["forced"] and not report["passed"] and report["written"]
    assert [p for p in os.listdir(tmp_path) if p.startswith(".export_")] == []  # no leftovers


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("fmt,precision", [("openvino", "fp32"), ("openvino", "fp16"),
                                           ("openvino", "bf16"), ("openvino", "int8"),
                                           ("onnx", "int8")])
def test_every_method_exports(name, fmt, precision, tmp_path, veri_root, datasets_root):
    """Every method's demo model (random weights) exports to every engine and runs in its
    runtime; fp32 passes the gate; bf16 and int8 of random weights are written with --force (SVRN's
    salience cut can move a few bf16 features past the 0.9999 cosine: docs/deploy.md)."""
    datasets_root(veri_root)
    cfg_path = demo_config(name)
    weights = random_weights(cfg_path, tmp_path)
    out = str(tmp_path / ("m.xml" if fmt == "openvino" else "m.onnx"))
    extra = ["--force"] if precision != "fp32" else []
    res = export(cfg_path, weights, out, fmt, precision, *extra)
    assert res["written"] and os.path.isfile(out)
    if precision == "fp32":
        assert res["gate"]["passed"], res["gate"]
    else:  # the gate ran on the real images and recorded its numbers
        assert res["gate"]["cosine"]["min"] > 0.9 and res["gate"]["split"]["queries"] == 30
    assert EngineRunner(out, fmt).precision == precision


def test_random_input_check_failure_stops_unless_forced(r18, tmp_path, monkeypatch, veri_root,
                                                        datasets_root):
    from fastreid_plugins.deploy import onnx as onnx_mod

    def differs(*a, **k):
        raise AssertionError("ONNX output differs from PyTorch beyond atol=0.0001")

    datasets_root(veri_root)
    monkeypatch.setattr(onnx_mod, "check_onnx", differs)
    cfg_path, weights = r18
    out = str(tmp_path / "m.onnx")
    with pytest.raises(GateFailedError, match="random input"):
        export(cfg_path, weights, out, "onnx", "fp32")
    assert not os.path.exists(out)
    res = export(cfg_path, weights, out, "onnx", "fp32", "--force")
    assert res["written"] and res["gate"]["passed"]  # the real-image gate itself passes
    assert res["gate"]["random_input_check"]["passed"] is False
