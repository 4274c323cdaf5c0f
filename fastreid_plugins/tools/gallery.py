"""A gallery in a vector database (Qdrant): add extracted features, search with filters, delete,
stats.

Usage::

    python -m fastreid_plugins.tools.gallery add --gallery DB --features GALLERY_DIR \\
        [--metadata meta.csv] [--batch-size 256] [--collection NAME]
    python -m fastreid_plugins.tools.gallery search --gallery DB --query QUERY_DIR --topk 10 \\
        [--cameras c002,c005] [--time-from T0] [--time-to T1] [--where FIELD=VALUE ...] \\
        [--threshold threshold.json|VALUE] [--output results.json]
    python -m fastreid_plugins.tools.gallery delete --gallery DB --model GALLERY_DIR \\
        [--paths P ...] [--ids ID ...] [--cameras c002] [--time-from T0] [--time-to T1]
    python -m fastreid_plugins.tools.gallery stats --gallery DB [--model FEATURES_DIR]

``DB`` is a folder (Qdrant's embedded mode, created if missing, one process at a time) or the URL
of a Qdrant server / cluster (``http://host:6333``; ``--timeout`` seconds before it is reported
unreachable). ``GALLERY_DIR`` / ``QUERY_DIR`` are output folders of
:mod:`fastreid_plugins.tools.extract`; the collection is the model's (its weights' SHA-256 in the
manifest: :class:`fastreid_plugins.gallery.VectorGallery`), so queries of another model or
dimension are refused, naming both.

* ``add`` is idempotent: each image's point id is ``uuid5`` of its path and every batch is
  acknowledged before the next, so an ingest that was killed and started again loses and
  duplicates nothing. Per-image metadata: from VeRi-style names and ``--metadata CSV``
  (:mod:`fastreid_plugins.gallery.metadata`).
* ``search``: exact top-K (the evaluator's distances, as ``tools.search``'s exact search); the
  camera / time / ``--where`` filters are executed by Qdrant inside the query (K matching images
  come back when K exist); ``--threshold VALUE`` keeps results with ``distance <= VALUE`` (or
  the global threshold of a ``tools.calibrate`` file of the same metric and model).
  Prints one line per query (or writes ``--output`` JSON).

A user error ends in one ``Error:`` block and exit status 2 (:func:`fastreid_plugins.cli.run_cli`).
Importing this module imports neither torch nor qdrant-client (``--help`` is fast).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Dict, Optional, Sequence

from fastreid_plugins.errors import ConfigError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The ``add / search / delete / stats`` parser."""
    p = argparse.ArgumentParser(prog="python -m fastreid_plugins.tools.gallery",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, model_help=None):
        sp.add_argument("--gallery", required=True,
                        help="Qdrant folder (embedded mode) or http(s):// URL of a server")
        sp.add_argument("--collection", default=None,
                        help="collection name (default: reid_<weights sha256[:16]>)")
        sp.add_argument("--timeout", type=float, default=5.0, help="seconds to reach a server")
        if model_help:
            sp.add_argument("--model", default=None, help=model_help)

    def filters(sp):
        sp.add_argument("--cameras", default="", help="comma-separated cameras, e.g. c002,c005")
        sp.add_argument("--time-from", type=float, default=None, help="time >= this")
        sp.add_argument("--time-to", type=float, default=None, help="time <= this")

    a = sub.add_parser("add", help="add (upsert) an extraction folder's features")
    common(a)  # the --features manifest names the model
    a.add_argument("--features", required=True, help="extraction folder (tools.extract --out)")
    a.add_argument("--metadata", default=None, help="CSV with a 'path' column (+ camera, time, "
                   "free fields)")
    a.add_argument("--batch-size", type=int, default=256, help="points per acknowledged upsert")
    s = sub.add_parser("search", help="top-K of query features, with payload filters")
    common(s)  # the --query manifest names the model
    s.add_argument("--query", required=True, help="extraction folder of the query features")
    s.add_argument("--topk", type=int, default=10)
    filters(s)
    s.add_argument("--where", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="equality filters on payload fields")
    s.add_argument("--threshold", default=None, metavar="FILE|VALUE",
                   help="keep results with distance <= the threshold: a number or a file of "
                   "python -m fastreid_plugins.tools.calibrate (same metric and model)")
    s.add_argument("--output", default=None, help="write the results as JSON here")
    d = sub.add_parser("delete", help="delete images by path, camera or time range")
    common(d, "extraction folder of the model whose collection to use (or --collection)")
    d.add_argument("--paths", nargs="*", default=[], help="image paths (as added) to delete")
    d.add_argument("--ids", nargs="*", default=[], help="point ids (the 'id' of search results)")
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


def _open(args, manifest=None, create=False):
    from fastreid_plugins.gallery import VectorGallery

    if manifest is not None:
        return VectorGallery.from_manifest(args.gallery, manifest, args.collection, create,
                                           args.timeout)
    if not args.collection:
        raise ConfigError("Name the collection: --model FEATURES_DIR (its model's collection) "
                          "or --collection NAME.")
    from fastreid_plugins.gallery.store import _connect

    client = _connect(args.gallery, args.timeout)
    if not client.collection_exists(args.collection):
        have = [c.name for c in client.get_collections().collections]
        client.close()
        raise ConfigError(f"No collection {args.collection!r} in {args.gallery!r} (there: {have})")
    meta = client.get_collection(args.collection).config.metadata or {}
    client.close()
    return VectorGallery(args.gallery, int(meta["dim"]), str(meta["metric"]),
                         str(meta.get("weights_sha256") or ""), args.collection, False,
                         args.timeout)


def _cmd_add(args) -> Dict[str, Any]:
    from fastreid_plugins.gallery import image_payload, read_metadata_csv
    from fastreid_plugins.tools.search import FeatureStore

    store = FeatureStore(args.features)
    rows = read_metadata_csv(args.metadata) if args.metadata else None
    t0, added = time.time(), 0
    with _open(args, store.manifest, create=True) as g:
        for k, shard in enumerate(store.shards):
            if not shard["count"]:
                continue
            x, paths = store.shard(k), store.paths(range(store.offsets[k],
                                                        store.offsets[k] + shard["count"]))
            added += g.add(x, [image_payload(p, rows) for p in paths], batch=args.batch_size)
            print(f"added {added}/{len(store)}", flush=True)
        out = g.stats()
    out.update(added=added, seconds=round(time.time() - t0, 3))
    print(json.dumps(out, indent=1))
    return out


def _cmd_search(args) -> Dict[str, Any]:
    from fastreid_plugins.tools.search import FeatureStore

    queries = FeatureStore(args.query)
    cams = [c for c in args.cameras.split(",") if c]
    with _open(args, queries.manifest) as g:
        threshold = None
        if args.threshold is not None:
            from fastreid_plugins.evaluation.verification import load_threshold

            threshold, _ = load_threshold(args.threshold, g.metric, g.weights_sha256 or None)
        dist, hits = g.search(queries.features(), args.topk, cams, args.time_from, args.time_to,
                              _where(args.where), threshold)
    results = [{"query": q, "results": h} for q, h in zip(queries.paths(), hits)]
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    else:
        for r in results:
            shown = ", ".join(f"{h['name']} {h['distance']:.4f}" for h in r["results"])
            print(f"{r['query']}: {shown or 'no match'}")
    return {"results": results, "dist": dist}


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
        from fastreid_plugins.gallery.store import _connect

        client = _connect(args.gallery, args.timeout)
        out = {"location": args.gallery, "collections": {}}
        for c in client.get_collections().collections:
            info = client.get_collection(c.name)
            out["collections"][c.name] = dict(info.config.metadata or {},
                                              count=client.count(c.name, exact=True).count)
        client.close()
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
