"""ONNX export of every meta-architecture: onnxruntime output == PyTorch eval output.

FastReID's Baseline (configs/demo/bagtricks_r18.yml) and every plugin meta-arch (through its demo
config, which must exist) are tested.
"""

import os
import warnings

import numpy as np
import pytest
import torch
from fastreid.modeling import build_model

import fastreid_plugins  # noqa: F401
from fastreid_plugins.deploy import onnx as engine
from fastreid_plugins.engine import load_model_weights
from fastreid_plugins.tools import build_tool_cfg, plugin_config_fns, trainer_class_for
from fastreid_plugins.tools import export_onnx as tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = ["bagtricks_r18", "mfgnet", "mbfn", "svrn", "clip_senet"]


def demo_config(name):
    path = os.path.join(ROOT, "configs", "demo", f"{name}.yml")
    assert os.path.isfile(path), f"configs/demo/{name}.yml is missing: its ONNX export is untested"
    return path


def random_weights(cfg_path, tmp_path, opts=()):
    """Build the model of a config with random (seeded) weights and save them."""
    cfg = build_tool_cfg(cfg_path, ["MODEL.HEADS.NUM_CLASSES", "4", *opts])
    torch.manual_seed(0)
    model = build_model(cfg)
    # make BN running stats non-trivial so that eval-mode BN is really exercised
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = str(tmp_path / "weights.pth")
    torch.save({"model": model.state_dict()}, path)
    return path


def real_images(cfg, veri_root, datasets_root, n=5):
    """The first ``n`` real VeRi test images as the loader gives them: (n, 3, H, W) in [0, 255]."""
    datasets_root(veri_root)
    loader, _ = trainer_class_for(cfg).build_test_loader(cfg, cfg.DATASETS.TESTS[0])
    return next(iter(loader))["images"][:n].float()


def assert_clear_suppression_cut(model, images, rel=1e-4):
    """SVRN picks its suppressed cells by a top-n cut of the salience scores S_t: where the n-th
    and (n+1)-th scores are closer than float rounding, onnxruntime and PyTorch may pick different
    cells and the features differ by O(1), with both graphs correct. Random weights can saturate
    the SIM attention so that every score is ~1e-10; the comparison is only meaningful when the
    cut is clear, so require it here (a degenerate random model fails loudly, not by chance)."""
    with torch.no_grad():
        outs = model.stages(model.preprocess_image(images.clone()))
    for t, out in enumerate(outs[:-1]):
        # the cut is among the cells no earlier stage suppressed (they sort first here)
        avail = out["available"].flatten(1) > 0
        s = out["scores"].flatten(1).masked_fill(~avail, float("-inf"))
        s = s.sort(dim=1, descending=True).values
        n, last = model.n_cells[t], int(avail.sum(1).min()) - 1
        gap = s[:, n - 1] - s[:, n]
        spread = s[:, 0] - s[:, last]
        assert bool((gap > rel * spread).all()), (
            f"stage {t + 1}: top-{n} salience cut within {rel} of the score range "
            f"(gaps {gap.tolist()}, ranges {spread.tolist()}): pick other random weights")


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_export_matches_pytorch(name, tmp_path, veri_root, datasets_root):
    cfg_path = demo_config(name)
    weights = random_weights(cfg_path, tmp_path)
    out = str(tmp_path / f"{name}.onnx")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = tool.main(["--config-file", cfg_path, "--output", out, "--batch-size", "2",
                         "MODEL.WEIGHTS", weights, "MODEL.HEADS.NUM_CLASSES", "4"])
    # the tracer's "might not generalize" warnings are not shown (deploy/onnx.py says why)
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    with open(os.path.splitext(out)[0] + ".log") as f:  # config + model print, not the console
        log = f.read()
    assert "Model:\n" in log and "DATALOADER:" in log
    # the tool's own check ran (it raises beyond the tolerance)
    assert os.path.isfile(out) and res["check"]["max_abs_diff"] < 1e-3
    assert res["check"]["shape"][0] == 3  # checked with batch 3, exported with batch 2

    # independent check: a model rebuilt from the same weights vs onnxruntime on real images,
    # with a batch size (5) other than the export batch (2): the batch axis is dynamic
    import onnxruntime as ort

    cfg = build_tool_cfg(cfg_path, ["MODEL.WEIGHTS", weights, "MODEL.HEADS.NUM_CLASSES", "4"])
    model = build_model(cfg)
    load_model_weights(model, weights)
    model.eval()
    images = real_images(cfg, veri_root, datasets_root, n=5)
    with torch.no_grad():
        ref = model(images.clone()).numpy()  # the bare-tensor eval forward that was exported
    if name == "svrn":
        assert_clear_suppression_cut(model, images)
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": images.numpy()})[0]
    assert got.shape == ref.shape and got.shape[0] == 5
    np.testing.assert_allclose(got, ref, atol=engine.DEFAULT_ATOL, rtol=engine.DEFAULT_RTOL)
    # the features are not degenerate (distinct images -> distinct features)
    assert np.abs(got[0] - got[1]).max() > 1e-3


def test_every_registered_plugin_config_fn_is_applied():
    names = {fn.__name__ for fn in plugin_config_fns()}
    for method in ("mfgnet", "mbfn", "svrn", "clip_senet"):
        pkg = getattr(fastreid_plugins, method)
        if hasattr(pkg, f"add_{method}_config"):
            assert f"add_{method}_config" in names


def test_missing_weights_and_config_errors(tmp_path):
    cfg_path = os.path.join(ROOT, "configs", "demo", "bagtricks_r18.yml")
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS"):
        tool.main(["--config-file", cfg_path, "--output", str(tmp_path / "x.onnx")])
    with pytest.raises(FileNotFoundError, match="config-file"):
        tool.main(["--config-file", str(tmp_path / "nope.yml"), "MODEL.WEIGHTS", "x.pth"])
    with pytest.raises(FileNotFoundError, match="not found"):
        tool.main(["--config-file", cfg_path, "MODEL.WEIGHTS", str(tmp_path / "missing.pth")])


def test_check_detects_a_different_model(tmp_path):
    """The onnxruntime comparison is not vacuous: a graph of other weights fails it."""
    cfg_path = os.path.join(ROOT, "configs", "demo", "bagtricks_r18.yml")
    cfg = build_tool_cfg(cfg_path, ["MODEL.HEADS.NUM_CLASSES", "4", "INPUT.SIZE_TEST", "[64, 64]"])
    torch.manual_seed(0)
    a = build_model(cfg).eval()
    torch.manual_seed(1)
    b = build_model(cfg).eval()
    path = str(tmp_path / "a.onnx")
    engine.export_onnx(a, path, 64, 64, batch_size=2)
    assert engine.check_onnx(engine.BareTensorModel(a), path, 64, 64)["max_abs_diff"] < 1e-4
    with pytest.raises(AssertionError, match="differs"):
        engine.check_onnx(engine.BareTensorModel(b), path, 64, 64)


def test_stable_sort_exports_with_torch_tie_order(tmp_path):
    """``torch.sort(..., stable=True)`` (used by SVRN) has no TorchScript-exporter symbolic; the
    tool exports it as a pairwise rank (ties by index), so every runtime orders equal values as
    torch does. OpenVINO 2026.4 converts ONNX ``TopK`` to a TopK with ``stable=False`` and
    returns equal values in another order (the first export, ``TopK``, failed here in OpenVINO;
    with SVRN's random weights it picked other suppressed cells for 4 of the 57 sample images)."""
    import onnxruntime as ort
    import openvino as ov

    class SortModel(torch.nn.Module):
        def forward(self, x):
            flat = x.flatten(1)
            desc = torch.sort(flat, dim=1, descending=True, stable=True).indices
            asc = torch.sort(flat, dim=1).values
            return torch.cat([desc.float(), asc], 1)

    # many ties: the order of equal values is where a non-stable sort would differ
    x = torch.tensor([[[[1., 3.], [3., 2.]], [[1., 1.], [0., 3.]], [[2., 2.], [2., 2.]]]])
    x = torch.cat([x, x.flip(-1)])
    path = str(tmp_path / "sort.onnx")
    engine.export_onnx(SortModel(), path, 2, 2, batch_size=2)
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()})[0]
    compiled = ov.Core().compile_model(path, "CPU")
    got_ov = compiled({"images": x.numpy()})[compiled.outputs[0]]
    # by hand, first image flattened: [1,3,3,2, 1,1,0,3, 2,2,2,2]; descending, ties by index
    for out in (got, got_ov):
        assert out[0, :12].tolist() == [1, 2, 7, 3, 8, 9, 10, 11, 0, 4, 5, 6]
        np.testing.assert_array_equal(out, SortModel()(x).numpy())


def test_svrn_suppression_ties_export_like_pytorch(tmp_path):
    """SVRN's suppression mask (top-n of the salience scores among the available cells, ties
    by index) from the exported graph equals PyTorch's in onnxruntime and OpenVINO when the
    scores tie at the cut: exact zeros (a saturated SIM attention gives them) and -inf at the
    cells an earlier stage suppressed."""
    import onnxruntime as ort
    import openvino as ov

    from fastreid_plugins.svrn import suppression_mask

    class MaskModel(torch.nn.Module):
        def forward(self, x):
            s = x[:, 0, :8, :8]
            available = (x[:, 1, :8, :8] > 0).float()
            m1 = suppression_mask(s, 12)
            m2 = suppression_mask(s, 6, available=available)
            return torch.cat([m1.flatten(1), m2.flatten(1)], 1)

    g = torch.Generator().manual_seed(0)
    x = torch.zeros(4, 3, 8, 8)
    x[:, 0, 7, 4:] = torch.rand(4, 4, generator=g) + 1  # 4 positive scores, 60 tied zeros
    x[:, 1] = (torch.rand(4, 8, 8, generator=g) > 0.3).float()
    x[1, 0] = 0.0  # all tied
    path = str(tmp_path / "mask.onnx")
    engine.export_onnx(MaskModel(), path, 8, 8, batch_size=2)
    ref = MaskModel()(x).numpy()
    # by hand: image 1 has no score > 0, so the 12 cells of the first mask are 0..11
    assert np.flatnonzero(ref[1, :64] == 0).tolist() == list(range(12))
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()})[0]
    compiled = ov.Core().compile_model(path, "CPU")
    got_ov = compiled({"images": x.numpy()})[compiled.outputs[0]]
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got_ov, ref)


def test_sigmoid_tail_exports_like_pytorch(tmp_path):
    """A saturated attention map's tail (sigmoid of -16 .. -85) is what SVRN's top-n cut ranks
    by when the scores saturate: the exported graph must reproduce torch's values relative to
    their size there. onnxruntime 1.32's ``Sigmoid`` returned 0 from -18 down and 5.96e-8 at -16
    (torch 1.13e-7), which made the onnxruntime engine of SVRN pick other suppressed cells."""
    import onnxruntime as ort
    import openvino as ov

    class Sig(torch.nn.Module):
        def forward(self, x):
            return torch.sigmoid(x.flatten(1))

    x = torch.tensor([-85., -60., -30., -20., -18., -16.5, -16., -5., 0., 5., 30.])
    x = x.expand(2, 3, 1, 11).contiguous()
    # torch's own: 0 where exp(-x) overflows (x < -88.72), subnormal just above
    very = torch.tensor([-500., -90., -88.7, 88.7, 500.]).expand(2, 3, 1, 5).contiguous()
    ref = 1 / (1 + np.exp(-x.double().flatten(1).numpy()))  # float64 reference
    path = str(tmp_path / "sig.onnx")
    engine.export_onnx(Sig(), path, 1, 11, batch_size=2)
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()})[0]
    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got_ov = compiled({"images": x.numpy()})[compiled.outputs[0]]
    for out in (got, got_ov):
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=0)
    path = str(tmp_path / "sig_very.onnx")
    engine.export_onnx(Sig(), path, 1, 5, batch_size=2)
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"images": very.numpy()})[0]
    np.testing.assert_allclose(got, Sig()(very).numpy(), rtol=1e-5, atol=0)


def test_int8_quantizes_a_saturated_attention(tmp_path):
    """The int8 (QDQ) graph of a saturated sigmoid attention (logits down to -500, as SVRN's
    random SIM) keeps the features: the exported sigmoid has no infinite intermediate (with
    ``1 / (1 + exp(-x))``, ``exp(500)`` = inf made the quantizer's MinMax scale infinite and
    the int8 SVRN engine output zeros, cosine 0)."""
    import onnxruntime as ort

    from fastreid_plugins.deploy.gate import cosine_rows
    from fastreid_plugins.deploy.quantize import quantize_onnx

    class Att(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.att = torch.nn.Conv2d(8, 1, 3, padding=1)

        def forward(self, x):
            f = torch.relu(self.conv(x / 255))
            return (f * torch.sigmoid(self.logits(f))).mean((2, 3))

        def logits(self, f):
            return 5000 * self.att(f)  # saturated: logits of +-hundreds

    torch.manual_seed(0)
    model = Att().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 16, 16, generator=g) * 255
    src, dst = str(tmp_path / "att.onnx"), str(tmp_path / "att8.onnx")
    engine.export_onnx(model, src, 16, 16, batch_size=2)
    quantize_onnx(src, dst, [x.numpy()])
    got = ort.InferenceSession(dst, providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
        logits = model.logits(torch.relu(model.conv(x / 255)))
    assert logits.min() < -100 and logits.max() > 100
    assert cosine_rows(ref, got).min() > 0.98


def test_int8_scales_do_not_depend_on_calibration_batching(tmp_path):
    """``tools.export`` calibrates on batches of ``CALIB_BATCH`` (2) images to bound the
    calibration session's memory (it scales with the batch: ~1.7 GB per image for CLIP-SENet's
    paper config); MinMax ranges are a min / max over all images, so the int8 graph must be the
    one calibrated on a single batch."""
    import onnx

    from fastreid_plugins.deploy.quantize import batches, quantize_onnx
    from fastreid_plugins.tools.export import CALIB_BATCH

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 3), torch.nn.Flatten(1)).eval()
    src = str(tmp_path / "m.onnx")
    engine.export_onnx(model, src, 8, 8, batch_size=2)
    x = (torch.rand(9, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 255).numpy()
    graphs = []
    for i, calib in enumerate(([x], list(batches(x, CALIB_BATCH)))):
        dst = str(tmp_path / f"q{i}.onnx")
        quantize_onnx(src, dst, calib)
        graphs.append({t.name: onnx.numpy_helper.to_array(t)
                       for t in onnx.load(dst).graph.initializer})
    assert len(x) > CALIB_BATCH and graphs[0].keys() == graphs[1].keys()
    for name, value in graphs[0].items():
        np.testing.assert_array_equal(value, graphs[1][name], err_msg=name)


def test_int8_keeps_named_modules_in_fp32(tmp_path):
    """``quantize_onnx(..., fp32_prefixes)`` (``tools.export --int8-fp32-modules``) leaves the
    nodes of the named module unquantized: their convolution reads its float weights directly,
    the other branch's reads int8 weights through a DequantizeLinear."""
    import onnx

    from fastreid_plugins.deploy.quantize import quantize_onnx

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
            self.b = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())

        def forward(self, x):
            return torch.cat([self.a(x / 255).flatten(1), self.b(x / 255).flatten(1)], 1)

    torch.manual_seed(0)
    x = (torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 255).numpy()
    src, dst = str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx")
    engine.export_onnx(Two().eval(), src, 8, 8, batch_size=2)
    quantize_onnx(src, dst, [x], fp32_prefixes=["/model/b/"])
    g = onnx.load(dst).graph
    floats = {t.name for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT}
    made_by = {o: n.op_type for n in g.node for o in n.output}
    convs = {n.name.split("/")[2]: n for n in g.node if n.op_type == "Conv"}
    assert convs["b"].input[1] in floats                       # fp32 weights
    assert made_by.get(convs["a"].input[1]) == "DequantizeLinear"  # int8 weights
