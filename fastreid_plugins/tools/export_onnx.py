"""``python -m fastreid_plugins.tools.export_onnx``: export a trained model to ONNX and check it
with onnxruntime (the command line of :mod:`fastreid_plugins.deploy.onnx`, which says what the
graph holds).

Usage::

    python -m fastreid_plugins.tools.export_onnx --config-file configs/demo/mfgnet.yml \\
        --output mfgnet.onnx MODEL.WEIGHTS logs/demo/mfgnet/model_final.pth

Nothing heavy is imported before the arguments are parsed (``--help`` answers at once).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Dict, Optional, Sequence

from fastreid_plugins.deploy import DEFAULT_ATOL, DEFAULT_RTOL

__all__ = ["main", "build_parser"]

logger = logging.getLogger("fastreid_plugins.export_onnx")



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastreid_plugins.tools.export_onnx",
                                description="Export a re-id model to ONNX and check it.")
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--output", default=os.path.join("logs", "onnx", "model.onnx"),
                   help="output .onnx file (default logs/onnx/model.onnx; OUTPUT.log gets the "
                        "config and model)")
    p.add_argument("--batch-size", type=int, default=2, help="batch of the example input")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL)
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides "
                   "(MODEL.WEIGHTS path/to/model.pth)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the tool; returns ``{"output", "meta_arch", "input_shape", "check"}``.

    Raises:
        FileNotFoundError: missing config file or ``MODEL.WEIGHTS``.
        ValueError: ``--batch-size`` < 1.
    """
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from fastreid_plugins.deploy.onnx import check_onnx, export_onnx
    from fastreid_plugins.tools import build_tool_cfg, load_tool_model

    cfg = build_tool_cfg(args.config_file, args.opts)
    model = load_tool_model(cfg, "export", log_file=os.path.splitext(args.output)[0] + ".log")
    h, w = cfg.INPUT.SIZE_TEST
    wrapper = export_onnx(model, args.output, h, w, args.batch_size, args.opset)
    result = {"output": args.output, "meta_arch": cfg.MODEL.META_ARCHITECTURE,
              "input_shape": ["batch", 3, h, w], "check": None}
    logger.info(f"Exported {cfg.MODEL.META_ARCHITECTURE} to {args.output} "
                f"(input images: (batch, 3, {h}, {w}) in [0, 255], opset {args.opset})")
    if not args.no_check:
        result["check"] = check_onnx(wrapper, args.output, h, w, args.batch_size + 1,
                                     args.atol, args.rtol)
        logger.info(f"onnxruntime vs PyTorch: max |diff| {result['check']['max_abs_diff']:.2e} "
                    f"(atol {args.atol}, rtol {args.rtol}), output {result['check']['shape']}")
    return result


if __name__ == "__main__":
    from fastreid_plugins.cli import run_cli
    run_cli(main, sys.argv[1:])
