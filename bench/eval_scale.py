#!/usr/bin/env python
"""Evaluation at VERI-Wild Large size in bounded memory: query-chunked path vs the full-matrix path.

Default run: 10,000 query + 128,517 gallery features of dimension 2048 (VERI-Wild Large test
size), 10,000 identity clusters, 174 cameras (VERI-Wild's count; same-camera same-identity gallery
images are junk). Each mode runs in its own subprocess (separate memory peaks) and prints wall
time, CPU time (user + system, all threads), peak RSS above the features (``VmHWM`` after
``/proc/self/clear_refs``, minus ``VmRSS`` right before the call, the features being in memory
already) and Rank-1 / mAP / mINP:

* ``chunked``: :func:`fastreid_plugins.evaluation.chunked.evaluate_chunked`, no re-ranking.
* ``full``: today's full-matrix path (FastReID's ``build_dist`` -> one (Q, G) float32 matrix,
  5.1 GB, then ``evaluate_rank``); run only when ``MemAvailable`` leaves room (``--full auto``).
* ``chunked-rerank``: the chunked path with sparse k-reciprocal re-ranking (k1=20, k2=6,
  lambda=0.3), exact k-NN (faiss).
* ``chunked-rerank-<ivf|hnsw>``: the same with faiss's approximate k-NN (``--approx``); the
  parent prints the neighbour recall against the exact table (all ``k1`` columns, and the first
  ``k2`` that the local query expansion uses) and the mAP change against the exact run.

* ``chunked-verify`` (``--verification``): the ``chunked`` run with the verification pair
  histograms (:mod:`fastreid_plugins.evaluation.verification`, ``TEST.VERIFICATION.BINS``
  bins, exact below ``EXACT_PAIRS`` pairs); prints TAR@FAR, EER, AUC, the bin width and its
  time / peak against ``chunked``.

Today's full-matrix re-ranking path (dense (Q, G) original + (Q, G) output) is not rerun by
default (12.7 GB peak): ``python bench/rerank.py --large`` measured 707 s wall, 12.7 GB peak RSS
in the previous session; ``--full-rerank`` runs it here when memory allows.

Features are those of ``bench/rerank.py`` (clustered, L2-normalised; cosine distance).

Usage:
    python bench/eval_scale.py                            # no re-ranking + exact re-ranking
    python bench/eval_scale.py --approx ivf --nprobe 16   # + approximate k-NN run
    python bench/eval_scale.py --num-query 1000 --num-gallery 12000   # quick
    python bench/eval_scale.py --verification --no-rerank --full no   # + verification metrics
"""

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from rerank import _make_features, measure, run_worker  # noqa: E402


def _mem_available_gb():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def _worker(args):
    import numpy as np
    import torch

    import fastreid_plugins  # noqa: F401
    from fastreid_plugins.evaluation import knn
    from fastreid_plugins.evaluation import sparse_rerank as sr
    from fastreid_plugins.evaluation.chunked import evaluate_chunked

    torch.set_num_threads(args.threads)
    n = args.num_query + args.num_gallery
    x, labels = _make_features(n, args.dim, args.ids, args.seed, args.noise)
    pids = labels.numpy()
    cams = np.random.default_rng(args.seed + 1).integers(0, args.cams, n)
    nq = args.num_query
    qf, gf = x[:nq], x[nq:]
    q_pids, g_pids, q_cams, g_cams = pids[:nq], pids[nq:], cams[:nq], cams[nq:]
    rr = {"k1": args.k1, "k2": args.k2, "lambda_value": args.lam, "device": "cpu"}
    mode = args.worker
    tables = []
    if mode.startswith("chunked-rerank"):
        real = sr.knn_search

        def keep(*a, **k):
            out = real(*a, **k)
            tables.append(out)
            return out

        sr.knn_search = keep
        if mode != "chunked-rerank":
            rr["knn"] = mode.rsplit("-", 1)[1]
            rr["knn_params"] = {"nprobe": args.nprobe, "nlist": args.nlist or None,
                                "ef_search": args.ef_search}

    verify = {}

    def run():
        if mode.startswith("chunked"):
            vopts = {"n_bins": args.bins, "exact_pairs": args.exact_pairs} \
                if mode == "chunked-verify" else None
            res = evaluate_chunked(qf, gf, q_pids, g_pids, q_cams, g_cams, metric="cosine",
                                   rerank=rr if "rerank" in mode else None,
                                   memory_gb=args.memory_gb, progress=args.progress,
                                   verification=vopts)
            if vopts:
                s = res["verification"]["cosine"].summary()
                verify.update({k: s[k] for k in ("eer", "auc", "num_pos", "num_neg", "exact",
                                                 "bin_width")},
                              tar_at_far={str(k): v for k, v in s["tar_at_far"].items()})
            return res["cmc"], res["all_ap"], res["all_inp"]
        from fastreid.utils.compute_dist import build_dist

        from fastreid_plugins.evaluation.rank import evaluate_rank

        dist = build_dist(qf, gf, "cosine")
        if mode == "full-rerank":
            from fastreid_plugins.evaluation.sparse_rerank import sparse_rerank

            # the path of the previous stop: dense (Q, G) matrices and faiss's exact k-NN
            # (knn="auto" picked faiss on the CPU before the symmetric search existed)
            dist = sparse_rerank(qf, gf, dist, args.k1, args.k2, args.lam, device="cpu",
                                 normalize=True, progress=args.progress, knn="faiss")
        return evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)

    (cmc, ap, inp), elapsed, cpu, peak, rss_before, exact_peak = measure(run)
    if args.save and tables:
        np.save(args.save, tables[0])
    uncertified = getattr(knn._knn_screened, "last_uncertified", None) \
        if mode.startswith("chunked-rerank") else None
    print(json.dumps({"mode": mode, "seconds": elapsed, "cpu_seconds": cpu,
                      "uncertified_rows": uncertified,
                      "peak_increase_gb": (peak - rss_before) / 2**20,
                      "features_gb": n * args.dim * 4 / 2**30, "exact_peak": exact_peak,
                      "rank1": float(cmc[0]) * 100, "mAP": float(np.mean(ap)) * 100,
                      "mINP": float(np.mean(inp)) * 100, "verification": verify or None}))


def _run_worker(mode, args, save=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", mode]
    for key in ("num_query", "num_gallery", "dim", "ids", "noise", "cams", "seed", "k1", "k2",
                "lam", "threads", "memory_gb", "nprobe", "nlist", "ef_search", "bins",
                "exact_pairs"):
        cmd += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    return run_worker(cmd, save, args.progress)


def _print(res):
    print(f"  [{res['mode']:22s}] {res['seconds']:7.1f} s wall {res['cpu_seconds']:7.1f} s CPU  "
          f"peak RSS above features {res['peak_increase_gb']:5.2f} GB  "
          f"Rank-1 {res['rank1']:.4f}  mAP {res['mAP']:.6f}  mINP {res['mINP']:.6f}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-query", type=int, default=10000)
    p.add_argument("--num-gallery", type=int, default=128517)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--ids", type=int, default=10000)
    p.add_argument("--noise", type=float, default=3.0,
                   help="per-dimension noise around the unit-variance identity centres (3.0: "
                        "same-identity cosine ~0.1, so that ranking is not trivial)")
    p.add_argument("--cams", type=int, default=174)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k1", type=int, default=20)
    p.add_argument("--k2", type=int, default=6)
    p.add_argument("--lam", type=float, default=0.3)
    p.add_argument("--memory-gb", type=float, default=1.0, help="TEST.EVAL_MEMORY_GB")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--full", default="auto", choices=["auto", "yes", "no"],
                   help="run the full-matrix path without re-ranking (auto: if memory allows)")
    p.add_argument("--full-rerank", action="store_true",
                   help="also run the full-matrix re-ranking path (12.7 GB at the default size)")
    p.add_argument("--no-rerank", action="store_true", help="skip the re-ranking runs")
    p.add_argument("--approx", action="append", default=[], choices=["ivf", "hnsw"],
                   help="also run the re-ranking with this approximate k-NN (repeatable)")
    from fastreid_plugins.config import PLUGIN_DEFAULTS as D  # the evaluator's defaults

    p.add_argument("--nprobe", type=int, default=D["TEST.RERANK.KNN_NPROBE"])
    p.add_argument("--nlist", type=int, default=D["TEST.RERANK.KNN_NLIST"],
                   help="IVF cells (0: 4 sqrt(N))")
    p.add_argument("--ef-search", type=int, default=D["TEST.RERANK.KNN_EF_SEARCH"])
    p.add_argument("--verification", action="store_true",
                   help="also run chunked-verify (verification pair histograms)")
    p.add_argument("--bins", type=int, default=D["TEST.VERIFICATION.BINS"])
    p.add_argument("--exact-pairs", type=int, default=D["TEST.VERIFICATION.EXACT_PAIRS"])
    p.add_argument("--progress", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args)

    n = args.num_query + args.num_gallery
    dense_gb = args.num_query * args.num_gallery * 4 / 2**30
    print(f"evaluation: {args.num_query} query + {args.num_gallery} gallery = {n} x {args.dim} "
          f"features ({n * args.dim * 4 / 2**30:.2f} GB), {args.ids} clusters, {args.cams} "
          f"cameras, cosine, TEST.EVAL_MEMORY_GB={args.memory_gb}, {args.threads} threads; "
          f"one (Q, G) float32 matrix = {dense_gb:.2f} GB", flush=True)
    results = {}
    results["chunked"] = _run_worker("chunked", args)
    _print(results["chunked"])
    if args.verification:
        results["chunked-verify"] = v = _run_worker("chunked-verify", args)
        _print(v)
        m, c = v["verification"], results["chunked"]
        tars = ", ".join(f"TAR@{f} {t * 100:.3f}" for f, t in m["tar_at_far"].items())
        print(f"  verification: {m['num_pos']:,} positive / {m['num_neg']:,} negative pairs, "
              f"{'exact' if m['exact'] else 'bin width %.3g' % m['bin_width']}: {tars}, "
              f"EER {m['eer'] * 100:.3f}, AUC {m['auc'] * 100:.4f} (%); time "
              f"{v['seconds'] / c['seconds']:.3f}x chunked, peak "
              f"{v['peak_increase_gb'] - c['peak_increase_gb']:+.2f} GB", flush=True)
    avail = _mem_available_gb()
    need = 1.3 * dense_gb + n * args.dim * 4 / 2**30 + 1
    if args.full == "yes" or (args.full == "auto" and avail is not None and avail > need + 4):
        results["full"] = _run_worker("full", args)
        _print(results["full"])
        c, f = results["chunked"], results["full"]
        print(f"  chunked / full: time {c['seconds'] / f['seconds']:.3f}x (CPU "
              f"{c['cpu_seconds'] / f['cpu_seconds']:.3f}x); |d mAP| "
              f"{abs(c['mAP'] - f['mAP']):.2e}, |d mINP| {abs(c['mINP'] - f['mINP']):.2e}, "
              f"|d Rank-1| {abs(c['rank1'] - f['rank1']):.2e} (points)", flush=True)
    else:
        why = "--full no" if args.full == "no" else \
            f"MemAvailable {avail:.1f} GB < {need + 4:.1f} GB needed with 4 GB to spare"
        print(f"  [full] skipped: {why}", flush=True)
    if args.no_rerank:
        return results
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        exact_nn = os.path.join(tmp, "exact.npy")
        results["chunked-rerank"] = _run_worker("chunked-rerank", args, save=exact_nn)
        _print(results["chunked-rerank"])
        if args.full_rerank:
            results["full-rerank"] = _run_worker("full-rerank", args)
            _print(results["full-rerank"])
        exact = np.load(exact_nn)
        for kind in args.approx:
            mode = f"chunked-rerank-{kind}"
            path = os.path.join(tmp, f"{kind}.npy")
            results[mode] = _run_worker(mode, args, save=path)
            _print(results[mode])
            approx = np.load(path)
            for cols, name in ((args.k1, "k1"), (args.k2, "k2")):
                a, e = np.sort(approx[:, :cols], 1), np.sort(exact[:, :cols], 1)
                hits = sum(np.isin(a[i], e[i], assume_unique=False).sum() for i in range(len(a)))
                print(f"  {kind}: neighbour recall@{name}={cols}: {hits / e.size:.4f}")
            r, x = results[mode], results["chunked-rerank"]
            print(f"  {kind} vs exact: time {r['seconds'] / x['seconds']:.3f}x, d mAP "
                  f"{r['mAP'] - x['mAP']:+.4f}, d Rank-1 {r['rank1'] - x['rank1']:+.4f}, "
                  f"d mINP {r['mINP'] - x['mINP']:+.4f} (points)", flush=True)
    x = results["chunked-rerank"]
    if x.get("uncertified_rows") is not None:
        print(f"  exact k-NN: bfloat16 screen, {x['uncertified_rows']} of {n} rows not certified "
              f"and searched again in float32", flush=True)
    if "full-rerank" in results:
        f = results["full-rerank"]
        print(f"  chunked re-ranking / full-matrix re-ranking (same run): time "
              f"{x['seconds'] / f['seconds']:.3f}x, "
              f"CPU {x['cpu_seconds'] / f['cpu_seconds']:.3f}x; "
              f"|d mAP| {abs(x['mAP'] - f['mAP']):.2e}, |d mINP| {abs(x['mINP'] - f['mINP']):.2e} "
              f"(points)", flush=True)
    return results


if __name__ == "__main__":
    main()
