#!/usr/bin/env python
"""MBFN training / evaluation, FastReID-style.

Usage:
    python projects/MBFN/train_net.py --config-file configs/veri/mbfn.yml
    python projects/MBFN/train_net.py --config-file configs/veri/mbfn.yml --eval-only \
        MODEL.WEIGHTS logs/veri/mbfn/model_final.pth
"""
import os
import sys

# run from a source checkout
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from fastreid_plugins.engine import launch_main  # noqa: E402

if __name__ == "__main__":
    launch_main("mbfn")  # fastreid_plugins.method.METHODS["mbfn"]: add_config, trainer
