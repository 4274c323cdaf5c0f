"""A gallery of re-id features in a vector database (Milvus), for galleries that outgrow one
machine's memory or want filtered, incremental search.

:class:`VectorGallery` keeps one Milvus collection per model (the collection name is
``reid_<first 16 hex digits of the weights' SHA-256>``; the dimension, metric, index and full
SHA-256 are the collection's metadata, JSON in its description) and stores, per image, its feature,
``path`` and metadata (``name``, ``camera``, ``time``, ``pid`` and free fields, Milvus's dynamic
field: :mod:`fastreid_plugins.gallery.metadata`). The same code runs on Milvus Lite (a local
``.db`` file, the default, no server) and on a Milvus standalone server or distributed cluster (an
``http://host:19530`` URI).

Distances are the evaluator's (``fastreid_plugins.evaluation``): ``cosine`` = ``1 - cos``
(Milvus's ``COSINE`` distance is ``cos``), ``euclidean`` = squared L2 (Milvus's ``L2`` distance is
already the squared L2 distance). With the default ``flat`` index searches are exact, so rankings
equal :func:`fastreid_plugins.tools.search.exact_search` (test
``test_gallery_equals_exact_search``); ``ivf_flat`` / ``hnsw`` are approximate, their recall@K
measured against :meth:`VectorGallery.exact_scan`.

Importing this package imports neither torch nor pymilvus (optional extra: ``pip install -e
".[gallery]"``).
"""

from .metadata import image_payload, parse_veri_name, read_metadata_csv
from .store import COLLECTION_PREFIX, INDEXES, VectorGallery, collection_name, point_id

__all__ = ["VectorGallery", "collection_name", "point_id", "COLLECTION_PREFIX", "INDEXES",
           "image_payload", "parse_veri_name", "read_metadata_csv"]
