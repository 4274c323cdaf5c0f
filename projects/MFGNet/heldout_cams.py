#!/usr/bin/env python
"""Held-out-camera check on the real VeRi-776 sample (the code, which documents the folds and the
output: ``fastreid_plugins.tools.heldout_cams``).

Usage (from the repository root)::

    FASTREID_DATASETS=../shared/datasets python projects/MFGNet/heldout_cams.py \
        --config-file configs/demo/mfgnet.yml --fold both --seeds 0-5 --epochs 60 [KEY VALUE ...]
"""
import os
import sys

# run from a source checkout
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from fastreid_plugins.cli import run_cli  # noqa: E402
from fastreid_plugins.tools.heldout_cams import main  # noqa: E402

if __name__ == "__main__":
    run_cli(main)
