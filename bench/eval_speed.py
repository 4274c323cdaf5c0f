#!/usr/bin/env python
"""Ranking speed at VeRi-776 size: fastreid_plugins' evaluator vs FastReID's Python and \
Cython rankers.

Usage: python bench/eval_speed.py [--num-query 1678 --num-gallery 11579 --repeat 3 --skip-python]

The distance matrix is random (VeRi-776 test shape: 1,678 queries x 11,579 gallery, 200
identities, 20 cameras). FastReID's Cython ranker is compiled into a temporary directory (never
inside site-packages) when Cython and a C compiler are available; otherwise it is reported as
unavailable. All timings are measured in this run, on this machine; ratios are ours / theirs.
"""

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

import argparse
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time

import fastreid
import numpy as np
from fastreid.evaluation.rank import evaluate_py

from fastreid_plugins.evaluation.rank import evaluate_rank


def build_cython_ranker():
    """Compile FastReID's rank_cy.pyx out of tree; returns its ``evaluate_cy`` or None."""
    src = os.path.join(os.path.dirname(fastreid.__file__), "evaluation", "rank_cylib",
                       "rank_cy.pyx")
    tmp = tempfile.mkdtemp(prefix="rank_cy_")
    shutil.copy(src, tmp)
    setup = (
        "from setuptools import setup, Extension\n"
        "import numpy as np\nfrom Cython.Build import cythonize\n"
        "setup(ext_modules=cythonize([Extension('rank_cy', ['rank_cy.pyx'], "
        "include_dirs=[np.get_include()])], language_level=3), "
        "script_args=['build_ext', '--inplace'])\n")
    with open(os.path.join(tmp, "build.py"), "w") as f:
        f.write(setup)
    res = subprocess.run([sys.executable, "build.py"], cwd=tmp, capture_output=True, text=True)
    so = glob.glob(os.path.join(tmp, "rank_cy*.so"))
    if res.returncode != 0 or not so:
        print("FastReID Cython ranker: not buildable here "
              f"({(res.stderr or res.stdout).strip()[-300:]})")
        return None
    spec = importlib.util.spec_from_file_location("rank_cy", so[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.evaluate_cy


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-query", type=int, default=1678)
    ap.add_argument("--num-gallery", type=int, default=11579)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-python", action="store_true", help="skip FastReID's slow Python ranker")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    nq, ng = args.num_query, args.num_gallery
    dist = rng.random((nq, ng), dtype=np.float32)
    q_pids, g_pids = rng.integers(0, 200, nq), rng.integers(0, 200, ng)
    q_cams, g_cams = rng.integers(0, 20, nq), rng.integers(0, 20, ng)
    print(f"distance matrix {nq} x {ng}; best of {args.repeat} runs")

    t_ours, (cmc, ap_, inp) = best_of(
        lambda: evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, 50), args.repeat)
    print(f"fastreid_plugins (vectorised): {t_ours:.3f} s   mAP {np.mean(ap_):.6f}")

    evaluate_cy = build_cython_ranker()
    if evaluate_cy is not None:
        t_cy, (cmc_c, ap_c, _) = best_of(
            lambda: evaluate_cy(dist, q_pids, g_pids, q_cams, g_cams, 50, False), args.repeat)
        print(f"FastReID Cython:               {t_cy:.3f} s   mAP {np.mean(ap_c):.6f}")
        print(f"ratio ours / Cython:           {t_ours / t_cy:.2f}x")
    if not args.skip_python:
        t_py, (_, ap_p, _) = best_of(
            lambda: evaluate_py(dist, q_pids, g_pids, q_cams, g_cams, 50, False), 1)
        print(f"FastReID Python:               {t_py:.3f} s   mAP {np.mean(ap_p):.6f}")
        print(f"ratio ours / Python:           {t_ours / t_py:.3f}x")


if __name__ == "__main__":
    main()
