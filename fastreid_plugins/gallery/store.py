"""One model's gallery as a Qdrant collection (:class:`VectorGallery`).

Importing this module imports neither numpy, torch nor qdrant-client: the client is imported
when a gallery is opened (a missing install is a :class:`~fastreid_plugins.errors.ConfigError`
naming ``pip install -e ".[gallery]"``).
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple

from fastreid_plugins.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    import numpy as np
    from qdrant_client import models as qdrant_models

__all__ = ["VectorGallery", "collection_name", "point_id", "COLLECTION_PREFIX", "BATCH",
           "TIMEOUT_S"]

#: collection names are ``COLLECTION_PREFIX + sha256[:16]``
COLLECTION_PREFIX = "reid_"
#: points per upsert (each one acknowledged, ``wait=True``, before the next)
BATCH = 256
#: seconds before a server that does not answer is reported unreachable
TIMEOUT_S = 5
#: namespace of the point ids: ``uuid5(_NAMESPACE, image path)``
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/fastreid-plugins/gallery")
_METRICS = ("cosine", "euclidean")


def point_id(path: str) -> str:
    """The point id of an image: ``uuid5`` of its path (so re-adding it overwrites, never
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


def _qdrant():
    try:
        import qdrant_client
        from qdrant_client import models
    except ImportError as e:
        raise ConfigError(f"The vector gallery needs qdrant-client ({e}): pip install -e "
                          "\".[gallery]\"") from None
    return qdrant_client, models


def _is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def _connect(location: str, timeout: float):
    qdrant_client, _ = _qdrant()
    if location == ":memory:":
        return qdrant_client.QdrantClient(location=":memory:")
    if _is_url(location):
        client = qdrant_client.QdrantClient(url=location, timeout=int(max(1, timeout)),
                                            check_compatibility=False)
        try:
            client.get_collections()
        except Exception as e:  # httpx / grpc / qdrant errors: all mean "cannot talk to it"
            raise ConfigError(f"The Qdrant server {location!r} is unreachable or refused the "
                              f"request within {timeout:g} s ({type(e).__name__}: {e}); start it "
                              "or give another --gallery URL / a local folder.") from None
        return client
    if os.path.exists(location) and not os.path.isdir(location):
        raise DatasetError(f"Gallery location {location!r} is a file, not a Qdrant folder: give "
                           "a folder (created if missing) or an http(s):// URL.")
    try:
        return qdrant_client.QdrantClient(path=location)
    except RuntimeError as e:
        if "already accessed" in str(e):
            raise DatasetError(f"The gallery folder {location!r} is open in another process (the "
                               "embedded mode allows one at a time): wait for it, or run a "
                               "Qdrant server and give its URL.") from None
        raise DatasetError(f"Cannot open the gallery folder {location!r}: {e}") from None
    except (sqlite3.DatabaseError, ValueError, EOFError, OSError, KeyError, TypeError,
            AttributeError, ImportError) as e:
        raise DatasetError(f"The gallery folder {location!r} is not a readable Qdrant database "
                           f"(corrupt or another program's: {type(e).__name__}: {e}); restore "
                           "it from a copy, or add the features again into a new folder.") from None


def _uuid(text: Any) -> str:
    try:
        return str(uuid.UUID(str(text)))
    except ValueError:
        raise ConfigError(f"Point id {text!r} is not a UUID (the 'id' of a search result); "
                          "to delete by image path use --paths.") from None


class VectorGallery:
    """One model's gallery: a Qdrant collection of features with per-image payloads.

    Args:
        location (str): a folder (Qdrant's embedded mode; created if missing), ``:memory:``,
            or a server / cluster URL ``http(s)://host:6333``.
        dim (int): feature dimension D. metric (str): ``cosine`` or ``euclidean``.
        weights_sha256 (str): SHA-256 of the model's weights (names the collection and is
            checked on every open).
        collection (str or None): collection name (default :func:`collection_name`).
        create (bool): create the collection when missing (else a ``DatasetError`` listing the
            collections there).
        timeout (float): seconds to wait for a server.

    Raises:
        ConfigError: qdrant-client missing; unreachable server; bad metric.
        DatasetError: the collection holds another model / dimension / metric (naming both);
            corrupt, locked or missing local database.
    """

    def __init__(self, location: str, dim: int, metric: str, weights_sha256: str = "",
                 collection: Optional[str] = None, create: bool = False,
                 timeout: float = TIMEOUT_S) -> None:
        if metric not in _METRICS:
            raise ConfigError(f"metric must be one of {_METRICS}, got {metric!r}")
        self.location, self.dim, self.metric = location, int(dim), metric
        self.weights_sha256 = weights_sha256 or ""
        self.name = collection or collection_name(self.weights_sha256)
        self._seen_fields: set = set()
        self.client = _connect(location, timeout)
        _, self._models = _qdrant()
        if not self.client.collection_exists(self.name):
            if not create:
                have = [c.name for c in self.client.get_collections().collections]
                raise DatasetError(f"No collection {self.name!r} (model sha256 "
                                   f"{self.weights_sha256[:16] or '?'}) in {location!r}: its "
                                   f"collections are {have}. Add this model's gallery first "
                                   "(`... gallery add`) or query with the gallery's model.")
            self._create()
        self._check()

    @classmethod
    def from_manifest(cls, location: str, manifest: Dict[str, Any],
                      collection: Optional[str] = None, create: bool = False,
                      timeout: float = TIMEOUT_S) -> "VectorGallery":
        """The gallery of the model that wrote an extraction ``manifest``
        (:func:`fastreid_plugins.tools.extract.read_manifest`)."""
        return cls(location, int(manifest["dim"]), str(manifest["metric"]).lower(),
                   str(manifest.get("weights_sha256") or ""), collection, create, timeout)

    # ------------------------------------------------------------------ collection
    def _create(self) -> None:
        m = self._models
        distance = m.Distance.COSINE if self.metric == "cosine" else m.Distance.EUCLID
        self.client.create_collection(
            self.name, vectors_config=m.VectorParams(size=self.dim, distance=distance),
            metadata={"dim": self.dim, "metric": self.metric,
                      "weights_sha256": self.weights_sha256, "created_by": "fastreid-plugins"})
        if not self._local:  # payload indexes: the server filters on them (local mode scans)
            self.client.create_payload_index(self.name, "camera", m.PayloadSchemaType.KEYWORD)
            self.client.create_payload_index(self.name, "time", m.PayloadSchemaType.FLOAT)

    @property
    def _local(self) -> bool:
        return not _is_url(self.location)

    def info(self) -> Dict[str, Any]:
        """The collection's metadata (``dim``, ``metric``, ``weights_sha256``)."""
        return dict(self.client.get_collection(self.name).config.metadata or {})

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
        """Release the client (and the embedded mode's folder lock)."""
        self.client.close()

    def __enter__(self) -> "VectorGallery":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.client.count(self.name, exact=True).count)

    # ------------------------------------------------------------------ writing
    def add(self, features: np.ndarray, payloads: Sequence[Dict[str, Any]],
            batch: int = BATCH) -> int:
        """Upsert (N, D) ``features`` with their payloads (each with a ``path``: the point id is
        :func:`point_id` of it), ``batch`` points per acknowledged request.

        Returns:
            int: N.

        Raises:
            DatasetError: wrong dimension, lengths differ, a payload without ``path``.
        """
        import numpy as np

        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DatasetError(f"Features of shape {x.shape} cannot go into collection "
                               f"{self.name!r} of dimension {self.dim}.")
        if len(x) != len(payloads):
            raise DatasetError(f"{len(x)} features but {len(payloads)} payloads")
        m = self._models
        for s in range(0, len(x), batch):
            points = []
            for v, p in zip(x[s:s + batch], payloads[s:s + batch]):
                if "path" not in p:
                    raise DatasetError(f"payload {p!r} has no 'path'")
                points.append(m.PointStruct(id=point_id(p["path"]), vector=v.tolist(), payload=p))
            self.client.upsert(self.name, points=points, wait=True)
        return len(x)

    def delete(self, paths: Iterable[str] = (), cameras: Sequence[str] = (),
               time_from: Optional[float] = None, time_to: Optional[float] = None,
               ids: Iterable[str] = ()) -> int:
        """Delete the images of ``paths`` and the points ``ids`` (as search results give them),
        and those matching the camera / time filter (all of its conditions). Returns the number
        of points removed.

        Raises:
            ConfigError: nothing to select by (deleting everything is not done by accident).
        """
        m = self._models
        before = len(self)
        ids = [point_id(p) for p in paths] + [_uuid(i) for i in ids]
        if ids:
            self.client.delete(self.name, points_selector=m.PointIdsList(points=ids), wait=True)
        flt = self.filter(cameras, time_from, time_to)
        if flt is not None:
            self.client.delete(self.name, points_selector=m.FilterSelector(filter=flt), wait=True)
        elif not ids:
            raise ConfigError("Nothing selected to delete: give ids / paths, --cameras or "
                              "--time-from / --time-to.")
        return before - len(self)

    # ------------------------------------------------------------------ reading
    def fields(self) -> List[str]:
        """Payload keys of one stored image (the gallery's fields), sorted."""
        pts, _ = self.client.scroll(self.name, limit=1, with_payload=True)
        return sorted(pts[0].payload or {}) if pts else []

    def _require_field(self, key: str) -> None:
        if key in self._seen_fields:
            return
        m = self._models
        has = m.Filter(must_not=[m.IsEmptyCondition(is_empty=m.PayloadField(key=key))])
        if self.client.count(self.name, count_filter=has, exact=True).count == 0:
            raise ConfigError(f"No image of collection {self.name!r} has the field {key!r} (its "
                              f"fields: {self.fields()}); add the gallery with --metadata CSV "
                              f"giving a {key!r} column, or VeRi-style file names.")
        self._seen_fields.add(key)  # checked once per opened gallery

    def filter(self, cameras: Sequence[str] = (), time_from: Optional[float] = None,
               time_to: Optional[float] = None, where: Optional[Dict[str, Any]] = None
               ) -> Optional[qdrant_models.Filter]:
        """The Qdrant payload filter of a camera list, a time range ``[time_from, time_to]``
        and ``where`` equalities (None when there is no condition).

        Raises:
            ConfigError: a filtered field that no stored image has (naming the fields there).
        """
        m = self._models
        must = []
        if cameras:
            self._require_field("camera")
            must.append(m.FieldCondition(key="camera", match=m.MatchAny(any=list(cameras))))
        if time_from is not None or time_to is not None:
            self._require_field("time")
            must.append(m.FieldCondition(key="time", range=m.Range(gte=time_from, lte=time_to)))
        for key, value in (where or {}).items():
            self._require_field(key)
            must.append(m.FieldCondition(key=key, match=m.MatchValue(value=value)))
        return m.Filter(must=must) if must else None

    def search(self, queries: np.ndarray, k: int, cameras: Sequence[str] = (),
               time_from: Optional[float] = None, time_to: Optional[float] = None,
               where: Optional[Dict[str, Any]] = None, threshold: Optional[float] = None,
               batch: int = 64) -> Tuple[np.ndarray, List[List[Dict[str, Any]]]]:
        """Exact top-``k`` of each query among the images passing the filter (executed by
        Qdrant, so ``k`` matching images come back whenever ``k`` exist).

        Args:
            queries (np.ndarray): (Q, D) raw query features (as extracted).
            k (int): results per query. threshold (float or None): keep only results with
                ``distance <= threshold`` (the evaluator's distance).

        Returns:
            tuple: ``(dist, hits)``: (Q, k) float32 distances ascending (``inf`` where a query
            has fewer results) and per query a list of payloads (each with ``id``,
            ``distance``).

        Raises:
            DatasetError: wrong query dimension. ConfigError: see :meth:`filter`.
        """
        import numpy as np

        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise DatasetError(f"Queries of shape {q.shape} cannot search collection "
                               f"{self.name!r} of dimension {self.dim} (another model's "
                               "features?).")
        m = self._models
        flt = self.filter(cameras, time_from, time_to, where)
        # exact brute force on a server; the embedded mode is always exact (and warns on params)
        params = None if self._local else m.SearchParams(exact=True)
        dist = np.full((len(q), k), np.inf, np.float32)
        hits: List[List[Dict[str, Any]]] = []
        for s in range(0, len(q), batch):
            reqs = [m.QueryRequest(query=v.tolist(), filter=flt, params=params, limit=k,
                                   with_payload=True) for v in q[s:s + batch]]
            for j, res in enumerate(self.client.query_batch_points(self.name, requests=reqs)):
                row = []
                for p in res.points:
                    d = self._distance(p.score)
                    if threshold is not None and d > threshold:
                        break
                    row.append(dict(p.payload or {}, id=str(p.id), distance=d))
                dist[s + j, :len(row)] = [h["distance"] for h in row]
                hits.append(row)
        return dist, hits

    def _distance(self, score: float) -> float:
        """Qdrant's score -> the evaluator's distance (cosine: 1 - cos; euclidean: L2^2)."""
        return 1.0 - float(score) if self.metric == "cosine" else float(score) ** 2

    def stats(self) -> Dict[str, Any]:
        """Collection name, location, count, dim, metric, model SHA-256, payload fields."""
        return dict(self.info(), collection=self.name, location=self.location, count=len(self),
                    fields=self.fields())
