#!/usr/bin/env python
"""Extraction speed per engine (FastReID's ``DefaultPredictor``, our PyTorch path, ONNX Runtime,
OpenVINO fp32 / bf16 / int8) near the machine's peak, and search latency at a 1,000,000-image
gallery (exact and approximate).

Usage: python bench/extract_speed.py [--model demo|svrn-r50 | --config-file CFG] [--images N]
       [--batch-size 16] [--threads 2] [--num-workers 1] [--calib-count 32] [--repeat 2]
       [--gallery 1000000] [--dim 256] [--queries 100] [--skip-extract] [--skip-search]

Extraction, end to end from the JPEG files: the real VeRi sample under
``$FASTREID_DATASETS/veri`` (all its images, repeated to ``--images``), a seeded random model of
the config (``--model demo``: ``configs/demo/bagtricks_r18.yml``, ResNet-18 at 128x128, the
default, a few minutes on a loaded 2-core machine; ``--model svrn-r50``: ``configs/veri/svrn.yml``,
SVRN's ResNet-50 at 256x256, T = 3). Paths:

* ``DefaultPredictor``: FastReID's (``demo/predictor.py`` minus display): every image read with
  ``read_image`` and transformed in the main process, batches through ``DefaultPredictor``.
* ``pytorch fp32 channels_last`` / ``pytorch bf16 channels_last``: ``FeatureExtractor`` (torch
  backend) with the model in ``channels_last`` memory format, and with bfloat16 autocast where
  the CPU has bf16 instructions (its features are checked against fp32 with the bf16 gate's
  cosine, 0.9999: a path that fails is marked ``GATE FAILED``).
* ``onnxruntime fp32 | int8``, ``openvino fp32 | bf16 | int8``: engines written by
  ``python -m fastreid_plugins.tools.export`` (``--force``: the gate's verdict on the VeRi
  sample is printed, not required), run by ``FeatureExtractor(backend=...)``.

Every ``FeatureExtractor`` path reads and resizes images in ``--num-workers`` DataLoader workers,
overlapped with the forward pass; the ``decode`` column is the decoding + resizing rate of that
DataLoader alone (no model), the bound of an end-to-end path (``DefaultPredictor`` decodes in its
own loop, serially). Same batch size, torch / engine
threads (``--threads``), transforms, ``TEST.FLIP`` off; one warm-up batch each, then
``--repeat`` interleaved runs, best of each. The peak of a precision is a large matrix product
timed in the same run (a 2048 x 2048 x 2048 product; fp32 and bf16: the faster of ``torch.mm``
and OpenVINO's ``MatMul``; int8: the QDQ-quantized ``MatMul`` in OpenVINO); a path's share of it
is ``MACs x 2 x images/s / peak`` (MACs per image by ``torch.utils.flop_counter`` on the PyTorch
model). Last lines, one a path:
``<path>: <img/s> img/s, <ratio>x DefaultPredictor, <share>% of peak``.

Search: a clustered synthetic gallery (``--gallery`` x ``--dim``, float16 shards of 10,000) and
``--queries`` queries; latency = wall time of one search call / number of queries, for the whole
query batch and for a single query; exact (shard-wise faiss flat) and IVF1024,Flat /
IVF1024,PQ<dim/8> with nprobe 16, whose recall@10 against exact search is printed. The indexes
are the search's (``build_gallery_index``, i.e. ``fastreid_plugins.evaluation.knn.build_index``:
10 k-means iterations). Index build times (training on a 51,200-vector sample + adding the
gallery) are printed separately.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import fastreid_plugins  # noqa: E402,F401

MODELS = {"demo": os.path.join(REPO, "configs", "demo", "bagtricks_r18.yml"),
          "svrn-r50": os.path.join(REPO, "configs", "veri", "svrn.yml")}
#: model options of the bench: a seeded random model, no pretrained download, no flip
BENCH_OPTS = ["MODEL.HEADS.NUM_CLASSES", "4", "TEST.FLIP.ENABLED", "False", "MODEL.DEVICE", "cpu",
              "MODEL.BACKBONE.PRETRAIN", "False"]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def best_rate(fn, n, repeat=3, min_time=1.0):
    """Best ops/s of ``fn`` (``n`` ops a call) over ``repeat`` runs of at least ``min_time`` s."""
    fn()
    best = 0.0
    for _ in range(repeat):
        calls, t0 = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        best = max(best, calls * n / dt)
    return best


def measure_peaks(size=2048):
    """FLOP/s of a large matrix product per precision: the faster of ``torch.mm`` and an OpenVINO
    ``MatMul`` for fp32 and bf16, an int8 (QDQ) OpenVINO ``MatMul`` for int8."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    flops = 2 * size ** 3
    ov = openvino_matmul_peaks(size)
    peaks = {"fp32": max(best_rate(lambda: torch.mm(a, b), flops), ov["fp32"])}
    if cpu_has_bf16():
        a16, b16 = a.bfloat16(), b.bfloat16()
        peaks["bf16"] = max(best_rate(lambda: torch.mm(a16, b16), flops), ov["bf16"])
    peaks["int8"] = ov["int8"]
    return peaks


def openvino_matmul_peaks(size):
    """FLOP/s of a ``size``^3 MatMul in OpenVINO: fp32 and bf16 (the fp32 graph with the engines'
    inference precisions) and int8 (the graph quantized by onnxruntime's quantizer, QDQ)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from fastreid_plugins.deploy.quantize import quantize_onnx, set_onnx_precision
    from fastreid_plugins.deploy.runtime import EngineRunner

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((size, size)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])], [w])
    tmp = tempfile.mkdtemp(prefix="peak_")
    src, dst = os.path.join(tmp, "mm.onnx"), os.path.join(tmp, "mm8.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    x = rng.standard_normal((size, size)).astype(np.float32)
    quantize_onnx(src, dst, [x])
    out = {}
    for prec in ("fp32", "bf16", "int8"):
        path = dst if prec == "int8" else os.path.join(tmp, f"mm_{prec}.onnx")
        if prec != "int8":
            onnx.save(onnx.load(src), path)
            set_onnx_precision(path, prec)
        run = EngineRunner(path, "openvino", threads=torch.get_num_threads())
        out[prec] = best_rate(lambda run=run: run(x), 2 * size ** 3)
    return out


def cpu_has_bf16():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def macs_per_image(model, h, w):
    """Multiply-accumulates of one image through the eval forward (convolutions, matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, h, w) * 255
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops() / 2


def export_engines(args, cfg_path, weights, opts, tmp):
    """The engines of the bench, each through ``tools.export`` (gate run, ``--force``)."""
    from fastreid_plugins.tools import export

    engines = {}
    for fmt, prec in (("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"),
                      ("openvino", "bf16"), ("openvino", "int8")):
        if prec == "bf16" and not cpu_has_bf16():
            continue
        out = os.path.join(tmp, f"{prec}.{'xml' if fmt == 'openvino' else 'onnx'}")
        res = export.main(["--config-file", cfg_path, "--format", fmt, "--precision", prec,
                           "--output", out, "--calib-count", str(args.calib_count), "--force",
                           "--threads", str(args.threads), *opts, "MODEL.WEIGHTS", weights])
        engines[(fmt, prec)] = (out, res["gate"])
    return engines


def seeded_model(model):
    """Eval-mode ``model`` with non-trivial BN statistics (as tests/test_export_onnx's
    ``random_weights``): with FastReID's initial ones, random SVRN weights saturate the salience
    attention and its top-n cut ties."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def bench_extract(args):
    import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

    from fastreid.data.data_utils import read_image
    from fastreid.data.transforms import build_transforms
    from fastreid.engine.defaults import DefaultPredictor

    from fastreid_plugins.deploy import MIN_COSINE
    from fastreid_plugins.deploy.gate import cosine_rows
    from fastreid_plugins.tools import build_tool_cfg, trainer_class_for
    from fastreid_plugins.tools.extract import FeatureExtractor, iter_image_paths

    root = os.path.join(os.environ.get("FASTREID_DATASETS", "../shared/datasets"), "veri")
    pool = sorted(iter_image_paths(root))
    if not pool:
        sys.exit(f"no images under {root}")
    paths = (pool * (args.images // len(pool) + 1))[:args.images]
    cfg_path = args.config_file or MODELS[args.model]
    opts = list(BENCH_OPTS)
    cfg = build_tool_cfg(cfg_path, opts)
    torch.manual_seed(0)
    model = seeded_model(trainer_class_for(cfg).build_model(cfg))
    tmp = tempfile.mkdtemp(prefix="extract_bench_")
    weights = os.path.join(tmp, "model.pth")
    torch.save({"model": model.state_dict()}, weights)
    cfg = build_tool_cfg(cfg_path, opts + ["MODEL.WEIGHTS", weights])
    h, w = cfg.INPUT.SIZE_TEST
    bs, n = args.batch_size, len(paths)
    macs = macs_per_image(model, h, w)
    peaks = measure_peaks()
    engines = export_engines(args, cfg_path, weights, opts, tmp)
    torch.set_num_threads(args.threads)

    pred = DefaultPredictor(cfg)
    tf = build_transforms(cfg, is_train=False)

    def decode(ps):
        return [tf(read_image(p)) for p in ps]

    def fastreid_run(ps):
        out = []
        for s in range(0, len(ps), bs):
            out.append(pred(torch.stack(decode(ps[s:s + bs]))))
        return torch.cat(out).numpy()

    def extractor(**kw):
        return FeatureExtractor(cfg_path, opts=opts, batch_size=bs,
                                num_workers=args.num_workers, **kw)

    paths_runs = {"DefaultPredictor": (fastreid_run, "fp32", None)}
    ext = extractor(weights=weights)
    ext.model.to(memory_format=torch.channels_last)
    paths_runs["pytorch fp32 channels_last"] = (ext.extract, "fp32", None)
    if cpu_has_bf16():
        ext16 = extractor(weights=weights, amp=True)
        ext16.model.to(memory_format=torch.channels_last)
        paths_runs["pytorch bf16 channels_last"] = (ext16.extract, "bf16", None)
    for (fmt, prec), (path, gate) in engines.items():
        e = extractor(backend=fmt, engine=path)
        name = f"{'onnxruntime' if fmt == 'onnx' else 'openvino'} {prec}"
        paths_runs[name] = (e.extract, prec, gate)

    for fn, _, _ in paths_runs.values():  # warm-up
        fn(paths[:bs])
    # decoding + resizing alone, as the extractor's DataLoader does it (no model)
    t_dec = min(timed(lambda: list(ext.loader(paths)))[0] for _ in range(args.repeat))
    times = {k: [] for k in paths_runs}
    feats = {}
    for _ in range(args.repeat):  # interleaved, best of --repeat (the machine may be shared)
        for name, (fn, _, _) in paths_runs.items():
            dt, feats[name] = timed(lambda fn=fn: fn(paths))
            times[name].append(dt)
    ref = feats["DefaultPredictor"]
    print(f"\nextraction, {cfg.MODEL.META_ARCHITECTURE} {os.path.basename(cfg_path)} "
          f"({h}x{w}, {macs / 1e9:.2f} GMACs/image), {n} images, batch {bs}, "
          f"{args.threads} threads, {args.num_workers} decoding workers; decode column: "
          f"decoding + resizing alone {n / t_dec:.1f} img/s (the extractor's DataLoader)")
    print("peaks (large matmul): " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s"
                                                for k, v in peaks.items()))
    print(f"  {'path':<28} {'img/s':>7} {'ratio':>6} {'peak %':>7} {'decode':>7} {'min cos':>9}"
          "  gate")
    lines = []
    t_fr = min(times["DefaultPredictor"])
    for name, (_, prec, gate) in paths_runs.items():
        t = min(times[name])
        rate = n / t
        share = 100 * macs * 2 * rate / peaks.get(prec, peaks["fp32"])
        cos = float(cosine_rows(ref, feats[name]).min())
        if gate is not None:
            verdict = "passed" if gate["passed"] else "FAILED: " + "; ".join(gate["failures"])
        elif prec == "bf16":
            verdict = "passed" if cos >= MIN_COSINE["bf16"] else "GATE FAILED (cosine)"
        else:
            verdict = "-"
        dec = n / t_dec if name != "DefaultPredictor" else float("nan")  # in its own loop
        print(f"  {name:<28} {rate:7.1f} {t_fr / t:5.2f}x {share:6.1f}% {dec:7.1f} {cos:9.6f}  "
              f"{verdict}")
        lines.append(f"{name}: {rate:.1f} img/s, {t_fr / t:.2f}x DefaultPredictor, "
                     f"{share:.1f}% of peak")
    print("\n".join(lines))


def bench_search(args):
    from fastreid_plugins.tools import search
    from fastreid_plugins.tools.extract import save_feature_shards

    n, d, shard = args.gallery, args.dim, 10_000
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((max(1, n // 1000), d), dtype=np.float32)
    tmp = tempfile.mkdtemp(prefix="search_bench_")

    def shards():
        for s in range(0, n, shard):
            r = np.random.default_rng(s)
            m = min(shard, n - s)
            x = centers[r.integers(0, len(centers), m)] + 0.5 * r.standard_normal(
                (m, d), dtype=np.float32)
            yield x.astype(np.float16), [f"{i}" for i in range(s, s + m)]

    t = time.perf_counter()
    save_feature_shards(os.path.join(tmp, "g"), shards(), dtype="float16")
    print(f"\nsearch: gallery {n:,} x {d} (float16 shards of {shard:,}; written in "
          f"{time.perf_counter() - t:.0f} s), {args.queries} queries, top-10, "
          f"{torch.get_num_threads()} threads")
    g = search.FeatureStore(os.path.join(tmp, "g"))
    q = centers[rng.integers(0, len(centers), args.queries)] + 0.5 * rng.standard_normal(
        (args.queries, d), dtype=np.float32)

    t = time.perf_counter()
    _, exact = search.exact_search(g, q, 10)
    t_batch = time.perf_counter() - t
    t = time.perf_counter()
    search.exact_search(g, q[:1], 10)
    t_one = time.perf_counter() - t
    print(f"  exact (shard-wise flat)   {1000 * t_batch / len(q):8.2f} ms/query in a batch of "
          f"{len(q)}, {1000 * t_one:8.1f} ms for 1 query")
    for factory in ("IVF1024,Flat", f"IVF1024,PQ{d // 8}"):
        t = time.perf_counter()
        index = search.build_gallery_index(g, factory, train_size=51_200)
        t_build = time.perf_counter() - t
        t = time.perf_counter()
        _, approx = search.index_search(index, q, 10, g.metric, nprobe=16)
        t_batch = time.perf_counter() - t
        t = time.perf_counter()
        search.index_search(index, q[:1], 10, g.metric, nprobe=16)
        t_one = time.perf_counter() - t
        print(f"  {factory:<13} nprobe 16 {1000 * t_batch / len(q):8.2f} ms/query in a batch of "
              f"{len(q)}, {1000 * t_one:8.1f} ms for 1 query; recall@10 "
              f"{search.recall_at_k(approx, exact):.3f}; built in {t_build:.0f} s")
        del index


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo", choices=sorted(MODELS))
    p.add_argument("--config-file", default=None, help="another config (instead of --model)")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--calib-count", type=int, default=32, help="int8 calibration images")
    p.add_argument("--gallery", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--repeat", type=int, default=2, help="extraction timings: best of")
    p.add_argument("--skip-extract", action="store_true")
    p.add_argument("--skip-search", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    if not args.skip_extract:
        bench_extract(args)
    if not args.skip_search:
        bench_search(args)


if __name__ == "__main__":
    main()
