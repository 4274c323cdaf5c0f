#!/usr/bin/env python
"""Extraction speed of ``fastreid_plugins.tools.extract`` vs FastReID's ``DefaultPredictor``, and
search latency at a 1,000,000-image gallery (exact and approximate).

Usage: python bench/extract_speed.py [--config-file configs/demo/mfgnet.yml] [--images N]
       [--batch-size 32] [--threads 2] [--num-workers 2] [--gallery 1000000] [--dim 256]
       [--queries 100] [--repeat 3] [--skip-extract] [--skip-search]

Extraction: the real VeRi sample under ``$FASTREID_DATASETS/veri`` (all its images, repeated to
``--images``), a seeded random model of the config (speed does not depend on training). FastReID's
path is its ``DefaultPredictor`` (FastReID's ``demo/predictor.py`` minus the display code): every
image read with FastReID's ``read_image`` and the config's test transforms in the main process,
batches of ``--batch-size`` through ``DefaultPredictor.__call__``. Ours: ``FeatureExtractor`` with
``--num-workers`` DataLoader workers reading images while the model runs. Same batch size, same
torch threads, same transforms, ``TEST.FLIP`` off for both (``DefaultPredictor`` does not flip);
one warm-up batch each, then ``--repeat`` interleaved runs, best of each. The ratio is ours /
theirs in images per second, measured in this run.

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


def bench_extract(args):
    from fastreid.data.data_utils import read_image
    from fastreid.data.transforms import build_transforms
    from fastreid.engine.defaults import DefaultPredictor
    from fastreid.modeling import build_model

    from fastreid_plugins.tools import build_tool_cfg
    from fastreid_plugins.tools.extract import FeatureExtractor, iter_image_paths

    root = os.path.join(os.environ.get("FASTREID_DATASETS", "../shared/datasets"), "veri")
    pool = sorted(iter_image_paths(root))
    if not pool:
        sys.exit(f"no images under {root}")
    paths = (pool * (args.images // len(pool) + 1))[:args.images]
    opts = ["MODEL.HEADS.NUM_CLASSES", "4", "TEST.FLIP.ENABLED", "False", "MODEL.DEVICE", "cpu"]
    cfg = build_tool_cfg(args.config_file, opts)
    torch.manual_seed(0)
    weights = os.path.join(tempfile.mkdtemp(), "model.pth")
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    cfg = build_tool_cfg(args.config_file, opts + ["MODEL.WEIGHTS", weights])
    bs = args.batch_size

    # FastReID: DefaultPredictor, images read and transformed in the main process
    pred = DefaultPredictor(cfg)
    tf = build_transforms(cfg, is_train=False)

    def fastreid_run(ps):
        out = []
        for s in range(0, len(ps), bs):
            out.append(pred(torch.stack([tf(read_image(p)) for p in ps[s:s + bs]])))
        return torch.cat(out).numpy()

    ext = FeatureExtractor(args.config_file, weights=weights, opts=opts, batch_size=bs,
                           num_workers=args.num_workers)
    fastreid_run(paths[:bs])  # warm-up
    ext.extract(paths[:bs])

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return time.perf_counter() - t, out

    def ours_with(workers):
        ext.num_workers = workers
        return ext.extract(paths)

    t_fr, t_ours, t_ours0 = [], [], []
    for _ in range(args.repeat):  # interleaved, best of --repeat (the machine may be shared)
        dt, ref = timed(lambda: fastreid_run(paths))
        t_fr.append(dt)
        dt, ours = timed(lambda: ours_with(args.num_workers))
        t_ours.append(dt)
        t_ours0.append(timed(lambda: ours_with(0))[0])
    t_fr, t_ours, t_ours0 = min(t_fr), min(t_ours), min(t_ours0)
    n = len(paths)
    print(f"extraction, {cfg.MODEL.META_ARCHITECTURE} {os.path.basename(args.config_file)} "
          f"{tuple(cfg.INPUT.SIZE_TEST)}, {n} images, batch {bs}, {torch.get_num_threads()} "
          "torch threads:")
    print(f"  FastReID DefaultPredictor      {n / t_fr:7.1f} img/s")
    print(f"  FeatureExtractor, 0 workers    {n / t_ours0:7.1f} img/s  ({t_fr / t_ours0:.2f}x)")
    print(f"  FeatureExtractor, {args.num_workers} workers    {n / t_ours:7.1f} img/s  "
          f"({t_fr / t_ours:.2f}x)")
    print(f"  max |features ours - DefaultPredictor| = {np.abs(ours - ref).max():.2e}")


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
    p.add_argument("--config-file", default=os.path.join(REPO, "configs", "demo", "mfgnet.yml"))
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--gallery", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3, help="extraction timings: best of")
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
