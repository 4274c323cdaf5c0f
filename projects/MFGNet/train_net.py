#!/usr/bin/env python
"""MFG-Net training / evaluation, FastReID-style.

Usage:
    python projects/MFGNet/train_net.py --config-file configs/veri/mfgnet.yml
    python projects/MFGNet/train_net.py --config-file configs/veri/mfgnet.yml --eval-only \
        MODEL.WEIGHTS logs/veri/mfgnet/model_final.pth
"""
import os
import sys

# run from a source checkout
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from fastreid_plugins.engine import launch_main  # noqa: E402

if __name__ == "__main__":
    launch_main("mfgnet")  # fastreid_plugins.method.METHODS["mfgnet"]: add_config, trainer
