"""MFG-Net learning check on generated data with *unseen* test identities (foundation issue, 8).

The toy generator (fastreid_plugins.data.toy) writes disjoint train / test identities, so mAP on
its query/gallery only rises if what the model learns generalises. Measured here (demo MFG-Net
config, R18, 64x64, 24 train / 12 unseen ids, 4 epochs = 72 iterations): see LEARN_MARGIN.
"""

import numpy as np

from fastreid_plugins.data import toy
from fastreid_plugins.engine import PluginTrainer
from fastreid_plugins.mfgnet import add_mfgnet_config

from helpers import evaluate, make_cfg, seed_everything, train

# Measured on data seed 0: untrained mAP 14.4, trained 51.6 (+37.2 points); summed loss
# 15.5 -> 11.9 (mean of the first vs last 10 iterations). The required gain is well below that.
LEARN_MARGIN = 15.0


def test_mfgnet_learns_features_that_generalise_to_unseen_identities(tmp_path, datasets_root):
    data = str(tmp_path / "data")
    toy.generate(data, train_ids=24, test_ids=12, cams=4, images_per_cam=3, seed=0, size=(64, 64))
    datasets_root(data)
    cfg = make_cfg("configs/demo/mfgnet.yml",
                   ["INPUT.SIZE_TRAIN", "[64,64]", "INPUT.SIZE_TEST", "[64,64]",
                    "SOLVER.MAX_EPOCH", "4", "OUTPUT_DIR", str(tmp_path / "out")],
                   add_fns=(add_mfgnet_config,))
    seed_everything(0)
    untrained = evaluate(cfg, PluginTrainer.build_model(cfg))["mAP"]
    seed_everything(0)
    _, metrics, losses = train(cfg)
    print(f"MFG-Net toy learning check: untrained mAP {untrained:.1f}, trained {metrics['mAP']:.1f}, "
          f"loss {np.mean(losses[:10]):.2f} -> {np.mean(losses[-10:]):.2f}")
    assert np.mean(losses[-10:]) < 0.9 * np.mean(losses[:10])
    assert metrics["mAP"] >= untrained + LEARN_MARGIN
