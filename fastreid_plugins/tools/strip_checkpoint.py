"""A weights-only copy of a training checkpoint: ``python -m fastreid_plugins.tools.strip_checkpoint
IN OUT``.

FastReID's ``model_final.pth`` holds the model *and* the optimizer, scheduler, iteration and (here)
the generator / sampler states needed by ``--resume``; the optimizer state of Adam / AMSGrad alone
is twice the model's size. ``OUT`` keeps what evaluation and the tools need:

* ``model``: the state dict (tensors as saved; ``module.`` prefixes of a DDP save removed), and
  ``epoch`` when the checkpoint has one (``--resume`` of a finished run then says so);
* ``config``: the run's config YAML text, ``config.yaml`` next to ``IN`` (what ``default_setup``
  wrote), or ``--config-file``'s text; absent when neither exists (a warning says so);
* ``stripped_from``: ``IN``'s file name, and the keys that were dropped.

``OUT`` is written atomically (a ``.partial`` file renamed), never over ``IN``, and loads strictly
with ``--eval-only MODEL.WEIGHTS OUT`` (:func:`fastreid_plugins.engine.load_model_weights`) and
with ``MODEL.WEIGHTS OUT`` in every tool. It cannot be used with ``--resume`` (no optimizer).
"""

import argparse
import os
import sys
from typing import Any, Dict, Optional, Sequence

__all__ = ["strip_checkpoint", "main"]

#: keys of a FastReID / fastreid-plugins checkpoint that only ``--resume`` needs (the same as
#: :data:`fastreid_plugins.checkpoint.TRAINING_KEYS`, here without importing torch)
TRAINING_KEYS = ("optimizer", "scheduler", "lr_sched", "iteration", "trainer_state",
                 "grad_scaler")


def strip_checkpoint(src: str, dst: str, config_file: Optional[str] = None) -> Dict[str, Any]:
    """Write ``dst``: ``src``'s model weights (and the run's config text), nothing else.

    Args:
        src (str): a checkpoint (``{"model": ..., "optimizer": ..., ...}`` or a bare state dict).
        dst (str): output path; must differ from ``src``.
        config_file (str | None): config whose text to store; default ``config.yaml`` beside
            ``src`` when present.

    Returns:
        dict: ``{"in_bytes", "out_bytes", "dropped", "tensors", "config"}`` (config: its path
        or ``None``).

    Raises:
        FileNotFoundError: ``src`` (or ``config_file``) does not exist.
        fastreid_plugins.errors.CorruptCheckpointError: ``src`` is not a torch checkpoint.
        fastreid_plugins.errors.WeightsMismatchError: ``src`` holds no model state dict.
        fastreid_plugins.errors.ConfigError: ``dst`` is ``src``.
    """
    import torch

    from fastreid_plugins import engine  # noqa: F401  (compat: FastReID's pickled types)
    from fastreid_plugins.checkpoint import atomic_torch_save, weights_only
    from fastreid_plugins.engine import load_checkpoint_file
    from fastreid_plugins.errors import (
        ConfigError,
        CorruptCheckpointError,
        UserError,
        WeightsMismatchError,
    )

    if not os.path.isfile(src):
        raise FileNotFoundError(f"Checkpoint to strip not found: {src!r}")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ConfigError(f"OUT is IN ({dst!r}): write the weights-only copy to another file.")
    try:
        ckpt = load_checkpoint_file(src)
    except UserError:
        raise
    except Exception as e:  # torch's unpickler fails in many ways on a non-checkpoint file
        if isinstance(e, (MemoryError, FileNotFoundError)):
            raise
        raise CorruptCheckpointError(
            f"{src!r} is not a torch checkpoint (torch.load: {type(e).__name__}: {e}); pass a "
            "model_final.pth / model_XXXXXXX.pth written by training.") from None
    if not isinstance(ckpt, dict):
        raise WeightsMismatchError(f"{src!r} holds a {type(ckpt).__name__}, not a checkpoint "
                                   "dict: nothing to strip.")
    state = ckpt.get("model", ckpt)
    if not isinstance(state, dict) or not state or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsMismatchError(f"{src!r} holds no model state dict (keys: "
                                   f"{sorted(ckpt)[:10]}); is it a FastReID checkpoint?")
    if config_file is None:
        beside = os.path.join(os.path.dirname(os.path.abspath(src)), "config.yaml")
        config_file = beside if os.path.isfile(beside) else None
    elif not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file not found: {config_file!r}")
    text = None
    if config_file:
        with open(config_file) as f:
            text = f.read()
    out = weights_only(ckpt, src, text)
    state, dropped = out["model"], out["stripped_from"]["dropped"]
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    atomic_torch_save(out, dst)
    return {"in_bytes": os.path.getsize(src), "out_bytes": os.path.getsize(dst),
            "dropped": dropped, "tensors": len(state), "config": config_file}


def build_parser():
    p = argparse.ArgumentParser(prog="python -m fastreid_plugins.tools.strip_checkpoint",
                                description="Weights-only copy of a checkpoint (no optimizer, "
                                            "scheduler or trainer state).")
    p.add_argument("input", metavar="IN", help="checkpoint, e.g. logs/demo/svrn/model_final.pth")
    p.add_argument("output", metavar="OUT", help="weights-only file to write")
    p.add_argument("--config-file", default=None, metavar="FILE",
                   help="config whose text to store in OUT (default: config.yaml beside IN)")
    return p


def _mb(n):
    return f"{n / 1e6:.1f} MB"


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    info = strip_checkpoint(args.input, args.output, args.config_file)
    print(f"{args.output}: {info['tensors']} model tensors, {_mb(info['out_bytes'])} "
          f"({args.input}: {_mb(info['in_bytes'])}); dropped: "
          f"{', '.join(info['dropped']) or 'nothing'}; config: {info['config'] or 'none found'}")
    if not info["config"]:
        print("warning: no config stored (no config.yaml beside IN and no --config-file): "
              "evaluate it with the training run's --config-file.", file=sys.stderr)
    return info


if __name__ == "__main__":
    from fastreid_plugins.cli import run_cli
    run_cli(main, sys.argv[1:])
