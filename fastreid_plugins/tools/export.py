"""``python -m fastreid_plugins.tools.export``: export a trained model to an inference engine
(ONNX or OpenVINO; fp32, fp16, bf16 or int8) and prove on real labelled images that it gives the
PyTorch model's answers (the accuracy gate, :mod:`fastreid_plugins.deploy.gate`).

Usage::

    python -m fastreid_plugins.tools.export --config-file configs/demo/svrn.yml \\
        --format openvino --precision int8 --output svrn_int8.xml \\
        [--calib-images DIR | --calib-count 128] [--int8-fp32-modules sem] [--gate-dataset VeRi] \\
        [--max-map-drop 1.0] [--min-cosine 0.98] [--force] MODEL.WEIGHTS model_final.pth

Steps: (1) the model's eval forward is traced to an fp32 ONNX graph
(:func:`fastreid_plugins.deploy.onnx.export_onnx`; a module that cannot be exported is named)
and checked against PyTorch on a random batch; (2) the engine of ``--format`` / ``--precision``
is built: ``onnx fp32`` is that graph, ``onnx int8`` onnxruntime's static quantizer (QDQ),
``openvino fp32 | fp16 | bf16`` the converted IR, ``openvino int8`` the converted QDQ graph
of ``onnx int8``; ``tensorrt fp32 | fp16 | int8`` a TensorRT engine for an NVIDIA GPU from the
same graphs (:mod:`fastreid_plugins.deploy.tensorrt`: written for TensorRT 10, UNVERIFIED here,
no GPU); int8 calibrates on ``--calib-count`` images (default 128) of ``--calib-images``
(a folder or list file) or, by default, of the config's train set (``DATASETS.NAMES``, evenly
spaced), 2 images a batch, and ``--int8-fp32-modules`` keeps the named modules of the model
(e.g. CLIP-SENet's TinyCLIP ``sem``) in fp32; (3) the gate: PyTorch and the engine extract the
labelled split ``--gate-dataset`` (default the config's ``DATASETS.TESTS[0]``) and the report
``<output>.gate.json`` is written beside the engine (cosine min / mean, Rank-1 / mAP / mINP of
both, differences). When
the gate fails the engine is not written and the command exits 2 with the numbers printed;
``--force`` writes it anyway with ``"passed": false`` in the report.

OpenVINO is the extra ``pip install -e ".[deploy]"``. Nothing heavy is imported before
the arguments are parsed (``--help`` answers at once).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence

from fastreid_plugins.deploy import (
    FORMATS,
    MAX_MAP_DROP,
    MIN_COSINE,
    PRECISIONS,
    GateFailedError,
)
from fastreid_plugins.errors import ConfigError

__all__ = ["main", "build_parser", "CALIB_COUNT"]

logger = logging.getLogger("fastreid_plugins.tools.export")

#: calibration images of int8 (``--calib-count``)
CALIB_COUNT = 128
#: images per calibration batch: onnxruntime's calibration session (the graph with a ReduceMin /
#: ReduceMax on every tensor) needed ~1.7 GB per image of the batch for CLIP-SENet's paper config
#: (ResNeXt-101-IBN + TinyCLIP at 320x320: 5.3 GB peak RSS at batch 2, 8.2 GB at batch 4; batch
#: 16 was killed by the 23 GB machine's OOM killer). MinMax ranges do not depend on the batching.
CALIB_BATCH = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastreid_plugins.tools.export",
        description="Export a re-id model to an ONNX / OpenVINO engine behind an accuracy gate.")
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--format", default="onnx", choices=FORMATS)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32; fp16 (openvino, tensorrt); bf16 (openvino); int8 (post-training "
                   "static quantization)")
    p.add_argument("--output", default=None,
                   help="engine file (default model_<precision>.onnx / .xml / .engine)")
    p.add_argument("--batch-size", type=int, default=2, help="batch of the example input")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--calib-images", default=None, metavar="DIR|LIST",
                   help="int8 calibration images (default: the config's train set)")
    p.add_argument("--calib-count", type=int, default=CALIB_COUNT,
                   help="int8 calibration images used (default %(default)s)")
    p.add_argument("--int8-fp32-modules", default="", metavar="MOD[,MOD]",
                   help="int8: modules of the model kept in fp32 (their qualified names, e.g. "
                   "CLIP-SENet's 'sem', its TinyCLIP encoder: docs/deploy.md)")
    p.add_argument("--gate-dataset", default=None,
                   help="labelled split of the gate (default the config's DATASETS.TESTS[0])")
    p.add_argument("--max-map-drop", type=float, default=MAX_MAP_DROP,
                   help="gate: largest mAP drop in points (default %(default)s)")
    p.add_argument("--min-cosine", type=float, default=None,
                   help="gate: smallest feature cosine (default "
                   + ", ".join(f"{k} {v}" for k, v in MIN_COSINE.items()) + ")")
    p.add_argument("--force", action="store_true",
                   help="write the engine even when the gate fails (recorded in the report)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default torch's)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides "
                   "(MODEL.WEIGHTS path/to/model.pth)")
    return p


def _check_args(args):
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.calib_count < 1:
        raise ConfigError(f"--calib-count must be >= 1, got {args.calib_count}")
    if args.format == "tensorrt":
        if args.precision == "bf16":
            raise ConfigError("--format tensorrt takes --precision fp32, fp16 or int8")
        from fastreid_plugins.deploy.tensorrt import _trt

        _trt()  # a host without TensorRT fails here, before the model is built
    from fastreid_plugins.deploy import require

    # a missing extra fails here, before the model is built
    require("onnxruntime", "tools.export (its checks)")
    if args.format == "openvino":
        require("openvino", "--format openvino")
    if args.format == "onnx" and args.precision in ("fp16", "bf16"):
        raise ConfigError(
            f"--format onnx --precision {args.precision}: a CPU runs ONNX in fp32 or int8; use "
            f"--format openvino --precision {args.precision}, or build a TensorRT engine from "
            "--format tensorrt on a GPU host.")
    ext = {"openvino": ".xml", "tensorrt": ".engine"}.get(args.format, ".onnx")
    if args.output is None:
        args.output = f"model_{args.precision}{ext}"
    if not args.output.endswith(ext):
        raise ConfigError(f"--format {args.format} writes a {ext} file, got --output "
                          f"{args.output!r}")


def _load_images(cfg, paths):
    """(N, 3, H, W) float32 numpy images in [0, 255] of ``paths`` (the test transforms)."""
    import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

    import numpy as np
    from fastreid.data.data_utils import read_image
    from fastreid.data.transforms import build_transforms

    tf = build_transforms(cfg, is_train=False)
    return np.stack([tf(read_image(p, "RGB")).numpy() for p in paths]).astype(np.float32)


def calibration_paths(cfg: Any, source: Optional[str], count: int) -> List[str]:
    """``count`` image paths evenly spaced over ``source`` (a folder / list file) or over the
    config's train set (``DATASETS.NAMES`` under the datasets root).

    Raises:
        DatasetNotFoundError / DatasetError: missing or empty source.
    """
    if source:
        from fastreid_plugins.tools.extract import count_images, iter_image_paths

        count_images(source)
        pool = list(iter_image_paths(source))
    else:
        import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

        from fastreid.data.datasets import DATASET_REGISTRY

        from fastreid_plugins.data import datasets_root

        pool = []
        for name in cfg.DATASETS.NAMES:
            pool += [item[0] for item in DATASET_REGISTRY.get(name)(root=datasets_root()).train]
    step = max(1, len(pool) / count)
    return [pool[int(i * step)] for i in range(min(count, len(pool)))]


def gate_features(cfg: Any, wrapper: Any, runner: Any, dataset: str) -> Dict[str, Any]:
    """PyTorch (``wrapper``: images -> features) and engine (``runner``) features of the
    labelled split ``dataset`` as the test loader yields it.

    Returns:
        dict: ``ref``, ``got`` ((N, D) float32), ``pids``, ``camids`` ((N,)), ``num_query``.

    Raises:
        ConfigError: the split has no fixed queries (the VehicleID family).
    """
    import numpy as np
    import torch

    from fastreid_plugins.tools import trainer_class_for

    loader, num_query = trainer_class_for(cfg).build_test_loader(cfg, dataset)
    if num_query == 0:
        raise ConfigError(f"--gate-dataset {dataset}: the gate needs a split with fixed query "
                          "and gallery sets (the VehicleID family draws them); pass e.g. "
                          "--gate-dataset VeRi.")
    ref, got, pids, camids = [], [], [], []
    device = next(iter(wrapper.parameters()), torch.zeros(())).device
    with torch.no_grad():
        for batch in loader:
            images = batch["images"].float()
            ref.append(wrapper(images.to(device)).float().cpu().numpy())
            got.append(runner(images.numpy()))
            pids.append(np.asarray(batch["targets"]))
            camids.append(np.asarray(batch["camids"]))
    return {"ref": np.concatenate(ref), "got": np.concatenate(got),
            "pids": np.concatenate(pids), "camids": np.concatenate(camids),
            "num_query": num_query}


def build_engine(args: Any, cfg: Any, onnx_fp32: str, engine: str) -> None:
    """Write the engine of ``args.format`` / ``args.precision`` from the fp32 graph."""
    from fastreid_plugins.deploy.quantize import batches, quantize_onnx, set_onnx_precision

    calib = []
    if args.precision == "int8":
        paths = calibration_paths(cfg, args.calib_images, args.calib_count)
        logger.info(f"int8 calibration on {len(paths)} images")
        calib = list(batches(_load_images(cfg, paths), CALIB_BATCH))
    src = onnx_fp32
    if args.precision == "int8":  # one quantizer for both formats (docs/deploy.md says why)
        src = engine if args.format == "onnx" else os.path.join(os.path.dirname(engine),
                                                                 "int8.onnx")
        quantize_onnx(onnx_fp32, src, calib, [f"/model/{m}/" for m in args.int8_fp32_modules])
    if args.format == "onnx":
        if args.precision != "int8":
            shutil.copyfile(onnx_fp32, engine)
            set_onnx_precision(engine, "fp32")
    elif args.format == "tensorrt":  # unverified here (no GPU): fastreid_plugins.deploy.tensorrt
        from fastreid_plugins.deploy.tensorrt import onnx_to_tensorrt

        h, w = cfg.INPUT.SIZE_TEST
        onnx_to_tensorrt(src, engine, args.precision, h, w)
    else:
        from fastreid_plugins.deploy.openvino import onnx_to_openvino

        onnx_to_openvino(src, engine, args.precision)


def _random_input_check(check_onnx, wrapper, onnx_fp32, h, w, args):
    """The fp32 graph vs PyTorch on a random batch (:func:`fastreid_plugins.deploy.onnx.
    check_onnx`); a failure stops the export, or with ``--force`` is logged and recorded (random
    input can put SVRN's top-n salience cut on a tie, where two correct graphs pick different
    cells; the gate on real images decides)."""
    try:
        check = check_onnx(wrapper, onnx_fp32, h, w, args.batch_size + 1)
    except AssertionError as e:
        if not args.force:
            raise GateFailedError(f"The fp32 ONNX graph differs from PyTorch on random input: {e}"
                                  " (--force goes on to the gate on real images)") from e
        logger.warning(f"fp32 ONNX vs PyTorch on random input: {e}; going on (--force)")
        return {"passed": False, "message": str(e)}
    logger.info(f"ONNX fp32 vs PyTorch on random input: max |diff| {check['max_abs_diff']:.2e}")
    return dict(check, passed=True)


def _fp32_modules(args, model):
    """The ``--int8-fp32-modules`` names, checked against ``model``'s modules.

    Raises:
        ConfigError: a name that is not a module of the model, or the option without int8.
    """
    names = [m.strip() for m in args.int8_fp32_modules.split(",") if m.strip()]
    if names and args.precision != "int8":
        raise ConfigError(f"--int8-fp32-modules applies to --precision int8, got --precision "
                          f"{args.precision}")
    known = dict(model.named_modules())
    bad = [m for m in names if m not in known]
    if bad:
        top = ", ".join(n for n, _ in model.named_children())
        raise ConfigError(f"--int8-fp32-modules {','.join(bad)}: not a module of "
                          f"{type(model).__name__} (its top-level modules: {top})")
    return names


def _move_engine(tmp_engine, output):
    """Move an engine and its companion file (OpenVINO ``.bin``, TensorRT ``.meta.json``)."""
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    if output.endswith(".xml"):
        os.replace(tmp_engine[:-4] + ".bin", output[:-4] + ".bin")
    if os.path.isfile(tmp_engine + ".meta.json"):
        os.replace(tmp_engine + ".meta.json", output + ".meta.json")
    os.replace(tmp_engine, output)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the tool; returns ``{"output", "format", "precision", "meta_arch", "input_shape",
    "check", "gate", "report", "written"}``.

    Raises:
        FileNotFoundError: missing config file or ``MODEL.WEIGHTS``.
        ConfigError: bad arguments. GateFailedError: the gate failed (without ``--force``).
        MissingExtraError: OpenVINO / onnxruntime missing.
    """
    args = build_parser().parse_args(argv)
    _check_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch

    from fastreid_plugins.deploy.gate import format_report, gate_report
    from fastreid_plugins.deploy.onnx import check_onnx, export_onnx
    from fastreid_plugins.deploy.runtime import EngineRunner, report_path, sha256
    from fastreid_plugins.tools import build_tool_cfg, load_tool_model

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = build_tool_cfg(args.config_file, args.opts)
    model = load_tool_model(cfg, "export")
    args.int8_fp32_modules = _fp32_modules(args, model)
    h, w = cfg.INPUT.SIZE_TEST
    dataset = args.gate_dataset or (cfg.DATASETS.TESTS[0] if cfg.DATASETS.TESTS else None)
    if not dataset:
        raise ConfigError("No labelled split for the accuracy gate: the config has no "
                          "DATASETS.TESTS; pass --gate-dataset NAME.")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export_") as tmp:
        onnx_fp32 = os.path.join(tmp, "fp32.onnx")
        wrapper = export_onnx(model, onnx_fp32, h, w, args.batch_size, args.opset)
        check = _random_input_check(check_onnx, wrapper, onnx_fp32, h, w, args)
        engine = os.path.join(tmp, "engine" + os.path.splitext(args.output)[1])
        build_engine(args, cfg, onnx_fp32, engine)
        runner = EngineRunner(engine, args.format, threads=torch.get_num_threads())
        f = gate_features(cfg, wrapper, runner, dataset)
        report = gate_report(f["ref"], f["got"], f["pids"], f["camids"], f["num_query"],
                             cfg.TEST.METRIC, args.precision, args.min_cosine, args.max_map_drop)
        report.update(dataset=dataset, format=args.format, random_input_check=check,
                      int8_fp32_modules=args.int8_fp32_modules,
                      engine_file=os.path.basename(args.output),
                      config_file=os.path.abspath(args.config_file),
                      weights=os.path.abspath(cfg.MODEL.WEIGHTS),
                      input_shape=["batch", 3, h, w], forced=bool(args.force and
                                                                  not report["passed"]))
        written = report["passed"] or args.force
        report["engine_sha256"] = sha256(engine) if written else None
        report["written"] = written
        print(format_report(report))
        if written:
            _move_engine(engine, args.output)
    rpath = report_path(args.output)
    with open(rpath, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=1)
    if not written:
        raise GateFailedError(
            f"{args.format} {args.precision} engine of {cfg.MODEL.META_ARCHITECTURE} refused by "
            f"the accuracy gate ({'; '.join(report['failures'])}); numbers above and in {rpath}. "
            "Use more / other calibration images, another precision, or --force to write it "
            "anyway.")
    logger.info(f"{args.format} {args.precision} engine written to {args.output}; gate report "
                f"{rpath}")
    return {"output": args.output, "format": args.format, "precision": args.precision,
            "meta_arch": cfg.MODEL.META_ARCHITECTURE, "input_shape": ["batch", 3, h, w],
            "check": check, "gate": report, "report": rpath, "written": written}


if __name__ == "__main__":
    from fastreid_plugins.cli import run_cli
    run_cli(main, sys.argv[1:])
