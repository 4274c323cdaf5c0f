"""`make demo`: train MFG-Net on CPU on the dataset at FASTREID_DATASETS and evaluate it.

Usage: python -m fastreid_plugins.tools.demo [--config-file configs/demo/mfgnet.yml] [opts ...]

If ``$FASTREID_DATASETS/veri`` holds a VeRi-776-layout dataset (e.g. the real 57-image sample in
``../shared/datasets``) it is used; otherwise a small synthetic vehicle dataset with disjoint
train/test identities is generated into ``logs/demo_data`` (``python -m fastreid_plugins.data.toy``).
Prints Rank-1 / mAP / mINP and the ``--eval-only`` command that reproduces them.
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _has_veri(root):
    return all(os.path.isdir(os.path.join(root, "veri", d))
               for d in ("image_train", "image_query", "image_test"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-file", default=os.path.join(REPO, "configs", "demo", "mfgnet.yml"))
    ap.add_argument("--output-dir", default=os.path.join("logs", "demo", "mfgnet"))
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="extra config overrides (KEY VALUE ...)")
    args = ap.parse_args(argv)

    root = os.path.abspath(os.environ.get("FASTREID_DATASETS", "datasets"))
    generated = False
    if not _has_veri(root):
        root = os.path.abspath(os.path.join("logs", "demo_data"))
        generated = True
    os.environ["FASTREID_DATASETS"] = root  # before FastReID reads it

    import fastreid_plugins  # noqa: F401
    from fastreid_plugins import engine
    from fastreid_plugins.mfgnet import add_mfgnet_config

    if generated and not _has_veri(root):
        from fastreid_plugins.data.toy import generate
        print(f"No VeRi-layout dataset under FASTREID_DATASETS; generating a synthetic one in {root}")
        generate(root)
    engine.set_datasets_root(root)
    print(f"Dataset: {os.path.join(root, 'veri')}" + (" (synthetic)" if generated else ""))

    t0 = time.time()
    train_args = engine.default_argument_parser().parse_args(
        ["--config-file", args.config_file, "OUTPUT_DIR", args.output_dir, *args.opts])
    results = engine.main(train_args, add_mfgnet_config)
    minutes = (time.time() - t0) / 60
    weights = os.path.join(args.output_dir, "model_final.pth")
    print("\n=== MFG-Net demo ({:.1f} min on CPU) ===".format(minutes))
    print("Rank-1 {:.2f}  mAP {:.2f}  mINP {:.2f}".format(results["Rank-1"], results["mAP"], results["mINP"]))
    print("Reproduce the evaluation with:\n  FASTREID_DATASETS={} python projects/MFGNet/train_net.py "
          "--config-file {} --eval-only MODEL.WEIGHTS {}".format(
              root, os.path.relpath(args.config_file), weights))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
