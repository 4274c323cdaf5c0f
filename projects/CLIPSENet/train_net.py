#!/usr/bin/env python
"""CLIP-SENet training / evaluation, FastReID-style.

Usage:
    python projects/CLIPSENet/train_net.py --config-file configs/veri/clip_senet.yml
    python projects/CLIPSENet/train_net.py --config-file logs/veri/clip_senet/config.yaml \
        --eval-only MODEL.WEIGHTS logs/veri/clip_senet/model_final.pth \
        MODEL.CLIPSENET.SEM.PRETRAIN False
"""
import os
import sys

# run from a source checkout
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from fastreid_plugins.engine import launch_main  # noqa: E402

if __name__ == "__main__":
    launch_main("clip_senet")  # fastreid_plugins.method.METHODS["clip_senet"]: add_config, trainer
