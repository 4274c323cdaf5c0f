#!/usr/bin/env python
"""SVRN training / evaluation, FastReID-style.

Usage:
    python projects/SVRN/train_net.py --config-file configs/veri/svrn.yml
    python projects/SVRN/train_net.py --config-file configs/veri/svrn.yml --eval-only \
MODEL.WEIGHTS logs/veri/svrn/model_final.pth
"""
import os
import sys

# run from a source checkout
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from fastreid_plugins.engine import launch_main  # noqa: E402

if __name__ == "__main__":
    launch_main("svrn")  # fastreid_plugins.method.METHODS["svrn"]: add_config, trainer
