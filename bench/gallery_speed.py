#!/usr/bin/env python
"""Speed and memory of the vector gallery (Milvus, :mod:`fastreid_plugins.gallery`) on Milvus Lite
and on a Milvus standalone server, against the faiss shard search of ``tools.search``, in one run
on N x D random features (cosine, the evaluator's default metric).

Measured per backend: insert rate (acknowledged batch upserts of features + path / camera / time),
single-query latency (median of 20) and batched-query throughput (all ``--queries`` in one call),
without and with a filter executed by the database (``camera in [c001, c002] and time <= N/2``,
5% of the gallery), and the resident memory (RSS, and its peak) of the database process (Milvus
Lite's engine, a child of this process; the server's process). The faiss reference is
``tools.search``'s exact shard-wise search (:func:`fastreid_plugins.tools.search.exact_search`: a
faiss flat index per shard of an extraction folder, ``--shard`` rows each); its filtered figure
searches a flat index of the matching subset built beforehand (the best a filter-less index can
do; build time reported). All are exact (flat index), so each backend's top-K is compared with
faiss's (recall@K, expected 1.0).

Usage::

    python bench/gallery_speed.py [--n 20000] [--dim 256] [--queries 100] [--topk 10] \\
        [--backends lite,server] [--server http://host:19530 | (default) a local server] \\
        [--batch 1000] [--shard 100000] [--threads 1]

Without ``--server``, ``server`` starts a Milvus 2.3.5 standalone server (the ``milvus`` package:
``pip install --no-deps milvus==2.3.5``) in a temporary folder for the run and stops it after.
"""

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402


def proc_memory(pid):
    """``{"rss_mib", "peak_rss_mib"}`` of a process (Linux ``/proc``), or {} when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return {}
    out = {}
    for key, name in (("VmRSS", "rss_mib"), ("VmHWM", "peak_rss_mib")):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        if m:
            out[name] = round(int(m.group(1)) / 1024, 1)
    return out


def children(pid):
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def timings(search, q, label, out):
    """Median single-query latency (ms) and batched throughput (q/s) of ``search``."""
    ts = []
    for v in q[:min(20, len(q))]:
        t = time.perf_counter()
        search(v[None])
        ts.append(time.perf_counter() - t)
    out[f"single{label}_ms"] = round(1e3 * statistics.median(ts), 2)
    t = time.perf_counter()
    search(q)
    out[f"batch{label}_qps"] = round(len(q) / (time.perf_counter() - t), 1)
    print(f"  single{label}_ms {out[f'single{label}_ms']}, batch{label}_qps "
          f"{out[f'batch{label}_qps']}", file=sys.stderr, flush=True)


def bench_faiss(g, q, args, flt_mask, tmp):
    from fastreid_plugins.evaluation.knn import build_index, prepare_vectors
    from fastreid_plugins.tools.extract import save_feature_shards
    from fastreid_plugins.tools.search import FeatureStore, exact_search

    out = {}
    folder = os.path.join(tmp, "features")
    parts = [(g[s:s + args.shard], [f"/g/{i:08d}.jpg" for i in range(s, min(len(g),
                                                                             s + args.shard))])
             for s in range(0, len(g), args.shard)]
    save_feature_shards(folder, parts, metric="cosine", weights_sha256="0" * 64)
    store = FeatureStore(folder)
    timings(lambda x: exact_search(store, x, args.topk), q, "", out)
    t0 = time.perf_counter()
    sub_ids = np.flatnonzero(flt_mask)
    sub = build_index(g[sub_ids], "exact", "cosine")
    out["filtered_subset_build_s"] = round(time.perf_counter() - t0, 3)
    timings(lambda x: sub.search(prepare_vectors(x, "cosine"), args.topk), q, "_filtered", out)
    _, top = exact_search(store, q, args.topk)
    out["bench_process_peak_rss_mib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out, top


def bench_milvus(location, g, q, args, flt, db_pid, faiss_top):
    from fastreid_plugins.gallery import VectorGallery

    out = {}
    vg = VectorGallery(location, args.dim, "cosine", "0" * 64, collection="gallery_speed",
                       create=True)
    if vg.client.has_collection("gallery_speed") and len(vg):
        raise SystemExit(f"collection gallery_speed in {location} is not empty: drop it first")
    try:
        if db_pid is None:  # Milvus Lite: the engine process is a child of this one
            db_pid = max(children(os.getpid()), default=None)
        t0 = time.perf_counter()
        chunk = 20 * args.batch
        for s in range(0, args.n, chunk):
            e = min(args.n, s + chunk)
            payloads = [{"path": f"/g/{i:08d}.jpg", "camera": f"c{i % 20:03d}", "time": i}
                        for i in range(s, e)]
            vg.add(g[s:e], payloads, batch=args.batch)
        out["insert_per_s"] = round(args.n / (time.perf_counter() - t0))
        print(f"{location}: {out['insert_per_s']} inserts/s", file=sys.stderr, flush=True)
        out["count"] = len(vg)
        t0 = time.perf_counter()
        vg.search(q[:1], args.topk)  # the first search after the ingest (segments loaded)
        out["first_search_s"] = round(time.perf_counter() - t0, 3)
        timings(lambda x: vg.search(x, args.topk), q, "", out)
        timings(lambda x: vg.search(x, args.topk, **flt), q, "_filtered", out)
        # the collection's Strong consistency waits for the server's next time tick: the same
        # searches with Bounded consistency (writes older than a few seconds seen)
        timings(lambda x: vg.search(x, args.topk, consistency="Bounded"), q, "_bounded", out)
        timings(lambda x: vg.search(x, args.topk, consistency="Bounded", **flt), q,
                "_filtered_bounded", out)
        _, hits = vg.search(q, args.topk)
        top = [[int(h["path"][3:11]) for h in row] for row in hits]
        out["recall_at_k_vs_faiss"] = float(np.mean([
            len(set(a) & set(b)) / args.topk for a, b in zip(top, faiss_top.tolist())]))
        if db_pid:
            out["db_process"] = dict(proc_memory(db_pid), pid=db_pid)
    finally:
        vg.client.drop_collection("gallery_speed")
        vg.close()
    return out


def start_server(tmp):
    from milvus import MilvusServer

    server = MilvusServer(wait_for_started=False)
    server.set_base_dir(os.path.join(tmp, "milvus_server"))
    server.start()
    server.wait_started(timeout=180000)
    return server


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--batch", type=int, default=1000, help="rows per upsert")
    p.add_argument("--shard", type=int, default=100000, help="rows per faiss shard")
    p.add_argument("--backends", default="lite,server")
    p.add_argument("--server", default=None, help="Milvus URI (default: start a local server)")
    p.add_argument("--threads", type=int, default=1, help="faiss threads")
    args = p.parse_args(argv)

    import faiss

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    g = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    q = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    flt = {"cameras": ["c001", "c002"], "time_from": None, "time_to": args.n // 2}
    mask = np.isin(np.arange(args.n) % 20, [1, 2]) & (np.arange(args.n) <= args.n // 2)
    out = {"n": args.n, "dim": args.dim, "queries": args.queries, "topk": args.topk,
           "filtered_fraction": round(float(mask.mean()), 4), "load_1min_at_start":
           os.getloadavg()[0]}
    tmp = tempfile.mkdtemp(prefix="gallery_speed_")
    server = None
    try:
        out["faiss_shards"], faiss_top = bench_faiss(g, q, args, mask, tmp)
        for backend in [b for b in args.backends.split(",") if b]:
            if backend == "lite":
                out["lite"] = bench_milvus(os.path.join(tmp, "gallery.db"), g, q, args, flt,
                                           None, faiss_top)
            elif backend == "server":
                uri, pid = args.server, None
                if uri is None:
                    server = start_server(tmp)
                    uri, pid = f"http://127.0.0.1:{server.listen_port}", server.server_proc.pid
                out["server"] = dict(bench_milvus(uri, g, q, args, flt, pid, faiss_top),
                                     uri=uri if args.server else "local Milvus 2.3.5 standalone")
            else:
                raise SystemExit(f"unknown backend {backend!r} (lite, server)")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    out["load_1min_at_end"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
