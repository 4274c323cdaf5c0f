#!/usr/bin/env python
"""NNCF int8 at its calibration batch size vs onnxruntime's QDQ graph, both in OpenVINO.

Usage: python bench/nncf_int8.py [--model svrn-r50|mbfn-r50|clip-senet|demo] [--calib-count 32]
       [--batch-size 16] [--threads 2] [--seconds 3] [--repeat 3]

NNCF is not a dependency of the project (docs/deploy.md, "Why onnxruntime's quantizer, not
NNCF"): install it where you run this (``pip install nncf``). The bench's seeded random model of
``--model`` (``bench/extract_speed.py``'s ``MODELS``) is exported to fp32 ONNX
(``fastreid_plugins.deploy.onnx.export_onnx``); (a) ``quantize_onnx`` (onnxruntime's static QDQ
quantizer, what ``tools.export --precision int8`` uses) and (b) ``nncf.quantize`` (defaults) on
the OpenVINO model reshaped to a static batch of ``--batch-size`` (NNCF's IR failed at batch
sizes other than the calibration's) quantize it on ``--calib-count`` images of the config's
train set (``tools.export.calibration_paths``). Printed: the cosine of each engine's features
against PyTorch on the test split's first whole batches, and each engine's forward rate
(img/s) on one batch, best of ``--repeat`` interleaved runs of ``--seconds``; OpenVINO f32
inference precision (the runtime's int8 setting), ``--threads`` threads.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.dirname(BENCH))

import extract_speed as B  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="svrn-r50", choices=sorted(B.MODELS))
    p.add_argument("--calib-count", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    try:
        import nncf
        import openvino as ov
    except ImportError as e:
        sys.exit(f"Error: {e.name} is not installed: pip install nncf openvino (not a project "
                 "dependency; see docs/deploy.md)")
    import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

    from fastreid_plugins.deploy.gate import cosine_rows
    from fastreid_plugins.deploy.onnx import export_onnx
    from fastreid_plugins.deploy.quantize import batches, quantize_onnx
    from fastreid_plugins.tools import build_tool_cfg, trainer_class_for
    from fastreid_plugins.tools.export import _load_images, calibration_paths

    torch.set_num_threads(args.threads)
    cfg_path, extra = B.MODELS[args.model]
    cfg = build_tool_cfg(cfg_path, list(B.BENCH_OPTS) + extra)
    torch.manual_seed(0)
    model = B.seeded_model(trainer_class_for(cfg).build_model(cfg))
    h, w = cfg.INPUT.SIZE_TEST
    bs = args.batch_size
    tmp = tempfile.mkdtemp(prefix="nncf_int8_")
    src, qdq = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "qdq.onnx")
    wrapper = export_onnx(model, src, h, w)
    calib = list(batches(_load_images(cfg, calibration_paths(cfg, None, args.calib_count)), bs))
    calib = [c for c in calib if len(c) == bs]  # NNCF's static batch
    loader, _ = trainer_class_for(cfg).build_test_loader(cfg, cfg.DATASETS.TESTS[0])
    imgs = torch.cat([b["images"].float() for b in loader]).numpy()
    imgs = imgs[:len(imgs) // bs * bs]
    with torch.no_grad():
        ref = wrapper(torch.from_numpy(imgs)).numpy()

    t = time.perf_counter()
    quantize_onnx(src, qdq, calib)
    print(f"onnxruntime QDQ quantization: {time.perf_counter() - t:.0f} s")
    core = ov.Core()
    m = core.read_model(src)
    m.reshape([bs, 3, h, w])
    t = time.perf_counter()
    q = nncf.quantize(m, nncf.Dataset(calib))
    print(f"NNCF {nncf.__version__} quantization: {time.perf_counter() - t:.0f} s")
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": args.threads,
              "PERFORMANCE_HINT": "LATENCY"}
    engines = {f"NNCF int8 (static batch {bs})": core.compile_model(q, "CPU", config),
               "QDQ int8 (dynamic batch)": core.compile_model(qdq, "CPU", config)}
    for name, c in engines.items():
        r = c.create_infer_request()
        got = np.concatenate([r.infer({0: imgs[s:s + bs]})[c.outputs[0]]
                              for s in range(0, len(imgs), bs)])
        cos = cosine_rows(ref, got)
        print(f"{name}: cosine vs PyTorch on {len(imgs)} test images min {cos.min():.6f} mean "
              f"{cos.mean():.6f}")
    best = dict.fromkeys(engines, 0.0)
    for _ in range(args.repeat):
        for name, c in engines.items():
            r = c.create_infer_request()
            r.infer({0: imgs[:bs]})
            n, t = 0, time.perf_counter()
            while time.perf_counter() - t < args.seconds:
                r.infer({0: imgs[:bs]})
                n += bs
            best[name] = max(best[name], n / (time.perf_counter() - t))
    for name in engines:
        print(f"{name}: {best[name]:.1f} img/s (forward only, batch {bs}, best of "
              f"{args.repeat} interleaved runs of {args.seconds:g} s)")


if __name__ == "__main__":
    main()
