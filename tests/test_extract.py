"""Feature extraction of your own images (``fastreid_plugins.tools.extract``) on the real VeRi
sample.

The reference features are computed here the way the project's evaluator gets them: the
config's test loader (``build_test_loader``) through FastReID's ``inference_on_dataset`` (with
``TEST.FLIP``), recorded per image path; the extractor reads the same files from the folders
itself (another order, other batches) and must give the same features (max |diff| <= 1e-5).
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from fastreid.evaluation.evaluator import DatasetEvaluator, inference_on_dataset
from fastreid.modeling import build_model

import fastreid_plugins  # noqa: F401
from fastreid_plugins.engine import load_model_weights
from fastreid_plugins.errors import (
    ConfigError,
    DatasetError,
    DatasetNotFoundError,
    ImageReadError,
    UserError,
)
from fastreid_plugins.tools import build_tool_cfg, trainer_class_for
from fastreid_plugins.tools.extract import FeatureExtractor, extract_to_dir, iter_image_paths
from tests.test_export_onnx import demo_config, random_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 600
# bagtricks_r18: cosine, here with TEST.FLIP on; mfgnet: euclidean, a plugin meta-arch
CASES = {"bagtricks_r18": ["TEST.FLIP.ENABLED", "True"], "mfgnet": []}


class _Recorder(DatasetEvaluator):
    """Keeps what the evaluator's ``process`` receives: features, paths, pids, camids."""

    def reset(self):
        self.feats, self.paths, self.pids, self.camids = [], [], [], []

    def process(self, inputs, outputs):
        self.feats.append(outputs.detach().to("cpu", torch.float32))
        self.paths.extend(inputs["img_paths"])
        self.pids.extend(inputs["targets"].tolist())
        self.camids.extend(inputs["camids"].tolist())

    def evaluate(self):
        return {}


def evaluator_features(cfg, weights, veri_root, datasets_root):
    """(features (N, D), paths, pids, camids, num_query) as the evaluator computes them."""
    datasets_root(veri_root)
    model = build_model(cfg)
    load_model_weights(model, weights)
    model.eval()
    loader, num_query = trainer_class_for(cfg).build_test_loader(cfg, cfg.DATASETS.TESTS[0])
    rec = _Recorder()
    rec.reset()
    inference_on_dataset(model, loader, rec, flip_test=cfg.TEST.FLIP.ENABLED)
    return torch.cat(rec.feats).numpy(), rec.paths, rec.pids, rec.camids, num_query


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Seeded random weights (non-trivial BN statistics) of the demo configs: name -> (cfg_path,
    weights, opts)."""
    out = {}
    for name, extra in CASES.items():
        path = demo_config(name)
        w = random_weights(path, tmp_path_factory.mktemp(name))
        out[name] = (path, w, ["MODEL.HEADS.NUM_CLASSES", "4", *extra])
    return out


def env():
    return dict(os.environ, FASTREID_PLUGINS_THREADS="1", OMP_NUM_THREADS="1",
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_module(module, args, extra_env=None, check=True):
    res = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                         env=dict(env(), **(extra_env or {})), capture_output=True, text=True,
                         timeout=TIMEOUT)
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


def load_dir(out):
    """(features, paths) of an extraction folder, read from its files (not via the package)."""
    with open(os.path.join(out, "manifest.json")) as f:
        man = json.load(f)
    feats, paths = [], []
    for s in man["shards"]:
        feats.append(np.load(os.path.join(out, s["features"])).astype(np.float32))
        with open(os.path.join(out, s["paths"])) as f:
            paths += f.read().splitlines()
    return np.concatenate(feats), paths, man


# ----------------------------------------------------------------------------- equality
@pytest.mark.parametrize("name", list(CASES))
def test_features_equal_evaluator(name, models, veri_root, datasets_root, tmp_path):
    cfg_path, weights, opts = models[name]
    cfg = build_tool_cfg(cfg_path, ["MODEL.WEIGHTS", weights, *opts])
    ref, ref_paths, _, _, _ = evaluator_features(cfg, weights, veri_root, datasets_root)
    ref_by_path = dict(zip(ref_paths, ref))
    veri = os.path.join(veri_root, "veri")

    # Python API, in-process reading (num_workers=0), the evaluator's batch size
    ext = FeatureExtractor(cfg_path, weights=weights, opts=opts)
    assert ext.batch_size == cfg.TEST.IMS_PER_BATCH
    paths = sorted(iter_image_paths(os.path.join(veri, "image_query")))
    feats = ext.extract(paths)
    assert feats.dtype == np.float32 and feats.shape == (len(paths), ref.shape[1])
    want = np.stack([ref_by_path[p] for p in paths])
    # 1e-5 relative to the features' scale: with 2 torch threads (CI) the CPU kernels round
    # differently from 1 thread (measured 1.4e-5 on values up to ~10)
    assert np.abs(feats - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    assert np.abs(feats[0] - feats[1]).max() > 1e-3  # distinct images, distinct features
    # another batch size: oneDNN picks other kernels for other batch shapes, so equal up to
    # float32 rounding of the features' scale (MFG-Net's reach |f| ~ 50: ~3e-5 absolute)
    scale = np.abs(want).max()
    assert np.abs(ext.extract(paths[:7]) - want[:7]).max() <= 1e-5 * max(1.0, scale)
    ext.batch_size = 7
    assert np.abs(ext.extract(paths) - want).max() <= 1e-5 * max(1.0, scale)
    ext.batch_size = cfg.TEST.IMS_PER_BATCH

    # PIL images and uint8 tensors: the same features as their files (same batch shape)
    from PIL import Image

    pil = [Image.open(p) for p in paths[:3]]
    ten = [torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1) for im in pil]
    of_files = ext.extract(paths[:3])
    assert np.abs(ext.extract(pil) - of_files).max() <= 1e-6
    assert np.abs(ext.extract(ten) - of_files).max() <= 1e-6

    # CLI with 2 DataLoader workers (the evaluator's batch size): the same features
    out = str(tmp_path / "query")
    run_module("fastreid_plugins.tools.extract", [
        "--config-file", cfg_path, "--images", os.path.join(veri, "image_query"), "--out", out,
        "--num-workers", "2", "--threads", "1", "MODEL.WEIGHTS", weights, *opts])
    got, got_paths, man = load_dir(out)
    assert got_paths == paths and man["complete"] and man["dim"] == ref.shape[1]
    assert man["metric"] == cfg.TEST.METRIC and man["weights"] == os.path.abspath(weights)
    assert man["flip"] == cfg.TEST.FLIP.ENABLED
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())

    # 3 shards of 10 (batches of <= 10), float16 for MFG-Net: equal to the API's batches of 10
    dtype = "float16" if name == "mfgnet" else "float32"
    out = str(tmp_path / "gallery")
    run_module("fastreid_plugins.tools.extract", [
        "--config-file", cfg_path, "--images", os.path.join(veri, "image_test"), "--out", out,
        "--shard-size", "10", "--num-workers", "2", "--threads", "1", "--dtype", dtype,
        "MODEL.WEIGHTS", weights, *opts])
    got, got_paths, man = load_dir(out)
    assert got_paths == sorted(p for p in ref_paths if "image_test" in p)
    assert len(man["shards"]) == 3 and man["dtype"] == dtype
    assert np.load(os.path.join(out, man["shards"][0]["features"])).dtype == np.dtype(dtype)
    ext.batch_size = 10
    api = np.concatenate([ext.extract(got_paths[s:s + 10]) for s in (0, 10, 20)])
    ref_g = np.stack([ref_by_path[p] for p in got_paths])
    if dtype == "float32":
        assert np.abs(got - api).max() <= 1e-6 * max(1.0, np.abs(api).max())
        assert np.abs(got - ref_g).max() <= 1e-5 * max(1.0, np.abs(ref_g).max())
    else:
        # float16 storage: one float16 rounding step of the float32 features (2^-10 relative)
        np.testing.assert_allclose(got, api, rtol=2 ** -10, atol=1e-5 * max(1.0, np.abs(api).max()))


def test_onnx_backend_equals_evaluator(models, veri_root, datasets_root, tmp_path):
    from fastreid_plugins.tools import export_onnx

    cfg_path, weights, opts = models["bagtricks_r18"]
    cfg = build_tool_cfg(cfg_path, ["MODEL.WEIGHTS", weights, *opts])
    ref, ref_paths, _, _, _ = evaluator_features(cfg, weights, veri_root, datasets_root)
    onnx_path = str(tmp_path / "model.onnx")
    export_onnx.main(["--config-file", cfg_path, "--output", onnx_path, "--no-check",
                      "MODEL.WEIGHTS", weights, *opts])
    out = str(tmp_path / "onnx_feats")
    run_module("fastreid_plugins.tools.extract", [
        "--config-file", cfg_path, "--images", os.path.join(veri_root, "veri", "image_query"),
        "--out", out, "--backend", "onnx", onnx_path, "--batch-size", "5", *opts])
    got, paths, man = load_dir(out)
    assert man["backend"] == "onnx" and man["weights"] == os.path.abspath(onnx_path)
    want = np.stack([dict(zip(ref_paths, ref))[p] for p in paths])
    assert len(paths) == 30 and np.abs(got - want).max() <= 1e-4
    # an ONNX model of another input size is refused
    small = str(tmp_path / "small.onnx")
    export_onnx.main(["--config-file", cfg_path, "--output", small, "--no-check",
                      "MODEL.WEIGHTS", weights, *opts, "INPUT.SIZE_TEST", "[64, 64]"])
    with pytest.raises(ConfigError, match="SIZE_TEST"):
        FeatureExtractor(cfg_path, opts=opts, backend="onnx", onnx_model=small)


# ----------------------------------------------------------------------------- bad images
@pytest.fixture
def images_with_truncated(veri_root, tmp_path):
    """A folder of 4 real images, the third truncated to half its bytes."""
    src = sorted(iter_image_paths(os.path.join(veri_root, "veri", "image_query")))[:4]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in src:
        shutil.copy(p, folder)
    bad = str(folder / os.path.basename(src[2]))
    with open(bad, "rb") as f:
        data = f.read()
    with open(bad, "wb") as f:
        f.write(data[:len(data) // 2])
    return sorted(str(folder / os.path.basename(p)) for p in src), bad


@pytest.mark.parametrize("workers", [0, 2])
def test_truncated_image_raise_and_skip(models, images_with_truncated, workers, tmp_path):
    cfg_path, weights, opts = models["mfgnet"]
    paths, bad = images_with_truncated
    ext = FeatureExtractor(cfg_path, weights=weights, opts=opts, batch_size=2,
                           num_workers=workers)
    with pytest.raises(ImageReadError, match=os.path.basename(bad)) as e:
        ext.extract(paths)
    assert bad in str(e.value)
    feats, kept = ext.extract(paths, on_error="skip", return_index=True)
    assert kept.tolist() == [0, 1, 3] and feats.shape[0] == 3
    assert [s[1] for s in ext.skipped] == [bad]
    good = ext.extract([paths[0], paths[1], paths[3]])
    assert np.abs(feats - good).max() <= 1e-5 * max(1.0, np.abs(good).max())
    # a missing file named in a list file
    lst = tmp_path / "list.txt"
    lst.write_text(f"{paths[0]}\n# a comment\n\n{tmp_path / 'gone.jpg'}\n")
    with pytest.raises(DatasetNotFoundError, match="gone.jpg"):
        ext.extract(list(iter_image_paths(str(lst))))

    # the CLI: raise mode exits 2 naming the file; skip mode lists it in the shard record
    folder = os.path.dirname(bad)
    res = run_module("fastreid_plugins.tools.extract", [
        "--config-file", cfg_path, "--images", folder, "--out", str(tmp_path / "r"),
        "--num-workers", str(workers), "--batch-size", "2", "MODEL.WEIGHTS", weights, *opts],
        check=False)
    assert res.returncode == 2 and bad in res.stderr and "Traceback" not in res.stderr
    assert "--on-error skip" in res.stderr  # the error names the next step (issue 27)
    # the model print (100+ lines) goes to OUT/log.txt, the console gets one line
    assert "(cls_layer)" not in res.stdout + res.stderr
    log = (tmp_path / "r" / "log.txt").read_text()
    assert "Model:\n" in log and "(cls_layer)" in log and "DATALOADER:" in log
    out = str(tmp_path / "s")
    run_module("fastreid_plugins.tools.extract", [
        "--config-file", cfg_path, "--images", folder, "--out", out, "--on-error", "skip",
        "--num-workers", str(workers), "--batch-size", "2", "MODEL.WEIGHTS", weights, *opts])
    got, got_paths, man = load_dir(out)
    assert got_paths == [paths[0], paths[1], paths[3]] and man["num_skipped"] == 1
    with open(os.path.join(out, "shard_00000.json")) as f:
        assert [s["image"] for s in json.load(f)["skipped"]] == [bad]
    assert np.abs(got - good).max() <= 1e-5 * max(1.0, np.abs(good).max())


# ----------------------------------------------------------------------------- kill / resume
def test_kill_and_resume(models, veri_root, tmp_path):
    """A run SIGKILLed right after its first shard is committed (test hook), started again,
    writes only the missing shards; the result equals an uninterrupted run."""
    cfg_path, weights, opts = models["mfgnet"]
    images = os.path.join(veri_root, "veri", "image_query")  # 30 images -> shards of 8: 4
    def args(out):
        return ["--config-file", cfg_path, "--images", images, "--shard-size", "8", "--out", out,
                "--batch-size", "4", "--num-workers", "0", "MODEL.WEIGHTS", weights, *opts]

    out = str(tmp_path / "resumed")
    res = run_module("fastreid_plugins.tools.extract", args(out),
                     {"FASTREID_PLUGINS_EXTRACT_KILL_AFTER_SHARDS": "1"}, check=False)
    assert res.returncode == -9, res.stderr[-2000:]
    assert os.path.isfile(os.path.join(out, "shard_00000.json"))
    assert not os.path.exists(os.path.join(out, "shard_00001.json"))
    with open(os.path.join(out, "manifest.json")) as f:
        assert json.load(f)["complete"] is False
    # what a kill in the middle of writing shard 1 would leave: a temporary file, and a
    # features file without its record (garbage)
    with open(os.path.join(out, "shard_00001.npy.tmp123"), "wb") as f:
        f.write(b"partial")
    with open(os.path.join(out, "shard_00001.npy"), "wb") as f:
        f.write(b"garbage")
    first = os.stat(os.path.join(out, "shard_00000.npy")).st_mtime_ns
    from fastreid_plugins.tools.search import FeatureStore

    with pytest.raises(DatasetError, match="not complete"):
        FeatureStore(out)

    res = run_module("fastreid_plugins.tools.extract", args(out))
    assert "3 shards written" in res.stderr
    assert os.stat(os.path.join(out, "shard_00000.npy")).st_mtime_ns == first  # skipped

    ref = str(tmp_path / "uninterrupted")
    run_module("fastreid_plugins.tools.extract", args(ref))
    got, got_paths, man = load_dir(out)
    want, want_paths, man_ref = load_dir(ref)
    assert man["complete"] and len(man["shards"]) == 4 and got_paths == want_paths
    assert len(got_paths) == 30 and np.array_equal(got, want)
    assert man["shards"] == man_ref["shards"]

    # the same folder with another model / list is refused, not mixed
    with pytest.raises(DatasetError, match="other settings"):
        ext = FeatureExtractor(cfg_path, weights=weights, opts=[*opts, "TEST.FLIP.ENABLED",
                                                                 "True"])
        extract_to_dir(ext, images, out, shard_size=8, progress=False)


# ----------------------------------------------------------------------------- bad input
def test_bad_input_errors(models, tmp_path):
    cfg_path, weights, opts = models["mfgnet"]
    missing = str(tmp_path / "no_such_dir")
    base = ["--config-file", cfg_path, "--out", str(tmp_path / "o"), "MODEL.WEIGHTS", weights,
            *opts]
    from fastreid_plugins.tools import extract

    with pytest.raises(DatasetNotFoundError, match="no_such_dir"):
        extract.main(["--images", missing, *base])
    empty_list = tmp_path / "empty.txt"
    empty_list.write_text("# nothing\n\n")
    with pytest.raises(DatasetError, match="empty.txt"):
        extract.main(["--images", str(empty_list), *base])
    empty_dir = tmp_path / "empty_dir"
    empty_dir.mkdir()
    (empty_dir / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="empty_dir"):
        extract.main(["--images", str(empty_dir), *base])
    with pytest.raises(ConfigError, match="MODEL.WEIGHTS"):
        FeatureExtractor(cfg_path, opts=opts)
    with pytest.raises(ConfigError, match="gone.pth"):
        FeatureExtractor(cfg_path, weights=str(tmp_path / "gone.pth"), opts=opts)
    with pytest.raises(ConfigError, match="--backend"):
        extract.main(["--images", str(empty_dir), "--backend", "tensorrt", *base])
    # the CLI (cli.run_cli) prints a user error as one Error block and exits 2, no traceback;
    # with --debug (anywhere on the line) the traceback
    res = run_module("fastreid_plugins.tools.extract", ["--images", missing, *base], check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("Error: --images not found:") and "no_such_dir" in res.stderr
    assert "(DatasetNotFoundError; rerun with --debug for the traceback)" in res.stderr
    res = run_module("fastreid_plugins.tools.extract", ["--images", missing, *base, "--debug"],
                     check=False)
    assert res.returncode == 1 and "Traceback" in res.stderr
    assert "DatasetNotFoundError" in res.stderr
    assert issubclass(DatasetNotFoundError, UserError) and issubclass(DatasetError, UserError)


def test_channels_last_runs_nhwc_and_matches(models, veri_root):
    """``channels_last=True`` (``--channels-last``): the convolutions run on NHWC tensors and the
    features equal the default (NCHW) run's up to float32 rounding; engines refuse the option."""
    from fastreid_plugins.tools import extract

    cfg_path, weights, opts = models["bagtricks_r18"]
    paths = sorted(iter_image_paths(os.path.join(veri_root, "veri", "image_query")))[:4]
    ref = FeatureExtractor(cfg_path, weights=weights, opts=opts).extract(paths)
    ext = FeatureExtractor(cfg_path, weights=weights, opts=opts, channels_last=True)
    convs = [m for m in ext.model.modules() if isinstance(m, torch.nn.Conv2d)]
    layouts = []
    hooks = [c.register_forward_hook(lambda m, i, o: layouts.append(
        o.is_contiguous(memory_format=torch.channels_last) and not o.is_contiguous()))
        for c in convs]
    got = ext.extract(paths)
    for h in hooks:
        h.remove()
    assert len(layouts) >= len(convs) and all(layouts), "a convolution gave an NCHW tensor"
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    assert ext.describe()["channels_last"] is True
    assert extract.build_parser().parse_args(
        ["--config-file", "c", "--images", "i", "--out", "o", "--channels-last"]).channels_last
    with pytest.raises(ConfigError, match="channels_last applies to the torch backend"):
        FeatureExtractor(cfg_path, opts=opts, backend="onnx", engine="x.onnx", channels_last=True)


def test_amp_on_cpu_is_close(models, veri_root):
    """``amp=True`` (bfloat16 autocast on the CPU): float32 output, close to the float32 run."""
    cfg_path, weights, opts = models["bagtricks_r18"]
    paths = sorted(iter_image_paths(os.path.join(veri_root, "veri", "image_query")))[:4]
    ref = FeatureExtractor(cfg_path, weights=weights, opts=opts).extract(paths)
    got = FeatureExtractor(cfg_path, weights=weights, opts=opts, amp=True).extract(paths)
    assert got.dtype == np.float32 and got.shape == ref.shape
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert (cos > 0.99).all() and np.abs(got - ref).max() > 0  # really ran in bfloat16
