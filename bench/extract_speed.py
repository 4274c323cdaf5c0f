#!/usr/bin/env python
"""Extraction speed per engine (FastReID's ``DefaultPredictor``, our PyTorch path, ONNX Runtime,
OpenVINO fp32 / bf16 / int8) near the machine's peak, and search latency at a 1,000,000-image
gallery (exact and approximate).

Usage: python bench/extract_speed.py [--model demo|svrn-r50|mbfn-r50|clip-senet[,...] |
       --config-file CFG] [--paths P1,P2,...] [--images 256] [--batch-size 16] [--threads 2]
       [--num-workers 1] [--calib-count 32] [--repeat 2] [--peak-size 2048]
       [--gallery 1000000] [--dim 256] [--queries 100] [--skip-extract] [--skip-search]

Extraction, end to end from the JPEG files: the real VeRi sample under
``$FASTREID_DATASETS/veri`` (all its images, repeated to ``--images``, default 256: an extraction
of a folder, where the DataLoader worker's start and the pipeline's fill, 0.1-0.3 s a call, are a
few percent of the run; at 32 images they cost SVRN's int8 engines a quarter of their rate, and
at 64 the demo's PyTorch path ran at 0.74x ``DefaultPredictor`` end to end while its forward
alone ran at 1.24x ``DefaultPredictor``'s), a seeded random model of
each config in ``--model`` (comma-separated, one after the other in one run): ``demo``:
``configs/demo/bagtricks_r18.yml``, ResNet-18 at 128x128, the default; the paper configs'
backbones: ``svrn-r50``: ``configs/veri/svrn.yml``, SVRN's ResNet-50 at 256x256, T = 3;
``mbfn-r50``: ``configs/veri/mbfn.yml``, MBFN's ResNet-50 at 384x128; ``clip-senet``:
``configs/veri/clip_senet.yml``, CLIP-SENet's ResNeXt-101-IBN-a + TinyCLIP-ViT-61M-32 SEM at
320x320 (TinyCLIP's architecture built offline with random weights,
``MODEL.CLIPSENET.SEM.PRETRAIN False``). No pretrained weights are downloaded. Paths (``--paths``
picks some; ``DefaultPredictor``, the reference of the ratio and the cosine, always runs):

* ``DefaultPredictor``: FastReID's (``demo/predictor.py`` minus display): every image read with
  ``read_image`` and transformed in the main process, batches through ``DefaultPredictor``.
* ``pytorch fp32 channels_last`` / ``pytorch bf16 channels_last``: ``FeatureExtractor`` (torch
  backend) with ``channels_last=True`` (``extract --channels-last``), and with bfloat16
  autocast where the CPU has bf16 instructions (its features are checked against fp32 with the
  bf16 gate's cosine, 0.9999: a path that fails is marked ``GATE FAILED``).
* ``onnxruntime fp32 | int8``, ``openvino fp32 | bf16 | int8``: engines written by
  ``python -m fastreid_plugins.tools.export`` (``--force``: the gate's verdict on the VeRi
  sample is printed, not required; CLIP-SENet's int8 with ``--int8-fp32-modules sem``,
  :data:`INT8_EXPORT_ARGS`), run by ``FeatureExtractor(backend=...)``.

Every ``FeatureExtractor`` path reads and resizes images in ``--num-workers`` DataLoader workers,
overlapped with the forward pass; the ``decode`` column is the decoding + resizing rate of that
DataLoader alone (no model), the bound of an end-to-end path (``DefaultPredictor`` decodes in its
own loop, serially). ``fwd/s`` and ``fwd %`` are the forward pass alone (``DefaultPredictor``
or ``FeatureExtractor.forward`` on :data:`FORWARD_BATCHES` batches decoded beforehand) and its
share of the peak: on 2 cores the decoding worker takes its CPU time from the forward pass, so
the end-to-end rate is below it; the forward column is what the engine does by itself. Same
batch size, torch / engine threads (``--threads``), transforms, ``TEST.FLIP`` off; one warm-up
batch each, then ``--repeat`` interleaved runs (each the end-to-end run, then the forward
alone), best of each.

Share of peak: a path's ``MACs x 2 x images/s`` (MACs per image by ``torch.utils.flop_counter``
on the PyTorch model: convolutions and matrix products, nominal, i.e. direct convolution) over
the peak of its precision, a ``--peak-size``^3 matrix product (:class:`PeakMeter`: fp32:
``torch.mm``, OpenVINO and onnxruntime ``MatMul``; bf16: ``torch.mm`` in bfloat16, OpenVINO
bf16; int8: the QDQ-quantized ``MatMul`` in OpenVINO and onnxruntime; the fastest counts). The
product is timed right before every timed run of every path (so the peak and the paths see the
same load) and the peak is the best of those samples; the lowest sample is printed beside it,
so a spread shows a machine whose load changed. The OpenVINO engines' convolution kernels as
compiled for this CPU are printed (a Winograd kernel would do fewer multiplies than the nominal
MACs and could exceed 100%). Last lines, one a model and path:
``<model> <path>: <img/s> img/s, <ratio>x DefaultPredictor, <share>% of peak``.

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

#: ``--model`` name -> (config, options of that model on top of :data:`BENCH_OPTS`): the
#: paper backbones' 3-model run took 29 minutes on an idle 2-core machine, half of it the export
#: gates
MODELS = {"demo": (os.path.join(REPO, "configs", "demo", "bagtricks_r18.yml"), []),
          "svrn-r50": (os.path.join(REPO, "configs", "veri", "svrn.yml"), []),
          "mbfn-r50": (os.path.join(REPO, "configs", "veri", "mbfn.yml"), []),
          # TinyCLIP-ViT-61M-32's architecture built offline with random weights (no download)
          "clip-senet": (os.path.join(REPO, "configs", "veri", "clip_senet.yml"),
                         ["MODEL.CLIPSENET.SEM.PRETRAIN", "False"])}
#: ``tools.export`` arguments of a model's int8 engines: CLIP-SENet's TinyCLIP SEM stays in fp32
#: (quantized, the random model's int8 features had cosine 0.92 against PyTorch; docs/deploy.md)
INT8_EXPORT_ARGS = {"clip-senet": ["--int8-fp32-modules", "sem"]}
#: model options of the bench: a seeded random model, no pretrained download, no flip
BENCH_OPTS = ["MODEL.HEADS.NUM_CLASSES", "4", "TEST.FLIP.ENABLED", "False", "MODEL.DEVICE", "cpu",
              "MODEL.BACKBONE.PRETRAIN", "False"]
#: decoded batches the ``fwd/s`` column times (the forward pass alone, no decoding)
FORWARD_BATCHES = 4
#: the extraction paths, in the order they are timed
PATHS = ("DefaultPredictor", "pytorch fp32 channels_last", "pytorch bf16 channels_last",
         "onnxruntime fp32", "onnxruntime int8", "openvino fp32", "openvino bf16", "openvino int8")


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def rate(fn, n, min_time):
    """ops/s of ``fn`` (``n`` ops a call) over calls for at least ``min_time`` s (after one)."""
    fn()
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return calls * n / dt


class PeakMeter:
    """The machine's peak per precision: a ``size``^3 matrix product, timed in samples taken
    between the paths' runs (:meth:`sample` before each path's timed run, so the peak and the
    paths see the same load); the peak is the best sample, the spread the lowest.

    Implementations per precision (the best counts): fp32: ``torch.mm`` (MKL / oneDNN),
    OpenVINO ``MatMul`` (f32), onnxruntime ``MatMul`` (MLAS); bf16: ``torch.mm`` on bfloat16
    tensors, OpenVINO ``MatMul`` with bf16 inference precision; int8: the ``MatMul`` quantized by
    onnxruntime's quantizer (QDQ, as the int8 engines) in OpenVINO (int8 kernels) and in
    onnxruntime (``MatMulIntegerToFloat`` / VNNI).
    """

    def __init__(self, size=2048, threads=2, min_time=0.3):
        self.size, self.flops, self.min_time = size, 2 * size ** 3, min_time
        a, b = torch.randn(size, size), torch.randn(size, size)
        self.runs = {("fp32", "torch.mm"): lambda: torch.mm(a, b)}
        if cpu_has_bf16():
            a16, b16 = a.bfloat16(), b.bfloat16()
            self.runs[("bf16", "torch.mm")] = lambda: torch.mm(a16, b16)
        self.runs.update(engine_matmuls(size, threads))
        self.samples = {}  # precision -> [(best GFLOP/s of the sample, its implementation)]

    def sample(self, precision):
        """Time every implementation of ``precision`` once; record the best."""
        best = max((rate(fn, self.flops, self.min_time), impl)
                   for (prec, impl), fn in self.runs.items() if prec == precision)
        self.samples.setdefault(precision, []).append(best)

    def peak(self, precision):
        """(best FLOP/s, its implementation, lowest sample's FLOP/s, number of samples)."""
        got = self.samples[precision]
        return (*max(got), min(got)[0], len(got))

    def describe(self):
        return ", ".join(f"{p} {best / 1e9:.0f} GFLOP/s ({impl}; lowest of {k} samples "
                         f"{low / 1e9:.0f})" for p in self.samples
                         for best, impl, low, k in [self.peak(p)])


def engine_matmuls(size, threads):
    """Callables running a ``size``^3 MatMul: ``{(precision, implementation): fn}`` for OpenVINO
    fp32 / bf16 (the fp32 graph with the engines' inference precisions), onnxruntime fp32, and
    the graph quantized by onnxruntime's quantizer (QDQ) in OpenVINO and onnxruntime (int8)."""
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
    runs = {}
    for prec, runtime in (("fp32", "openvino"), ("fp32", "onnx"), ("bf16", "openvino"),
                          ("int8", "openvino"), ("int8", "onnx")):
        if prec == "bf16" and not cpu_has_bf16():
            continue
        path = dst if prec == "int8" else os.path.join(tmp, f"mm_{prec}.onnx")
        if prec != "int8" and not os.path.isfile(path):
            onnx.save(onnx.load(src), path)
            set_onnx_precision(path, prec)
        run = EngineRunner(path, runtime, threads=threads)
        runs[(prec, "onnxruntime" if runtime == "onnx" else "openvino")] = \
            lambda run=run: run(x)
    return runs


def openvino_conv_kernels(engine, threads):
    """{kernel: count} of the convolutions of an OpenVINO engine as compiled for this CPU
    (``primitiveType`` of the runtime model), e.g. ``brgconv_avx512_amx`` or a Winograd kernel
    (whose multiplies are fewer than the nominal MACs the share counts)."""
    from collections import Counter

    from fastreid_plugins.deploy.runtime import EngineRunner

    runtime = EngineRunner(engine, "openvino", threads=threads).compiled.get_runtime_model()
    kinds = Counter()
    for op in runtime.get_ordered_ops():
        info = op.get_rt_info()
        if str(info["layerType"].astype(str)) == "Convolution":
            kinds[str(info["primitiveType"].astype(str))] += 1
    return dict(kinds)


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


ENGINE_PATHS = {"onnxruntime fp32": ("onnx", "fp32"), "onnxruntime int8": ("onnx", "int8"),
                "openvino fp32": ("openvino", "fp32"), "openvino bf16": ("openvino", "bf16"),
                "openvino int8": ("openvino", "int8")}


def export_engines(args, cfg_path, weights, opts, tmp, wanted, int8_args=()):
    """The engines of the ``wanted`` paths, each through ``tools.export`` (gate run,
    ``--force``): ``{path name: (engine file, gate report)}``."""
    from fastreid_plugins.tools import export

    engines = {}
    for name, (fmt, prec) in ENGINE_PATHS.items():
        if name not in wanted or (prec == "bf16" and not cpu_has_bf16()):
            continue
        out = os.path.join(tmp, f"{fmt}_{prec}.{'xml' if fmt == 'openvino' else 'onnx'}")
        res = export.main(["--config-file", cfg_path, "--format", fmt, "--precision", prec,
                           "--output", out, "--calib-count", str(args.calib_count), "--force",
                           "--threads", str(args.threads), *(int8_args if prec == "int8" else ()),
                           *opts, "MODEL.WEIGHTS", weights])
        engines[name] = (out, res["gate"])
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
    from fastreid_plugins.tools.extract import iter_image_paths

    root = os.path.join(os.environ.get("FASTREID_DATASETS", "../shared/datasets"), "veri")
    pool = sorted(iter_image_paths(root))
    if not pool:
        sys.exit(f"no images under {root}")
    if args.config_file:
        models = [(os.path.splitext(os.path.basename(args.config_file))[0], args.config_file, [])]
    else:
        models = [(m, *MODELS[m]) for m in args.model]
    meter = PeakMeter(args.peak_size, args.threads)
    results = []
    paths = (pool * (args.images // len(pool) + 1))[:args.images]
    for key, cfg_path, extra in models:
        t0 = time.perf_counter()
        results.append(bench_model(args, key, cfg_path, list(BENCH_OPTS) + extra, paths, meter))
        results[-1]["seconds"] = time.perf_counter() - t0
    print(f"\npeaks ({args.peak_size}^3 matrix product, sampled before every timed path run, "
          f"the best sample; lowest sample in brackets): {meter.describe()}")
    lines = []
    for r in results:
        print(r["header"])
        lines += print_rows(r, meter)
    print("\n".join(lines))


def bench_model(args, key, cfg_path, opts, paths, meter):
    """Time the paths on one model; returns its header, rows and OpenVINO kernels (printed by
    :func:`bench_extract` once every model and peak sample is in)."""
    import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

    from fastreid.data.data_utils import read_image
    from fastreid.data.transforms import build_transforms
    from fastreid.engine.defaults import DefaultPredictor

    from fastreid_plugins.tools import build_tool_cfg, trainer_class_for
    from fastreid_plugins.tools.extract import FeatureExtractor

    wanted = set(args.paths) | {"DefaultPredictor"}
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
    del model
    engines = export_engines(args, cfg_path, weights, opts, tmp, wanted,
                             INT8_EXPORT_ARGS.get(key, ()))
    torch.set_num_threads(args.threads)

    pred = DefaultPredictor(cfg)
    tf = build_transforms(cfg, is_train=False)

    def fastreid_run(ps):
        out = []
        for s in range(0, len(ps), bs):
            out.append(pred(torch.stack([tf(read_image(p)) for p in ps[s:s + bs]])))
        return torch.cat(out).numpy()

    def extractor(**kw):
        return FeatureExtractor(cfg_path, opts=opts, batch_size=bs,
                                num_workers=args.num_workers, **kw)

    # path -> (end to end from the files, the forward pass alone on a decoded batch, precision,
    # gate report)
    runs = {"DefaultPredictor": (fastreid_run, pred, "fp32", None)}
    ext = extractor(weights=weights, channels_last=True)  # also the decode column's DataLoader
    for name, amp in (("pytorch fp32 channels_last", False), ("pytorch bf16 channels_last", True)):
        if name in wanted and (not amp or cpu_has_bf16()):
            e = ext if not amp else extractor(weights=weights, amp=True, channels_last=True)
            runs[name] = (e.extract, e.forward, "bf16" if amp else "fp32", None)
    for name, (path, gate) in engines.items():
        e = extractor(backend=ENGINE_PATHS[name][0], engine=path)
        runs[name] = (e.extract, e.forward, ENGINE_PATHS[name][1], gate)
    kernels = {name: openvino_conv_kernels(path, args.threads)
               for name, (path, _) in engines.items() if name.startswith("openvino")}

    for fn, _, _, _ in runs.values():  # warm-up
        fn(paths[:bs])
    # decoding + resizing alone, as the extractor's DataLoader does it (no model)
    t_dec = min(timed(lambda: list(ext.loader(paths)))[0] for _ in range(args.repeat))
    # the forward column: FORWARD_BATCHES decoded batches, no decoding, no DataLoader
    batches = [b for _, b, _ in ext.loader(paths[:FORWARD_BATCHES * bs])]
    n_fwd = sum(len(b) for b in batches)
    times, t_fwd = {k: [] for k in runs}, {k: [] for k in runs}
    feats = {}
    for _ in range(args.repeat):  # interleaved, best of --repeat (the machine may be shared)
        for name, (fn, fwd, prec, _) in runs.items():
            meter.sample(prec)  # the peak under the same load as the path's run
            dt, feats[name] = timed(lambda fn=fn: fn(paths))
            times[name].append(dt)
            t_fwd[name].append(timed(lambda fwd=fwd: [fwd(b) for b in batches])[0])
    header = (f"\nextraction, {key}: {cfg.MODEL.META_ARCHITECTURE} {os.path.basename(cfg_path)} "
              f"({h}x{w}, {macs / 1e9:.2f} GMACs/image), {n} images, batch {bs}, "
              f"{args.threads} threads, {args.num_workers} decoding workers; decode column: "
              f"decoding + resizing alone {n / t_dec:.1f} img/s (the extractor's DataLoader)")
    if kernels:
        header += "\nOpenVINO convolution kernels: " + "; ".join(
            f"{name.split()[1]} " + ", ".join(f"{k} x{v}" for k, v in sorted(kk.items()))
            for name, kk in kernels.items())
    return {"key": key, "header": header, "macs": macs, "n": n, "t_dec": t_dec,
            "rows": [(name, prec, gate, min(times[name]), feats[name], n_fwd / min(t_fwd[name]))
                     for name, (_, _, prec, gate) in runs.items()]}


def print_rows(r, meter):
    """Print one model's table; returns its last lines (one a path)."""
    from fastreid_plugins.deploy import MIN_COSINE
    from fastreid_plugins.deploy.gate import cosine_rows

    print(f"  {'path':<28} {'img/s':>7} {'ratio':>6} {'peak %':>7} {'decode':>7} {'fwd/s':>7} "
          f"{'fwd %':>6} {'min cos':>9}  gate")
    n, lines = r["n"], []
    ref, t_fr = r["rows"][0][4], r["rows"][0][3]  # DefaultPredictor
    for name, prec, gate, t, feats, fwd_s in r["rows"]:
        img_s = n / t
        share = 100 * r["macs"] * 2 * img_s / meter.peak(prec)[0]
        fwd_share = 100 * r["macs"] * 2 * fwd_s / meter.peak(prec)[0]
        cos = float(cosine_rows(ref, feats).min())
        if gate is not None:
            verdict = "passed" if gate["passed"] else "FAILED: " + "; ".join(gate["failures"])
        elif prec == "bf16":
            verdict = "passed" if cos >= MIN_COSINE["bf16"] else "GATE FAILED (cosine)"
        else:
            verdict = "-"
        dec = n / r["t_dec"] if name != "DefaultPredictor" else float("nan")  # in its own loop
        print(f"  {name:<28} {img_s:7.1f} {t_fr / t:5.2f}x {share:6.1f}% {dec:7.1f} {fwd_s:7.1f} "
              f"{fwd_share:5.1f}% {cos:9.6f}  {verdict}")
        lines.append(f"{r['key']} {name}: {img_s:.1f} img/s, {t_fr / t:.2f}x DefaultPredictor, "
                     f"{share:.1f}% of peak")
    print(f"  ({r['key']}: {r['seconds']:.0f} s for export, gates and timing)")
    return lines


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


def model_list(value):
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in names if v not in MODELS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"unknown model(s) {bad or value!r}: choose from "
                                         f"{', '.join(MODELS)}")
    return names


def path_list(value):
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in names if v not in PATHS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown path(s) {bad}: choose from {', '.join(PATHS)}")
    return names


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo", type=model_list,
                   help=f"comma-separated, of {', '.join(MODELS)} (default %(default)s)")
    p.add_argument("--config-file", default=None, help="another config (instead of --model)")
    p.add_argument("--paths", default=",".join(PATHS), type=path_list,
                   help="comma-separated paths to time (DefaultPredictor, the reference, always "
                        "runs); default all: " + ", ".join(PATHS))
    p.add_argument("--images", type=int, default=256,
                   help="images per model, end to end (default %(default)s: the steady rate)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--calib-count", type=int, default=32, help="int8 calibration images")
    p.add_argument("--gallery", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--repeat", type=int, default=2, help="extraction timings: best of")
    p.add_argument("--peak-size", type=int, default=2048, help="peak: N of the N^3 matmul")
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
