"""The vector gallery answers as the evaluator does, on the VeRi sample (issue 29, point 4):
the evaluator's own features of the demo models (seeded random weights), added to a Milvus Lite
collection, searched with top-K = the whole gallery: the ranking is FastReID's ``build_dist``
ranking (up to float32 ties) and the distances are its distances. And images end to end:
``gallery add --images`` / ``search --query IMAGES`` (extracted with the model) answer as
``tools.search`` does on the same images.
"""

import os

import numpy as np
import pytest

pytest.importorskip("pymilvus")

import torch  # noqa: E402
from fastreid.utils.compute_dist import build_dist  # noqa: E402

from fastreid_plugins.gallery import VectorGallery, image_payload  # noqa: E402
from fastreid_plugins.tools import build_tool_cfg  # noqa: E402
from fastreid_plugins.tools import gallery as gallery_tool  # noqa: E402
from fastreid_plugins.tools import search as search_tool  # noqa: E402
from tests.test_extract import evaluator_features, models  # noqa: E402,F401
from tests.test_search import assert_same_ranking  # noqa: E402


@pytest.mark.parametrize("name", ["bagtricks_r18", "mfgnet"])
def test_gallery_ranking_equals_evaluator(name, models, veri_root, datasets_root,  # noqa: F811
                                          tmp_path):
    cfg_path, weights, opts = models[name]
    cfg = build_tool_cfg(cfg_path, ["MODEL.WEIGHTS", weights, *opts])
    feats, paths, _, _, nq = evaluator_features(cfg, weights, veri_root, datasets_root)
    qf, gf, gp = feats[:nq], feats[nq:], paths[nq:]
    metric = cfg.TEST.METRIC
    ref = build_dist(torch.from_numpy(qf), torch.from_numpy(gf), metric)
    ref_rank = np.argsort(ref, axis=1, kind="stable")
    scale = 1.0 if metric == "cosine" else float((qf ** 2).sum(1).max() + (gf ** 2).sum(1).max())
    tie = 1e-6 if metric == "cosine" else 1e-5 * scale

    with VectorGallery(str(tmp_path / "g.db"), gf.shape[1], metric, "c" * 64, create=True) as vg:
        vg.add(gf, [image_payload(p) for p in gp], batch=10)
        dist, hits = vg.search(qf, len(gp))
    pos = {p: j for j, p in enumerate(gp)}
    order = np.array([[pos[h["path"]] for h in row] for row in hits])
    assert order.shape == ref_rank.shape
    assert_same_ranking(order, ref, ref_rank, tie)
    np.testing.assert_allclose(dist, np.take_along_axis(ref, order, 1), rtol=1e-5,
                               atol=tie * 10)
    # the payload of a real VeRi name
    assert all(h["camera"].startswith("c") and isinstance(h["time"], int) for h in hits[0])


@pytest.mark.slow
def test_gallery_add_and_search_images(models, veri_root, tmp_path):  # noqa: F811
    """``add --images`` extracts with tools.extract, ``search --query IMAGES`` with its
    FeatureExtractor: the results (paths, distances) are tools.search's on the same images."""
    cfg_path, weights, opts = models["bagtricks_r18"]
    model = ["MODEL.WEIGHTS", weights, *opts]
    gal_images = os.path.join(veri_root, "veri", "image_test")
    q_images = os.path.join(veri_root, "veri", "image_query")
    feats = str(tmp_path / "feats")
    db = str(tmp_path / "g.db")
    added = gallery_tool.main(["add", "--gallery", db, "--images", gal_images, "--config-file",
                               cfg_path, "--features-out", feats, *model])
    n = added["count"]
    assert n == len(os.listdir(gal_images)) and added["features"] == feats
    got = gallery_tool.main(["search", "--gallery", db, "--query", q_images, "--config-file",
                             cfg_path, "--topk", str(n), *model])
    ref = search_tool.main(["--gallery", feats, "--query", q_images, "--config-file", cfg_path,
                            "--topk", str(n), "--no-progress", "--output",
                            str(tmp_path / "r.csv"), *model])
    assert [r["query"] for r in got["results"]] == ref["query_paths"]
    for qi, row in enumerate(got["results"]):
        d_ref = dict(zip(ref["gallery_paths"][qi], ref["dist"][qi]))
        assert sorted(h["path"] for h in row["results"]) == sorted(d_ref)
        np.testing.assert_allclose([h["distance"] for h in row["results"]],
                                   [d_ref[h["path"]] for h in row["results"]], atol=1e-5)
        assert all(np.diff([h["distance"] for h in row["results"]]) >= 0)
    # re-adding the same images extracts nothing new and duplicates nothing
    again = gallery_tool.main(["add", "--gallery", db, "--images", gal_images, "--config-file",
                               cfg_path, "--features-out", feats, *model])
    assert again["count"] == n
