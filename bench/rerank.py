#!/usr/bin/env python
"""Time and peak memory of k-reciprocal re-ranking: sparse (ours) vs FastReID's CPU path.

Default run: VeRi-776 test size (1,678 query + 11,579 gallery = 13,257 features of dimension
2048), both methods, each in its own subprocess so that their memory peaks are separate; prints
time, peak RSS (whole process) and the peak RSS increase over the process's state right before
the re-ranking call, the ratios sparse / FastReID, and the agreement of the two results.

``--large``: VERI-Wild Large test size (10,000 query + 128,517 gallery = 138,517 features), sparse
method only (FastReID's path would need three dense 138,517^2 float32 matrices, 77 GB each).
The feature dimension is ``--dim`` (default 2048 as at VeRi-776 size; the exact faiss k-NN search,
O(N^2 D), takes about 10 of the 12 minutes of the 2-core CPU run at this size).

Features are random but clustered like re-id embeddings: ``--ids`` identity centres, each image
= centre + Gaussian noise, L2-normalised (FastReID's default ``TEST.METRIC: cosine``); the
original distance is the cosine distance, as in FastReID's evaluator.

Usage:
    python bench/rerank.py                      # VeRi-776 size, sparse vs FastReID
    python bench/rerank.py --large [--dim 2048]  # VERI-Wild Large size, sparse only
Time: wall clock and CPU time (user + system, all threads) of the call; on a shared machine the
CPU time is the steadier figure. Peak memory: ``VmHWM`` of ``/proc/self/status``, reset right
before the call through ``/proc/self/clear_refs`` (Linux); ``ru_maxrss`` where that is
unavailable.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VERI776 = dict(num_query=1678, num_gallery=11579, ids=200, dim=2048)
VERIWILD_LARGE = dict(num_query=10000, num_gallery=128517, ids=10000, dim=2048)


def _status_kb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(run):
    """Call ``run()``; returns ``(result, wall s, CPU s, peak RSS kB, RSS before kB, exact_peak)``.

    CPU time is user + system of all threads; the peak is ``VmHWM`` reset right before the call
    (``exact_peak``), else ``ru_maxrss`` (the process's whole-life peak).
    """
    import resource

    def cpu_seconds():
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    rss_before = _status_kb("VmRSS")
    exact_peak = _reset_peak()
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = run()
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    # VmHWM on Linux; ru_maxrss (also kB) elsewhere
    peak = _status_kb("VmHWM") if exact_peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return out, elapsed, cpu, peak, rss_before, exact_peak


def _make_features(n, dim, ids, seed, noise=0.8):
    """(N, D) float32 L2-normalised clustered features and their (N,) identity labels.

    Each feature = its identity's N(0, I) centre + N(0, noise^2 I), then L2-normalised.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, ids, (n,), generator=g)
    centres = torch.randn(ids, dim, generator=g)
    x = torch.randn(n, dim, generator=g).mul_(noise)
    step = 8192
    for s in range(0, n, step):  # in place, in chunks: no (N, D) temporaries
        x[s:s + step] += centres[labels[s:s + step]]
        x[s:s + step] /= x[s:s + step].norm(dim=1, keepdim=True)
    return x, labels


def _worker(args):
    import numpy as np
    import torch
    from fastreid.utils.compute_dist import build_dist

    import fastreid_plugins  # noqa: F401  (compat: FastReID's re-ranking on the CPU)

    torch.set_num_threads(args.threads)
    x, _ = _make_features(args.num_query + args.num_gallery, args.dim, args.ids, args.seed)
    qf, gf = x[:args.num_query], x[args.num_query:]
    dist = np.empty((args.num_query, args.num_gallery), dtype=np.float32)
    for s in range(0, args.num_query, 1024):  # cosine distance, as FastReID's evaluator
        dist[s:s + 1024] = (1 - qf[s:s + 1024] @ gf.t()).numpy()
    if args.method == "sparse":
        from fastreid_plugins.evaluation.sparse_rerank import sparse_rerank

        def run():
            return sparse_rerank(qf, gf, dist, args.k1, args.k2, args.lam, knn=args.knn,
                                 device="cpu", progress=args.progress)
    else:
        def run():
            jac = build_dist(qf, gf, metric="jaccard", k1=args.k1, k2=args.k2)
            return jac * (1 - args.lam) + dist * args.lam

    out, elapsed, cpu, peak, rss_before, exact_peak = measure(run)
    if args.save:
        np.save(args.save, out)
    print(json.dumps({"method": args.method, "seconds": elapsed, "cpu_seconds": cpu,
                      "peak_rss_gb": peak / 2**20,
                      "peak_increase_gb": (peak - rss_before) / 2**20,
                      "exact_peak": exact_peak, "shape": list(out.shape)}))


def _run_worker(method, args, save=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method,
           "--num-query", str(args.num_query), "--num-gallery", str(args.num_gallery),
           "--dim", str(args.dim), "--ids", str(args.ids), "--seed", str(args.seed),
           "--k1", str(args.k1), "--k2", str(args.k2), "--lam", str(args.lam),
           "--knn", args.knn, "--threads", str(args.threads)]
    return run_worker(cmd, save, args.progress)


def run_worker(cmd, save=None, progress=False):
    """Run a bench worker command (this repository first on PYTHONPATH); its last stdout line
    is JSON, returned as a dict."""
    cmd = list(cmd) + (["--save", save] if save else []) + (["--progress"] if progress else [])
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(cmd, stdout=subprocess.PIPE, env=env, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--large", action="store_true", help="VERI-Wild Large size, sparse only")
    p.add_argument("--num-query", type=int)
    p.add_argument("--num-gallery", type=int)
    p.add_argument("--dim", type=int, help="feature dimension (default 2048)")
    p.add_argument("--ids", type=int, help="number of identity clusters")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k1", type=int, default=20)
    p.add_argument("--k2", type=int, default=6)
    p.add_argument("--lam", type=float, default=0.3)
    p.add_argument("--knn", default="auto", choices=["auto", "faiss", "torch"])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeat", type=int, default=1, help="runs per method (the fastest counts)")
    p.add_argument("--progress", action="store_true", help="tqdm bars of the sparse method")
    p.add_argument("--worker", choices=["sparse", "fastreid"], help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    preset = VERIWILD_LARGE if args.large else VERI776
    for key, val in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    if args.worker:
        args.method = args.worker
        return _worker(args)

    n = args.num_query + args.num_gallery
    print(f"k-reciprocal re-ranking, {args.num_query} query + {args.num_gallery} gallery = {n} x "
          f"{args.dim} features ({args.ids} clusters), k1={args.k1} k2={args.k2} "
          f"lambda={args.lam}, {args.threads} threads")
    methods = ["sparse"] if args.large else ["sparse", "fastreid"]
    best = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for m in methods:
                save = os.path.join(tmp, f"{m}.npy") if (r == 0 and not args.large) else None
                res = _run_worker(m, args, save)
                print(f"  [{m:8s}] {res['seconds']:8.1f} s wall {res['cpu_seconds']:8.1f} s CPU   "
                      f"peak RSS {res['peak_rss_gb']:6.2f} GB   "
                      f"peak increase {res['peak_increase_gb']:6.2f} GB")
                if m not in best or res["seconds"] < best[m]["seconds"]:
                    best[m] = res
        if not args.large:
            import numpy as np

            a = np.load(os.path.join(tmp, "sparse.npy"))
            b = np.load(os.path.join(tmp, "fastreid.npy"))
            top = min(10, a.shape[1])
            same_top = (np.argsort(a, 1, kind="stable")[:, :top]
                        == np.argsort(b, 1, kind="stable")[:, :top]).mean()
            print(f"agreement: max |sparse - FastReID| = {np.abs(a - b).max():.2e}, "
                  f"identical top-{top} ranks: {same_top * 100:.2f}%")
    if args.large:
        s = best["sparse"]
        dense_gb = n * n * 4 / 2**30
        print(f"VERI-Wild Large size: {s['seconds']:.1f} s wall ({s['cpu_seconds']:.1f} s CPU), "
              f"peak RSS {s['peak_rss_gb']:.2f} GB "
              f"(one dense N x N float32 matrix would be {dense_gb:.0f} GiB)")
        return
    s, f = best["sparse"], best["fastreid"]
    print(f"ratio sparse / FastReID: time {s['seconds'] / f['seconds']:.3f}x "
          f"(CPU time {s['cpu_seconds'] / f['cpu_seconds']:.3f}x), "
          f"peak RSS {s['peak_rss_gb'] / f['peak_rss_gb']:.3f}x, "
          f"peak increase {s['peak_increase_gb'] / f['peak_increase_gb']:.3f}x  (target <= 0.5x)")


if __name__ == "__main__":
    main()
