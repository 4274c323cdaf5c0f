"""A gallery in a vector database (Milvus): add features or images, search with filters, delete,
stats.

Usage::

    python -m fastreid_plugins.tools.gallery add --gallery DB --features GALLERY_DIR \\
        [--metadata meta.csv] [--batch-size 256] [--collection NAME] \\
        [--index flat|ivf_flat|hnsw] [--nlist 1024]
    python -m fastreid_plugins.tools.gallery add --gallery DB --images DIR|LIST.txt \\
        --config-file C.yml [--features-out FEATURES_DIR] [...] MODEL.WEIGHTS model.pth
    python -m fastreid_plugins.tools.gallery search --gallery DB --query QUERY_DIR|IMAGES \\
        [--config-file C.yml] --topk 10 [--cameras c002,c005] [--time-from T0] \\
        [--time-to T1] [--where FIELD=VALUE ...] [--threshold threshold.json|VALUE] \\
        [--output results.csv|results.json] [--recall-sample 100] [--nprobe 64] \\
        [--ef-search 128] [--vis N] [--vis-dir vis/] [MODEL.WEIGHTS model.pth]
    python -m fastreid_plugins.tools.gallery delete --gallery DB --model GALLERY_DIR \\
        [--paths P ...] [--ids ID ...] [--cameras c002] [--time-from T0] [--time-to T1]
    python -m fastreid_plugins.tools.gallery stats --gallery DB [--model FEATURES_DIR]

``DB`` is a Milvus Lite file (``*.db``, created if missing, one process at a time) or the URI of
a Milvus standalone server / cluster (``http://host:19530``; ``--timeout`` seconds before it is
reported unreachable). ``GALLERY_DIR`` / ``QUERY_DIR`` are output folders of
:mod:`fastreid_plugins.tools.extract`; ``--images`` are extracted first by ``tools.extract``
itself (resumable, into ``--features-out``), query images by its ``FeatureExtractor``. The
collection is the model's (its weights' SHA-256 in the manifest:
:class:`fastreid_plugins.gallery.VectorGallery`), so queries of another model or dimension are
refused, naming both.

* ``add`` is idempotent: each image's primary key is ``uuid5`` of its path and every batch is
  acknowledged before the next, so an ingest that was killed and started again loses and
  duplicates nothing. Per-image metadata: from VeRi-style names and ``--metadata CSV``
  (:mod:`fastreid_plugins.gallery.metadata`). ``--index`` chooses a new collection's vector index:
  ``flat`` (default, exact), ``ivf_flat`` or ``hnsw`` (approximate).
* ``search``: top-K with the evaluator's distances (exact with ``flat``: as ``tools.search``'s
  exact search); the camera / time / ``--where`` filters are executed by Milvus inside the query
  (K matching images come back when K exist). On an approximate index the recall@K against an
  exact scan of the stored vectors is measured on ``--recall-sample`` queries and printed, as
  ``tools.search`` does. ``--threshold VALUE|FILE`` keeps results with ``distance <=`` the
  threshold: a number or a ``tools.calibrate`` file of the same metric and model, whose
  per-camera-pair thresholds apply where both cameras are known (the query's from its
  VeRi-style file name, the gallery image's ``camera``), the global one elsewhere.
  ``--output`` writes ``tools.search``'s CSV / JSON (query, rank, gallery path, distance,
  decision, ``no match`` rows); ``--vis N`` its rank-list pictures, the threshold marked.

A user error ends in one ``Error:`` block and exit status 2 (:func:`fastreid_plugins.cli.run_cli`).
Importing this module imports neither torch nor pymilvus (``--help`` is fast).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from fastreid_plugins.errors import ConfigError

__all__ = ["main", "build_parser"]

#: default queries of the recall@K check of an approximate index (``--recall-sample``)
RECALL_SAMPLE = 100


def build_parser() -> argparse.ArgumentParser:
    """The ``add / search / delete / stats`` parser."""
    p = argparse.ArgumentParser(prog="python -m fastreid_plugins.tools.gallery",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, model_help=None):
        sp.add_argument("--gallery", required=True,
                        help="Milvus Lite file (*.db) or http://host:19530 URI of a server")
        sp.add_argument("--collection", default=None,
                        help="collection name (default: reid_<weights sha256[:16]>)")
        sp.add_argument("--timeout", type=float, default=5.0, help="seconds to reach a server")
        sp.add_argument("--debug", action="store_true",
                        help="show the traceback of a user error (taken by cli.run_cli)")
        if model_help:
            sp.add_argument("--model", default=None, help=model_help)

    def filters(sp):
        sp.add_argument("--cameras", default="", help="comma-separated cameras, e.g. c002,c005")
        sp.add_argument("--time-from", type=float, default=None, help="time >= this")
        sp.add_argument("--time-to", type=float, default=None, help="time <= this")

    def model(sp, what):
        sp.add_argument("--config-file", default=None, help=f"model config ({what} only)")
        sp.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of "
                        "--config-file (MODEL.WEIGHTS path/to/model.pth)")

    a = sub.add_parser("add", help="add (upsert) an extraction folder's features, or images")
    common(a)  # the --features manifest names the model
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", help="extraction folder (tools.extract --out)")
    src.add_argument("--images", help="images (folder / list file) to extract with "
                     "--config-file first")
    a.add_argument("--features-out", default=None, help="where --images' features are "
                   "extracted (resumable; default logs/gallery_features/<images name>)")
    a.add_argument("--metadata", default=None, help="CSV with a 'path' column (+ camera, time, "
                   "free fields)")
    a.add_argument("--batch-size", type=int, default=256, help="rows per acknowledged upsert")
    a.add_argument("--index", default="flat", choices=["flat", "ivf_flat", "hnsw"],
                   help="vector index of a new collection (default flat: exact)")
    a.add_argument("--nlist", type=int, default=None, help="ivf_flat lists (default 1024)")
    model(a, "--images")
    s = sub.add_parser("search", help="top-K of query features or images, with filters")
    common(s)  # the --query manifest names the model
    s.add_argument("--query", required=True, help="extraction folder of the query features, or "
                   "query images (folder / list / file) with --config-file")
    s.add_argument("--topk", type=int, default=10)
    filters(s)
    s.add_argument("--where", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="equality filters on metadata fields")
    s.add_argument("--threshold", default=None, metavar="FILE|VALUE",
                   help="keep results with distance <= the threshold: a number or a file of "
                   "python -m fastreid_plugins.tools.calibrate (same metric and model)")
    s.add_argument("--output", default=None, help="write the results here (.csv or .json)")
    s.add_argument("--recall-sample", type=int, default=RECALL_SAMPLE,
                   help="queries for the recall@K check of an approximate index (0 = off)")
    s.add_argument("--nprobe", type=int, default=None, help="ivf_flat lists searched")
    s.add_argument("--ef-search", type=int, default=None, help="hnsw search beam")
    s.add_argument("--vis", type=int, default=0, metavar="N", help="pictures of the first N "
                   "queries")
    s.add_argument("--vis-dir", default="vis")
    s.add_argument("--vis-size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    model(s, "query images")
    d = sub.add_parser("delete", help="delete images by path, camera or time range")
    common(d, "extraction folder of the model whose collection to use (or --collection)")
    d.add_argument("--paths", nargs="*", default=[], help="image paths (as added) to delete")
    d.add_argument("--ids", nargs="*", default=[], help="image ids (the 'id' of search results)")
    filters(d)
    t = sub.add_parser("stats", help="count, dimension, metric, model, fields")
    common(t, "extraction folder of the model (default: every collection there)")
    return p


def _where(items: Sequence[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--where {item!r}: expected FIELD=VALUE")
        try:
            out[key] = int(value)
        except ValueError:
            out[key] = value
    return out


def _open(args, manifest=None, create=False, **kw):
    from fastreid_plugins.gallery import VectorGallery

    if manifest is not None:
        return VectorGallery.from_manifest(args.gallery, manifest, args.collection, create,
                                           args.timeout, **kw)
    if not args.collection:
        raise ConfigError("Name the collection: --model FEATURES_DIR (its model's collection) "
                          "or --collection NAME.")
    from fastreid_plugins.gallery.store import _describe, connect, disconnect, list_galleries

    client = connect(args.gallery, args.timeout)
    try:
        if args.collection not in list_galleries(client):
            raise ConfigError(f"No collection {args.collection!r} in {args.gallery!r} (there: "
                              f"{list_galleries(client)})")
        meta = _describe(client, args.collection)
    finally:
        disconnect(client, args.gallery)
    if "dim" not in meta or "metric" not in meta:
        raise ConfigError(f"Collection {args.collection!r} in {args.gallery!r} was not made by "
                          "this gallery (no dim / metric in its description).")
    return VectorGallery(args.gallery, int(meta["dim"]), str(meta["metric"]),
                         str(meta.get("weights_sha256") or ""), args.collection, False,
                         args.timeout)


def _extract_images(args) -> str:
    """``tools.extract`` of ``--images`` into ``--features-out`` (resumable); the folder."""
    if not args.config_file:
        raise ConfigError("--images needs --config-file (and MODEL.WEIGHTS) to extract them.")
    from fastreid_plugins.tools import extract

    out = args.features_out or os.path.join(
        "logs", "gallery_features", os.path.basename(os.path.normpath(args.images)))
    extract.main(["--config-file", args.config_file, "--images", args.images, "--out", out,
                  "--no-progress", *args.opts])
    return out


def _cmd_add(args) -> Dict[str, Any]:
    from fastreid_plugins.gallery import image_payload, read_metadata_csv
    from fastreid_plugins.tools.search import FeatureStore

    if args.features and args.opts:
        raise ConfigError(f"KEY VALUE overrides {args.opts} apply to --images only.")
    rows = read_metadata_csv(args.metadata) if args.metadata else None
    store = FeatureStore(args.features or _extract_images(args))
    t0, added = time.time(), 0
    params = {"nlist": args.nlist} if args.nlist and args.index == "ivf_flat" else None
    with _open(args, store.manifest, create=True, index=args.index, index_params=params) as g:
        for k, shard in enumerate(store.shards):
            if not shard["count"]:
                continue
            x, paths = store.shard(k), store.paths(range(store.offsets[k],
                                                        store.offsets[k] + shard["count"]))
            added += g.add(x, [image_payload(p, rows) for p in paths], batch=args.batch_size)
            print(f"added {added}/{len(store)}", flush=True)
        out = g.stats()
    out.update(added=added, seconds=round(time.time() - t0, 3), features=store.path)
    print(json.dumps(out, indent=1))
    return out


def _queries(args):
    """``(features, paths, manifest)`` of ``--query``: an extraction folder, or images
    extracted with ``--config-file`` by ``tools.extract``'s ``FeatureExtractor``."""
    from fastreid_plugins.errors import DatasetNotFoundError
    from fastreid_plugins.tools.extract import (
        IMAGE_EXTENSIONS,
        MANIFEST,
        FeatureExtractor,
        count_images,
        iter_image_paths,
    )

    q = args.query
    if os.path.isdir(q) and os.path.isfile(os.path.join(q, MANIFEST)):
        from fastreid_plugins.tools.search import FeatureStore

        if args.opts:
            raise ConfigError(f"KEY VALUE overrides {args.opts} apply to query images only.")
        store = FeatureStore(q)
        return store.features(), store.paths(), store.manifest
    if not os.path.exists(q):
        raise DatasetNotFoundError(f"--query not found: {q!r}")
    if os.path.isfile(q) and q.lower().endswith(IMAGE_EXTENSIONS):
        paths = [q]
    else:
        count_images(q)
        paths = list(iter_image_paths(q))
    if not args.config_file:
        raise ConfigError(f"--query {q!r} holds images, not features: pass --config-file (and "
                          "MODEL.WEIGHTS) to extract them.")
    ext = FeatureExtractor(args.config_file, opts=args.opts)
    feats, kept = ext.extract(paths, return_index=True)
    desc = ext.describe()
    return feats, [paths[i] for i in kept], {"dim": feats.shape[1], "metric": desc["metric"],
                                             "weights_sha256": desc["weights_sha256"]}


def _recall(g, q, hits, args, cams, where) -> Dict[str, Any]:
    """recall@K of an approximate collection's results against :meth:`exact_scan` on
    ``--recall-sample`` seeded queries (printed to stderr)."""
    import numpy as np

    from fastreid_plugins.tools.search import recall_at_k

    rng = np.random.default_rng(0)
    sel = np.sort(rng.choice(len(q), min(args.recall_sample, len(q)), replace=False))
    _, exact = g.exact_scan(q[sel], args.topk, cams, args.time_from, args.time_to, where)
    ids = sorted({i for row in exact for i in row} | {h["id"] for j in sel for h in hits[j]})
    num = {i: n for n, i in enumerate(ids)}
    approx = np.full((len(sel), args.topk), -1, np.int64)
    for r, j in enumerate(sel):
        got = [num[h["id"]] for h in hits[j]]
        approx[r, :len(got)] = got
    ex = np.array([[num[i] for i in row] for row in exact], np.int64).reshape(len(sel), -1)
    rec = recall_at_k(approx[:, :ex.shape[1]], ex) if ex.shape[1] else 1.0
    params = g.search_params(args.topk, args.nprobe, args.ef_search)["params"]
    indexed = g.indexed_rows()
    said = "" if indexed is None else f"; index built on {indexed} of {len(g)} rows, the rest " \
        "searched exactly"
    print(f"recall@{args.topk} of {g.index} ({params}{said}) vs exact scan on {len(sel)} "
          f"queries: {rec:.4f}", file=sys.stderr)
    return {"recall_at_k": rec, "recall_queries": int(len(sel)), "indexed_rows": indexed}


def _cmd_search(args) -> Dict[str, Any]:
    import numpy as np

    feats, qpaths, manifest = _queries(args)
    cams = [c for c in args.cameras.split(",") if c]
    where = _where(args.where)
    info: Dict[str, Any] = {"topk": args.topk, "num_queries": len(qpaths)}
    with _open(args, manifest) as g:
        rec = None
        if args.threshold is not None:
            from fastreid_plugins.evaluation.verification import load_threshold

            _, rec = load_threshold(args.threshold, g.metric, g.weights_sha256 or None)
            info["threshold"] = rec
        t0 = time.time()
        dist, hits = g.search(feats, args.topk, cams, args.time_from, args.time_to, where,
                              nprobe=args.nprobe, ef=args.ef_search)
        info.update(search_s=round(time.time() - t0, 4), index=g.index, collection=g.name)
        if g.index != "flat" and args.recall_sample:
            info.update(_recall(g, feats, hits, args, cams, where))
    gpaths = [[h["path"] for h in row] + [None] * (args.topk - len(row)) for row in hits]
    index = np.where(np.isfinite(dist), 0, -1)
    thr = None
    if rec is not None:
        from fastreid_plugins.evaluation.verification import result_thresholds

        thr = result_thresholds(rec, qpaths, [[h.get("camera") for h in row] + [None] * (
            args.topk - len(row)) for row in hits])
        info["no_match"] = int(sum(1 for qi in range(len(dist)) if not (dist[qi] <= thr[qi]).any()))
    ids = [[h["id"] for h in row] for row in hits]
    _write(args, qpaths, gpaths, dist, index, info, thr, ids)
    vis = []
    if args.vis:
        from fastreid_plugins.tools.search import draw_results

        vis = draw_results(args.vis_dir, qpaths, gpaths, dist, range(min(args.vis, len(qpaths))),
                           tuple(args.vis_size), thr)
    results = [{"query": q, "results": h} for q, h in zip(qpaths, hits)]
    return {"results": results, "dist": dist, "info": info, "thresholds": thr, "vis": vis}


def _write(args, qpaths, gpaths, dist, index, info, thr, ids: List[List[str]]) -> None:
    from fastreid_plugins.tools.search import _write_csv, write_results

    if args.output:
        write_results(args.output, qpaths, gpaths, dist, index, {"info": info}, threshold=thr,
                      ids=ids)
    else:
        _write_csv(sys.stdout, qpaths, gpaths, dist, index, thr)


def _cmd_delete(args) -> Dict[str, Any]:
    from fastreid_plugins.tools.extract import read_manifest

    manifest = read_manifest(args.model) if args.model else None
    cams = [c for c in args.cameras.split(",") if c]
    with _open(args, manifest) as g:
        removed = g.delete(args.paths, cams, args.time_from, args.time_to, args.ids)
        out = dict(removed=removed, count=len(g))
    print(json.dumps(out))
    return out


def _cmd_stats(args) -> Dict[str, Any]:
    from fastreid_plugins.tools.extract import read_manifest

    if args.model or args.collection:
        manifest = read_manifest(args.model) if args.model else None
        with _open(args, manifest) as g:
            out: Dict[str, Any] = g.stats()
    else:
        from fastreid_plugins.gallery.store import (
            _count,
            _describe,
            connect,
            disconnect,
            list_galleries,
        )

        client = connect(args.gallery, args.timeout)
        out = {"location": args.gallery, "collections": {}}
        try:
            for name in list_galleries(client):
                client.load_collection(name)
                out["collections"][name] = dict(_describe(client, name),
                                                count=_count(client, name))
        finally:
            disconnect(client, args.gallery)
    print(json.dumps(out, indent=1))
    return out


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run one gallery command; returns its result (a dict)."""
    args = build_parser().parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if getattr(args, "topk", 1) < 1:
        raise ConfigError(f"--topk must be >= 1, got {args.topk}")
    return {"add": _cmd_add, "search": _cmd_search, "delete": _cmd_delete,
            "stats": _cmd_stats}[args.command](args)


if __name__ == "__main__":
    from fastreid_plugins.cli import run_cli

    run_cli(main, sys.argv[1:])
