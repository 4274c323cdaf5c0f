"""A gallery of re-id features in a vector database (Qdrant), for galleries that outgrow one
machine's memory or want filtered, incremental search.

:class:`VectorGallery` keeps one Qdrant collection per model (the collection name is
``reid_<first 16 hex digits of the weights' SHA-256>``; the dimension, metric and full SHA-256
are the collection's metadata) and stores, per image, its feature and a payload (``path``,
``name``, ``camera``, ``time``, ``pid`` and free fields: :mod:`fastreid_plugins.gallery.metadata`).
The same code runs on Qdrant's embedded local mode (a folder, the default, no server) and on a
Qdrant server or distributed cluster (a URL).

Distances are the evaluator's (``fastreid_plugins.evaluation``): ``cosine`` = ``1 - cos``
(Qdrant's ``Cosine`` score is ``cos``), ``euclidean`` = squared L2 (Qdrant's ``Euclid`` score is
the L2 distance, squared here). Searches are exact (``SearchParams(exact=True)``: brute force on a
server; the embedded mode is always brute force), so rankings equal
:func:`fastreid_plugins.tools.search.exact_search` (test ``test_gallery_equals_exact_search``).

Importing this package imports neither torch nor qdrant-client (optional extra: ``pip install -e
".[gallery]"``).
"""

from .metadata import image_payload, parse_veri_name, read_metadata_csv
from .store import COLLECTION_PREFIX, VectorGallery, collection_name, point_id

__all__ = ["VectorGallery", "collection_name", "point_id", "COLLECTION_PREFIX", "image_payload",
           "parse_veri_name", "read_metadata_csv"]
