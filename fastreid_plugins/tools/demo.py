"""`make demo`: train MFG-Net on CPU on the dataset at FASTREID_DATASETS and evaluate it.

Usage::

    FASTREID_DATASETS=../shared/datasets .venv/bin/python -m fastreid_plugins.tools.demo \
        [--config-file configs/demo/mfgnet.yml] [--heldout-epochs 60 | --no-heldout] [opts ...]

``FASTREID_DATASETS`` defaults to FastReID's ``datasets`` (``make demo`` passes the real 57-image
VeRi-776 sample, ``../shared/datasets``). If ``$FASTREID_DATASETS/veri`` holds no VeRi-776-layout
dataset, a small synthetic one with disjoint train/test identities is generated into
``logs/demo_data`` (``python -m fastreid_plugins.data.toy``).

Prints Rank-1 / mAP / mINP, what they measure, and the ``--eval-only`` command that reproduces them.
On the 57-image sample the training images *are* the query and gallery images, so that number is
a fitting check, not generalisation; the demo then also runs one short held-out-camera run
(``projects/MFGNet/heldout_cams.py``, forward fold, seed 0: train on the gallery cameras, query
with cameras never seen in training), which is the generalisation figure.
"""

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from typing import Any, Dict, Optional, Sequence

__all__ = ["main", "interpreter"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _has_veri(root):
    return all(os.path.isdir(os.path.join(root, "veri", d))
               for d in ("image_train", "image_query", "image_test"))


def _jpgs(folder):
    return {f for f in os.listdir(folder) if f.endswith(".jpg")}


def _train_is_test(root):
    """True when the training images are exactly the query + gallery images (the 57-image
    sample): the demo's evaluation then measures fitting, not generalisation."""
    veri = os.path.join(root, "veri")
    train = _jpgs(os.path.join(veri, "image_train"))
    return bool(train) and train == (_jpgs(os.path.join(veri, "image_query"))
                                     | _jpgs(os.path.join(veri, "image_test")))


def interpreter() -> str:
    """The Python running this, as a command to print (``.venv/bin/python`` inside the repo)."""
    exe = sys.executable or "python"
    rel = os.path.relpath(exe)
    return rel if not rel.startswith("..") else exe


def _heldout(root, config_file, opts, epochs, seed=0):
    """One run of the held-out-camera protocol (forward fold); returns (untrained, trained)."""
    from fastreid_plugins.data import set_datasets_root
    from fastreid_plugins.tools import heldout_cams as hc

    # handlers, not loggers, to WARNING for this run (its training log would interleave with the
    # demo's console and log.txt): FastReID's DefaultTrainer adds a console handler when the
    # "fastreid" logger itself does not log INFO
    handlers = [h for n in ("fastreid", "fastreid_plugins") for h in logging.getLogger(n).handlers]
    levels = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix="demo_heldout_") as tmp, \
                warnings.catch_warnings():
            # FastReID's compute_dist calls the deprecated addmm_(beta, alpha, ...) signature
            warnings.filterwarnings("ignore", message=".*addmm_.*", category=UserWarning)
            set_datasets_root(hc.make_split(root, os.path.join(tmp, "data"), "forward"))
            return hc.run(config_file, opts, seed, epochs, os.path.join(tmp, "out"))
    finally:
        set_datasets_root(root)
        for h, level in zip(handlers, levels):
            h.setLevel(level)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-file", default=os.path.join(REPO, "configs", "demo", "mfgnet.yml"))
    ap.add_argument("--output-dir", default=os.path.join("logs", "demo", "mfgnet"))
    ap.add_argument("--heldout-epochs", type=int, default=60,
                    help="epochs (= iterations) of the held-out-camera run (sample only)")
    ap.add_argument("--no-heldout", action="store_true", help="skip the held-out-camera run")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="extra config overrides (KEY VALUE ...)")
    args = ap.parse_args(argv)

    env_root = os.environ.get("FASTREID_DATASETS", "datasets")
    root = os.path.abspath(env_root)
    generated = False
    if not _has_veri(root):
        root = os.path.abspath(os.path.join("logs", "demo_data"))
        generated = True
    os.environ["FASTREID_DATASETS"] = root  # before FastReID reads it

    from fastreid_plugins import engine
    from fastreid_plugins.data import set_datasets_root
    from fastreid_plugins.mfgnet import add_mfgnet_config

    if generated and not _has_veri(root):
        print(f"No VeRi-layout dataset under FASTREID_DATASETS={env_root!r}; generating a "
              f"synthetic one in {root}")
        from fastreid_plugins.data.toy import generate
        generate(root)
    set_datasets_root(root)
    fitting = not generated and _train_is_test(root)
    print(f"Dataset: {os.path.join(root, 'veri')}" + (" (synthetic)" if generated else ""))

    t0 = time.time()
    train_args = engine.default_argument_parser().parse_args(
        ["--config-file", args.config_file, "OUTPUT_DIR", args.output_dir, *args.opts])
    results = engine.main(train_args, add_mfgnet_config)
    minutes = (time.time() - t0) / 60
    weights = os.path.join(args.output_dir, "model_final.pth")
    print("\n=== MFG-Net demo ({:.1f} min on CPU) ===".format(minutes))
    print("Rank-1 {:.2f}  mAP {:.2f}  mINP {:.2f}".format(
        results["Rank-1"], results["mAP"], results["mINP"]))
    if fitting:
        print("What it measures: on this sample the training images are the query and gallery "
              "images\n(4 vehicles, 57 images), so this is a fitting check (the model learnt its "
              "training set),\nnot generalisation to unseen images.")
    elif generated:
        print("What it measures: the synthetic test identities are disjoint from the training "
              "ones:\ngeneralisation to unseen (synthetic) vehicles.")
    else:
        print("What it measures: the dataset's own query/gallery split after training on its "
              "training split.")
    py = interpreter()
    print("Reproduce the evaluation with:\n  FASTREID_DATASETS={} {} projects/MFGNet/train_net.py "
          "--config-file {} --eval-only MODEL.WEIGHTS {}".format(
              os.path.relpath(root), py, os.path.relpath(args.config_file), weights))

    if fitting and not args.no_heldout:
        t1 = time.time()
        print(f"\n=== Held-out cameras (projects/MFGNet/heldout_cams.py, forward fold, seed 0, "
              f"{args.heldout_epochs} epochs) ===\nTraining on the 27 gallery-camera images, "
              "querying with the 30 images of 4 cameras never seen in training ...", flush=True)
        untrained, trained = _heldout(root, args.config_file, args.opts, args.heldout_epochs)
        results["heldout"] = {k: trained[k] for k in ("Rank-1", "mAP", "mINP")}
        print("untrained mAP {:.1f} -> trained: Rank-1 {:.2f}  mAP {:.2f}  mINP {:.2f}  "
              "({:.1f} min)".format(untrained["mAP"], trained["Rank-1"], trained["mAP"],
                                    trained["mINP"], (time.time() - t1) / 60))
        print("What it measures: generalisation to unseen cameras (one run: single runs vary by "
              "10-20 mAP points;\nprojects/MFGNet/README.md reports 61.3 +- 2.1 mAP over 4 seeds "
              "x 2 folds). All seeds and folds:\n  FASTREID_DATASETS={} {} "
              "projects/MFGNet/heldout_cams.py --config-file {} --fold both --seeds 0-3".format(
                  os.path.relpath(root), py, os.path.relpath(args.config_file)))
    return results


if __name__ == "__main__":
    from fastreid_plugins.cli import run_cli
    sys.exit(0 if run_cli(main) else 1)
