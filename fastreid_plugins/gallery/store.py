"""One model's gallery as a Milvus collection (:class:`VectorGallery`).

The same code runs on Milvus Lite (a local ``.db`` file, the engine embedded in the
``milvus-lite`` wheel) and on a Milvus standalone server or distributed cluster (an
``http://host:19530`` URI), through ``pymilvus``'s ``MilvusClient``.

Importing this module imports neither numpy, torch nor pymilvus: the client is imported when a
gallery is opened (a missing install is a :class:`~fastreid_plugins.errors.ConfigError` naming
``pip install -e ".[gallery]"``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
import warnings
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple

from fastreid_plugins.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    import numpy as np
    from pymilvus import MilvusClient

__all__ = ["VectorGallery", "collection_name", "point_id", "COLLECTION_PREFIX", "BATCH",
           "TIMEOUT_S", "INDEXES", "REGISTRY", "connect", "disconnect", "list_galleries"]

#: collection names are ``COLLECTION_PREFIX + sha256[:16]``
COLLECTION_PREFIX = "reid_"
#: the small collection that records, per gallery collection, the metadata fields its images have
REGISTRY = "reid_registry"
#: rows per upsert (each one acknowledged before the next)
BATCH = 256
#: seconds before a server that does not answer is reported unreachable
TIMEOUT_S = 5
#: Milvus's limit on top-K and on queries per search request
MAX_TOPK = 16384
#: vector indexes: ``flat`` (exact, brute force), ``ivf_flat`` and ``hnsw`` (approximate)
INDEXES = {"flat": "FLAT", "ivf_flat": "IVF_FLAT", "hnsw": "HNSW"}
#: build parameters of the approximate indexes (``--nlist``, HNSW's ``M`` / ``efConstruction``)
INDEX_DEFAULTS = {"ivf_flat": {"nlist": 1024}, "hnsw": {"M": 32, "efConstruction": 200}}
#: ``uuid5(_NAMESPACE, image path)`` is an image's primary key
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/fastreid-plugins/gallery")
_METRICS = {"cosine": "COSINE", "euclidean": "L2"}
#: stored as Milvus schema fields (the rest of the metadata goes into the dynamic field)
_FIXED = ("id", "vector", "path")
_MAX_PATH = 4096


def point_id(path: str) -> str:
    """The primary key of an image: ``uuid5`` of its path (so re-adding it overwrites, never
    duplicates)."""
    return str(uuid.uuid5(_NAMESPACE, path))


def collection_name(weights_sha256: str) -> str:
    """``reid_<first 16 hex digits>`` of a model's weights SHA-256.

    Raises:
        ConfigError: ``weights_sha256`` is empty (features without a recorded model).
    """
    if not weights_sha256:
        raise ConfigError("The features' manifest records no weights_sha256 (the model's "
                          "SHA-256): name the collection with --collection NAME.")
    return COLLECTION_PREFIX + str(weights_sha256)[:16]


def _pymilvus():
    try:
        with warnings.catch_warnings():  # milvus-lite imports the deprecated pkg_resources
            warnings.simplefilter("ignore")
            import pymilvus
    except ImportError as e:
        raise ConfigError(f"The vector gallery needs pymilvus and milvus-lite ({e}): pip install "
                          "-e \".[gallery]\"") from None
    # its own log lines ("Failed to create new connection", iterator notes) would repeat the
    # Error: block this package prints; its exceptions carry the same text
    for name in ["pymilvus"] + [n for n in logging.root.manager.loggerDict
                                if n.startswith("pymilvus.")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return pymilvus


def _is_url(location: str) -> bool:
    return location.startswith(("http://", "https://", "tcp://"))


def _locked(location: str) -> bool:
    """Whether Milvus Lite's lock file of ``location`` is held by another process."""
    lock = os.path.join(os.path.dirname(os.path.abspath(location)),
                        "." + os.path.basename(location) + ".lock")
    if not os.path.exists(lock):
        return False
    with open(lock, "a") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.lockf(f, fcntl.LOCK_UN)
    return False


#: open clients per Milvus Lite file of this process (its engine is stopped when the last closes)
_LITE_OPEN: Dict[str, int] = {}


def disconnect(client: MilvusClient, location: str) -> None:
    """Close a client of :func:`connect`; for a Milvus Lite file, the last one of this process
    also stops its engine process, releasing the file for other processes."""
    client.close()
    if _is_url(location):
        return
    key = os.path.realpath(location)
    _LITE_OPEN[key] = _LITE_OPEN.get(key, 1) - 1
    if _LITE_OPEN[key] <= 0:
        del _LITE_OPEN[key]
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(key)


def connect(location: str, timeout: float = TIMEOUT_S) -> MilvusClient:
    """A ``MilvusClient`` of ``location``: a Milvus Lite file (``*.db``, created if missing) or
    a server / cluster URI (``http://host:19530``).

    Raises:
        ConfigError: pymilvus missing; an unreachable server (within ``timeout`` seconds); a
            local path that does not end in ``.db``.
        DatasetError: a corrupt database file, or one open in another process.
    """
    pymilvus = _pymilvus()
    if _is_url(location):
        try:
            client = pymilvus.MilvusClient(uri=location, timeout=float(timeout))
            client.list_collections(timeout=float(timeout))
        except Exception as e:  # grpc / Milvus errors: all mean "cannot talk to it"
            raise ConfigError(f"The Milvus server {location!r} is unreachable or refused the "
                              f"request within {timeout:g} s ({type(e).__name__}: "
                              f"{str(e)[:200]}); start it or give another --gallery URI / a local "
                              ".db file.") from None
        return client
    if not location.endswith(".db"):
        raise ConfigError(f"Gallery location {location!r}: give a Milvus Lite file ending in .db "
                          "(created if missing) or a server URI http://host:19530.")
    if os.path.isdir(location):
        raise DatasetError(f"Gallery location {location!r} is a folder, not a Milvus Lite .db "
                           "file.")
    os.makedirs(os.path.dirname(os.path.abspath(location)), exist_ok=True)
    # asked first (a failed Milvus Lite start recreates the lock file), and only when this
    # process does not hold it (closing the probe's descriptor would drop its POSIX lock)
    if os.path.realpath(location) not in _LITE_OPEN and _locked(location):
        raise DatasetError(f"The gallery file {location!r} is open in another process (Milvus "
                           "Lite allows one at a time): wait for it, or run a Milvus server and "
                           "give its URI.")
    try:
        with warnings.catch_warnings():  # milvus-lite imports the deprecated pkg_resources
            warnings.simplefilter("ignore")
            client = pymilvus.MilvusClient(location, timeout=float(timeout))
        client.list_collections()
        key = os.path.realpath(location)
        _LITE_OPEN[key] = _LITE_OPEN.get(key, 0) + 1
    except Exception as e:
        raise DatasetError(f"The gallery file {location!r} is not a readable Milvus Lite "
                           f"database (corrupt or another program's: {type(e).__name__}: "
                           f"{str(e)[:200]}); restore it from a copy, or add the features again "
                           "into a new file.") from None
    return client


def _describe(client, name: str) -> Dict[str, Any]:
    """The gallery metadata (JSON in the collection's description) of collection ``name``."""
    try:
        meta = json.loads(client.describe_collection(name).get("description") or "{}")
    except ValueError:
        meta = {}
    return meta if isinstance(meta, dict) else {}


def list_galleries(client: MilvusClient) -> List[str]:
    """The gallery collections at a location (the registry left out), sorted."""
    return sorted(c for c in client.list_collections() if c != REGISTRY)


def _count(client, name: str) -> int:
    res = client.query(name, filter="", output_fields=["count(*)"])
    return int(res[0]["count(*)"])


def _literal(value: Any) -> str:
    """A value as a Milvus expression literal (strings JSON-quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


class VectorGallery:
    """One model's gallery: a Milvus collection of features with per-image metadata.

    Args:
        location (str): a Milvus Lite file (``*.db``, created if missing) or a server / cluster
            URI ``http://host:19530``.
        dim (int): feature dimension D. metric (str): ``cosine`` or ``euclidean``.
        weights_sha256 (str): SHA-256 of the model's weights (names the collection and is
            checked on every open).
        collection (str or None): collection name (default :func:`collection_name`).
        create (bool): create the collection when missing (else a ``DatasetError`` listing the
            collections there).
        timeout (float): seconds to wait for a server.
        index (str): vector index of a new collection: ``flat`` (exact), ``ivf_flat``, ``hnsw``
            (an existing collection keeps its own). index_params (dict or None): its build
            parameters (default :data:`INDEX_DEFAULTS`).

    Raises:
        ConfigError: pymilvus missing; unreachable server; bad metric or index.
        DatasetError: the collection holds another model / dimension / metric (naming both);
            corrupt, locked or missing local database.
    """

    def __init__(self, location: str, dim: int, metric: str, weights_sha256: str = "",
                 collection: Optional[str] = None, create: bool = False,
                 timeout: float = TIMEOUT_S, index: str = "flat",
                 index_params: Optional[Dict[str, Any]] = None) -> None:
        if metric not in _METRICS:
            raise ConfigError(f"metric must be one of {tuple(_METRICS)}, got {metric!r}")
        if index not in INDEXES:
            raise ConfigError(f"--index must be one of {tuple(INDEXES)}, got {index!r}")
        if create and index == "hnsw" and not _is_url(location):
            raise ConfigError(f"--index hnsw needs a Milvus server (Milvus Lite, {location!r}, "
                              "builds flat and ivf_flat only): give an http://host:19530 "
                              "--gallery, or --index ivf_flat.")
        self.location, self.dim, self.metric = location, int(dim), metric
        self.weights_sha256 = weights_sha256 or ""
        self.name = collection or collection_name(self.weights_sha256)
        self.client = connect(location, timeout)
        try:
            if not self.client.has_collection(self.name):
                if not create:
                    raise DatasetError(
                        f"No collection {self.name!r} (model sha256 "
                        f"{self.weights_sha256[:16] or '?'}) in {location!r}: its collections "
                        f"are {list_galleries(self.client)}. Add this model's gallery first "
                        "(`... gallery add`) or query with the gallery's model.")
                self._create(index, dict(INDEX_DEFAULTS.get(index, {}), **(index_params or {})))
            self._check()
        except (ConfigError, DatasetError):
            self.close()
            raise
        self.index = self.info().get("index", "flat")
        self.client.load_collection(self.name)

    @classmethod
    def from_manifest(cls, location: str, manifest: Dict[str, Any],
                      collection: Optional[str] = None, create: bool = False,
                      timeout: float = TIMEOUT_S, index: str = "flat",
                      index_params: Optional[Dict[str, Any]] = None) -> "VectorGallery":
        """The gallery of the model that wrote an extraction ``manifest``
        (:func:`fastreid_plugins.tools.extract.read_manifest`)."""
        return cls(location, int(manifest["dim"]), str(manifest["metric"]).lower(),
                   str(manifest.get("weights_sha256") or ""), collection, create, timeout, index,
                   index_params)

    # ------------------------------------------------------------------ collection
    def _create(self, index: str, params: Dict[str, Any]) -> None:
        pymilvus = _pymilvus()
        meta = {"dim": self.dim, "metric": self.metric, "weights_sha256": self.weights_sha256,
                "index": index, "index_params": params, "created_by": "fastreid-plugins"}
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True,
                                                     description=json.dumps(meta))
        schema.add_field("id", pymilvus.DataType.VARCHAR, is_primary=True, max_length=36)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("path", pymilvus.DataType.VARCHAR, max_length=_MAX_PATH)
        ip = self.client.prepare_index_params()
        ip.add_index("vector", index_type=INDEXES[index], metric_type=_METRICS[self.metric],
                     params=params)
        # Strong consistency: a search sees every acknowledged upsert / delete
        try:
            self.client.create_collection(self.name, schema=schema, index_params=ip,
                                          consistency_level="Strong")
        except Exception as e:  # e.g. index parameters the server refuses: nothing left behind
            if self.client.has_collection(self.name):
                self.client.drop_collection(self.name)
            raise ConfigError(f"Milvus refused to create collection {self.name!r} with a "
                              f"{index} index {params} in {self.location!r}: "
                              f"{str(e)[:300]}") from None

    def info(self) -> Dict[str, Any]:
        """The collection's metadata (``dim``, ``metric``, ``weights_sha256``, ``index``)."""
        return _describe(self.client, self.name)

    def _check(self) -> None:
        meta = self.info()
        mine = {"dim": self.dim, "metric": self.metric, "weights_sha256": self.weights_sha256}
        for key, want in mine.items():
            have = meta.get(key)
            if key == "weights_sha256" and (not want or not have):
                continue  # a named collection of features without a recorded model
            if have != want:
                raise DatasetError(
                    f"Collection {self.name!r} in {self.location!r} holds features of {key} "
                    f"{have!r} (dim {meta.get('dim')}, {meta.get('metric')}, model sha256 "
                    f"{str(meta.get('weights_sha256'))[:16]}), these have {key} {want!r} (dim "
                    f"{self.dim}, {self.metric}, model sha256 {self.weights_sha256[:16]}): use "
                    "the gallery's model, or another --collection.")

    def close(self) -> None:
        """Release the client (and Milvus Lite's file: :func:`disconnect`)."""
        if self.client is not None:
            disconnect(self.client, self.location)
            self.client = None

    def __enter__(self) -> "VectorGallery":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return _count(self.client, self.name)

    # ------------------------------------------------------------------ fields registry
    def _registry(self):
        if not self.client.has_collection(REGISTRY):
            pymilvus = _pymilvus()
            schema = pymilvus.MilvusClient.create_schema(auto_id=False)
            schema.add_field("collection", pymilvus.DataType.VARCHAR, is_primary=True,
                             max_length=255)
            schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=2)  # Milvus needs one
            schema.add_field("fields", pymilvus.DataType.VARCHAR, max_length=65535)
            ip = self.client.prepare_index_params()
            ip.add_index("vector", index_type="FLAT", metric_type="L2")
            self.client.create_collection(REGISTRY, schema=schema, index_params=ip,
                                          consistency_level="Strong")
        self.client.load_collection(REGISTRY)
        return REGISTRY

    def fields(self) -> List[str]:
        """The metadata fields that images of this collection have (``path`` and those added
        with them), sorted."""
        if not self.client.has_collection(REGISTRY):
            return []
        self.client.load_collection(REGISTRY)
        rows = self.client.query(REGISTRY, filter=f"collection == {_literal(self.name)}",
                                 output_fields=["fields"])
        return sorted(json.loads(rows[0]["fields"])) if rows else []

    def _record_fields(self, keys: Iterable[str]) -> None:
        have = set(self.fields())
        new = set(keys) - have - {"id", "vector"}
        if new:
            self.client.upsert(self._registry(), [{"collection": self.name, "vector": [0.0, 0.0],
                                                   "fields": json.dumps(sorted(have | new))}])

    # ------------------------------------------------------------------ writing
    def add(self, features: np.ndarray, payloads: Sequence[Dict[str, Any]],
            batch: int = BATCH) -> int:
        """Upsert (N, D) ``features`` with their metadata (each with a ``path``: the primary key
        is :func:`point_id` of it), ``batch`` rows per acknowledged request.

        Returns:
            int: N.

        Raises:
            DatasetError: wrong dimension, lengths differ, a payload without ``path`` or with a
                reserved key (``id``, ``vector``).
        """
        import numpy as np

        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DatasetError(f"Features of shape {x.shape} cannot go into collection "
                               f"{self.name!r} of dimension {self.dim}.")
        if len(x) != len(payloads):
            raise DatasetError(f"{len(x)} features but {len(payloads)} payloads")
        keys = set()
        for p in payloads:
            if "path" not in p:
                raise DatasetError(f"payload {p!r} has no 'path'")
            if "id" in p or "vector" in p or len(str(p["path"])) > _MAX_PATH:
                raise DatasetError(f"payload of {str(p['path'])[:100]!r}: 'id' / 'vector' are "
                                   f"reserved and paths are at most {_MAX_PATH} characters")
            keys.update(p)
        self._record_fields(keys)  # before the rows: the registry may list more, never fewer
        for s in range(0, len(x), batch):
            rows = {}  # one row per primary key in a request: a repeated path, the last wins
            for v, p in zip(x[s:s + batch], payloads[s:s + batch]):
                pid = point_id(p["path"])
                rows.pop(pid, None)
                rows[pid] = dict(p, id=pid, vector=v.tolist())
            self.client.upsert(self.name, list(rows.values()))
        return len(x)

    def delete(self, paths: Iterable[str] = (), cameras: Sequence[str] = (),
               time_from: Optional[float] = None, time_to: Optional[float] = None,
               ids: Iterable[str] = ()) -> int:
        """Delete the images of ``paths`` and the rows ``ids`` (as search results give them),
        and those matching the camera / time filter (all of its conditions). Returns the number
        of images removed.

        Raises:
            ConfigError: nothing to select by (deleting everything is not done by accident).
        """
        before = len(self)
        ids = [point_id(p) for p in paths] + [_uuid(i) for i in ids]
        if ids:
            self.client.delete(self.name, ids=ids)
        flt = self.filter(cameras, time_from, time_to)
        if flt:
            self.client.delete(self.name, filter=flt)
        elif not ids:
            raise ConfigError("Nothing selected to delete: give ids / paths, --cameras or "
                              "--time-from / --time-to.")
        return before - len(self)

    # ------------------------------------------------------------------ reading
    def _require_field(self, key: str, fields: List[str]) -> None:
        if key not in fields:
            raise ConfigError(f"No image of collection {self.name!r} has the field {key!r} (its "
                              f"fields: {fields}); add the gallery with --metadata CSV giving a "
                              f"{key!r} column, or VeRi-style file names.")
        if not key.isidentifier():
            raise ConfigError(f"Field {key!r} cannot be filtered on (letters, digits, _ only)")

    def filter(self, cameras: Sequence[str] = (), time_from: Optional[float] = None,
               time_to: Optional[float] = None, where: Optional[Dict[str, Any]] = None) -> str:
        """The Milvus boolean expression of a camera list, a time range ``[time_from,
        time_to]`` and ``where`` equalities ("" when there is no condition).

        Raises:
            ConfigError: a filtered field that no stored image has (naming the fields there).
        """
        conds = []
        fields = self.fields() if (cameras or time_from is not None or time_to is not None
                                   or where) else []
        if cameras:
            self._require_field("camera", fields)
            conds.append(f"camera in [{', '.join(_literal(str(c)) for c in cameras)}]")
        for op, value in ((">=", time_from), ("<=", time_to)):
            if value is not None:
                self._require_field("time", fields)
                conds.append(f"time {op} {float(value)!r}")
        for key, value in (where or {}).items():
            self._require_field(key, fields)
            conds.append(f"{key} == {_literal(value)}")
        return " and ".join(f"({c})" for c in conds)

    def search_params(self, k: int, nprobe: Optional[int] = None,
                      ef: Optional[int] = None) -> Dict[str, Any]:
        """Milvus search parameters of the collection's index (IVF lists searched, HNSW beam:
        at least ``k``; defaults ``PLUGIN_DEFAULTS["TEST.RERANK.KNN_NPROBE / KNN_EF_SEARCH"]``,
        those of ``tools.search``)."""
        from fastreid_plugins.config import PLUGIN_DEFAULTS

        params: Dict[str, Any] = {}
        if self.index == "ivf_flat":
            params["nprobe"] = int(nprobe or PLUGIN_DEFAULTS["TEST.RERANK.KNN_NPROBE"])
        elif self.index == "hnsw":
            params["ef"] = max(int(ef or PLUGIN_DEFAULTS["TEST.RERANK.KNN_EF_SEARCH"]), int(k))
        return {"metric_type": _METRICS[self.metric], "params": params}

    def search(self, queries: np.ndarray, k: int, cameras: Sequence[str] = (),
               time_from: Optional[float] = None, time_to: Optional[float] = None,
               where: Optional[Dict[str, Any]] = None, threshold: Optional[float] = None,
               batch: int = 256, nprobe: Optional[int] = None, ef: Optional[int] = None,
               consistency: Optional[str] = None
               ) -> Tuple[np.ndarray, List[List[Dict[str, Any]]]]:
        """Top-``k`` of each query among the images passing the filter (executed by Milvus, so
        ``k`` matching images come back whenever ``k`` exist); exact with the ``flat`` index.

        Args:
            queries (np.ndarray): (Q, D) raw query features (as extracted).
            k (int): results per query (at most 16384, Milvus's limit). threshold (float or
                None): keep only results with ``distance <= threshold`` (the evaluator's).
            nprobe, ef: search parameters of an ``ivf_flat`` / ``hnsw`` collection.
            consistency (str or None): Milvus consistency level of this search (default: the
                collection's ``Strong``: every acknowledged write is seen; on a server that
                waits for the next time tick, about 0.2 s; ``Bounded`` / ``Eventually`` do not).

        Returns:
            tuple: ``(dist, hits)``: (Q, k) float32 distances ascending (``inf`` where a query
            has fewer results) and per query a list of metadata dicts (each with ``id``,
            ``distance``).

        Raises:
            DatasetError: wrong query dimension. ConfigError: see :meth:`filter`; ``k`` too
                large.
        """
        import numpy as np

        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise DatasetError(f"Queries of shape {q.shape} cannot search collection "
                               f"{self.name!r} of dimension {self.dim} (another model's "
                               "features?).")
        if not 1 <= k <= MAX_TOPK:
            raise ConfigError(f"top-K must be in [1, {MAX_TOPK}] (Milvus's limit), got {k}")
        flt = self.filter(cameras, time_from, time_to, where)
        params = self.search_params(k, nprobe, ef)
        dist = np.full((len(q), k), np.inf, np.float32)
        hits: List[List[Dict[str, Any]]] = []
        for s in range(0, len(q), batch):
            res = self.client.search(self.name, data=q[s:s + batch].tolist(), limit=k, filter=flt,
                                     search_params=params, output_fields=["*"],
                                     **({"consistency_level": consistency} if consistency
                                        else {}))
            for j, found in enumerate(res):
                row = []
                for h in found:
                    d = self._distance(h["distance"])
                    if threshold is not None and d > threshold:
                        break
                    meta = {key: v for key, v in h["entity"].items() if key != "vector"}
                    row.append(dict(meta, id=str(h["id"]), distance=d))
                dist[s + j, :len(row)] = [r["distance"] for r in row]
                hits.append(row)
        return dist, hits

    def exact_scan(self, queries: np.ndarray, k: int, cameras: Sequence[str] = (),
                   time_from: Optional[float] = None, time_to: Optional[float] = None,
                   where: Optional[Dict[str, Any]] = None, batch: int = 10000
                   ) -> Tuple[np.ndarray, List[List[str]]]:
        """Exact top-``k`` ids of ``queries`` by reading every (filtered) stored vector back in
        batches and ranking them with the project's exact k-NN
        (:func:`fastreid_plugins.evaluation.knn.exact_topk`, faiss flat, the evaluator's
        distance): the reference of the recall@K of an approximate index, independent of it.

        Returns:
            tuple: (Q, k) float32 distances ascending, per query the k ids.
        """
        import numpy as np

        from fastreid_plugins.evaluation.knn import exact_topk

        ids: List[str] = []
        it = self.client.query_iterator(self.name, batch_size=batch,
                                        filter=self.filter(cameras, time_from, time_to, where),
                                        output_fields=["vector"])

        def batches():  # (offset, vectors) of the stored rows, their ids kept in order
            while True:
                rows = it.next()
                if not rows:
                    return
                yield len(ids), np.asarray([r["vector"] for r in rows], np.float32)
                ids.extend(str(r["id"]) for r in rows)

        try:
            dist, index = exact_topk(queries, batches(), k, self.metric)
        finally:
            it.close()
        return dist, [[ids[i] for i in row] for row in index]

    def _distance(self, score: float) -> float:
        """Milvus's distance -> the evaluator's (``COSINE`` gives cos: 1 - cos; ``L2`` gives the
        squared L2 distance already, FastReID's euclidean)."""
        return 1.0 - float(score) if self.metric == "cosine" else float(score)

    def indexed_rows(self) -> Optional[int]:
        """Rows the vector index covers (Milvus builds it on sealed segments; rows of growing
        segments are searched by brute force, exactly), None when the engine does not say."""
        try:
            got = self.client.describe_index(self.name, "vector").get("indexed_rows")
        except Exception:  # engines without index progress
            return None
        return None if got is None else int(got)

    def stats(self) -> Dict[str, Any]:
        """Collection name, location, count, dim, metric, index (and the rows it covers),
        model SHA-256, fields."""
        return dict(self.info(), collection=self.name, location=self.location, count=len(self),
                    indexed_rows=self.indexed_rows(), fields=self.fields())


def _uuid(text: Any) -> str:
    try:
        return str(uuid.UUID(str(text)))
    except ValueError:
        raise ConfigError(f"Image id {text!r} is not a UUID (the 'id' of a search result); "
                          "to delete by image path use --paths.") from None
