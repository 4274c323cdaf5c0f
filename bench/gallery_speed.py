#!/usr/bin/env python
"""Speed of the vector gallery (Qdrant, :mod:`fastreid_plugins.gallery`) vs faiss exact search,
measured in one run on N x D random features (cosine, as the evaluator's default metric).

Measured: insert rate (acknowledged batch upserts), single-query latency and batched-query
throughput with and without a camera + time payload filter, and the same queries on a faiss flat
index (``fastreid_plugins.evaluation.knn.build_index(..., "exact")``; the filtered faiss search is
a brute-force search of the matching subset, the best a filter-less index can do). Both are exact,
so their top-K are compared (recall@K of the gallery against faiss, expected 1.0).

Usage::

    python bench/gallery_speed.py [--n 20000] [--dim 256] [--queries 100] [--topk 10] \\
        [--location DIR_OR_URL] [--batch 512] [--threads 1]
    python bench/gallery_speed.py --n 1000000 --location http://localhost:6333   # a server

The default location is a temporary folder (Qdrant's embedded mode: one process, brute force in
numpy; it warns above 20,000 points and is meant for tests and small galleries: point
``--location`` at a server or cluster for large N).
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--batch", type=int, default=512, help="points per upsert")
    p.add_argument("--location", default=None, help="Qdrant folder or URL (default: a temp dir)")
    p.add_argument("--threads", type=int, default=1, help="faiss threads")
    args = p.parse_args(argv)

    import faiss

    from fastreid_plugins.evaluation.knn import build_index, prepare_vectors
    from fastreid_plugins.gallery import VectorGallery

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    g = rng.normal(size=(args.n, args.dim)).astype(np.float32)
    q = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    cams = [f"c{i % 20:03d}" for i in range(args.n)]
    payloads = [{"path": f"/g/{i:08d}.jpg", "camera": c, "time": i} for i, c in enumerate(cams)]
    flt = {"cameras": ["c001", "c002"], "time_from": 0, "time_to": args.n // 2}
    mask = np.isin(np.array(cams), flt["cameras"]) & (np.arange(args.n) <= args.n // 2)

    tmp = None
    location = args.location
    if location is None:
        tmp = tempfile.mkdtemp(prefix="gallery_speed_")
        location = os.path.join(tmp, "db")
    out = {"n": args.n, "dim": args.dim, "queries": args.queries, "topk": args.topk,
           "location": "embedded (temp folder)" if tmp else location}
    try:
        vg = VectorGallery(location, args.dim, "cosine", "0" * 64, collection="gallery_speed",
                           create=True)
        t0 = time.perf_counter()
        for s in range(0, args.n, 20 * args.batch):
            vg.add(g[s:s + 20 * args.batch], payloads[s:s + 20 * args.batch], batch=args.batch)
        out["qdrant_insert_per_s"] = round(args.n / (time.perf_counter() - t0))

        def single(fn):
            ts = []
            for v in q[:min(20, len(q))]:
                t = time.perf_counter()
                fn(v[None])
                ts.append(time.perf_counter() - t)
            return round(1e3 * statistics.median(ts), 2)

        def batched(fn):
            t = time.perf_counter()
            fn(q)
            return round(args.queries / (time.perf_counter() - t), 1)

        qd = lambda x: vg.search(x, args.topk)  # noqa: E731
        qf = lambda x: vg.search(x, args.topk, **flt)  # noqa: E731
        out["qdrant_single_ms"], out["qdrant_single_filtered_ms"] = single(qd), single(qf)
        out["qdrant_batch_qps"], out["qdrant_batch_filtered_qps"] = batched(qd), batched(qf)
        _, hits = vg.search(q, args.topk)
        qdrant_top = [[int(h["path"][3:11]) for h in row] for row in hits]
        vg.close()

        t0 = time.perf_counter()
        index = build_index(g, "exact", "cosine")
        out["faiss_build_s"] = round(time.perf_counter() - t0, 3)
        sub_ids = np.flatnonzero(mask)
        sub = build_index(g[sub_ids], "exact", "cosine")
        fd = lambda x: index.search(prepare_vectors(x, "cosine"), args.topk)  # noqa: E731
        ff = lambda x: sub.search(prepare_vectors(x, "cosine"), args.topk)  # noqa: E731
        out["faiss_single_ms"], out["faiss_single_filtered_ms"] = single(fd), single(ff)
        out["faiss_batch_qps"], out["faiss_batch_filtered_qps"] = batched(fd), batched(ff)
        _, fi = fd(q)
        out["recall_at_k_vs_faiss"] = float(np.mean([len(set(a) & set(b)) / args.topk
                                                     for a, b in zip(qdrant_top, fi.tolist())]))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
