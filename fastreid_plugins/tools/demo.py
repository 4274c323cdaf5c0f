"""`make demo`: train MFG-Net on CPU on the dataset at FASTREID_DATASETS and evaluate it.

Usage::

    FASTREID_DATASETS=../shared/datasets .venv/bin/python -m fastreid_plugins.tools.demo \
        [--config-file configs/demo/mfgnet.yml] [--heldout-epochs 60 | --no-heldout] [opts ...]

Where the data comes from (the demo never trains on anything else without saying so):

* ``FASTREID_DATASETS`` given: ``$FASTREID_DATASETS/veri`` must hold a VeRi-776-layout dataset
  (``image_train``, ``image_query``, ``image_test``); if it does not, the demo stops with an
  ``Error:`` naming the path and what was expected (exit 2). ``make demo`` passes
  ``FASTREID_DATASETS=../shared/datasets`` only when that folder exists.
* not given: ``../shared/datasets`` (beside the repository, the real 57-image VeRi-776 sample) or
  ``./datasets`` when either holds VeRi; else a small synthetic dataset with disjoint train/test
  identities is generated (``python -m fastreid_plugins.data.toy``) into
  ``logs/demo_synthetic/data`` and the run writes to ``logs/demo_synthetic/mfgnet``, never to the
  real demo's ``logs/demo/mfgnet``; the first and the last line of the output say "SYNTHETIC".

Prints Rank-1 / mAP / mINP, what they measure, and the ``--eval-only`` command that reproduces them.
On the 57-image sample the training images *are* the query and gallery images, so that number is
a fitting check, not generalisation; the demo then also runs one short held-out-camera run
(``projects/MFGNet/heldout_cams.py``, forward fold, seed 0: train on the gallery cameras, query
with cameras never seen in training), which is the generalisation figure.
"""

import argparse
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple

__all__ = ["main", "interpreter"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELDOUT_SCRIPT = os.path.join(REPO, "projects", "MFGNet", "heldout_cams.py")
#: the real demo's output folder, and the synthetic fallback's own folders
REAL_OUTPUT = os.path.join("logs", "demo", "mfgnet")
SYNTHETIC_DIR = os.path.join("logs", "demo_synthetic")
SYNTHETIC_MARK = "SYNTHETIC_DATA"  # a file in the output folder of a synthetic run
VERI_DIRS = ("image_train", "image_query", "image_test")


def _has_veri(root):
    return all(os.path.isdir(os.path.join(root, "veri", d)) for d in VERI_DIRS)


def find_dataset(env: Optional[str]) -> Tuple[Optional[str], str]:
    """``(root, how)``: the datasets root the demo trains on, or ``(None, why)`` for the synthetic
    fallback.

    Args:
        env (str | None): ``$FASTREID_DATASETS`` (``None`` or ``""``: not given).

    Raises:
        DatasetNotFoundError: ``env`` is given but ``env/veri`` has no VeRi-776 layout; the
            message names the path, the three folders expected and what to do.
    """
    if env:
        root = os.path.abspath(env)
        if _has_veri(root):
            return root, f"FASTREID_DATASETS={env}"
        from fastreid_plugins.errors import DatasetNotFoundError

        veri = os.path.join(root, "veri")
        missing = [d for d in VERI_DIRS if not os.path.isdir(os.path.join(veri, d))]
        listing = ", ".join(os.path.join(veri, d) for d in missing)
        what = ("does not exist" if not os.path.isdir(root) else
                f"has no VeRi-776 layout: missing {listing}")
        raise DatasetNotFoundError(
            f"FASTREID_DATASETS={env!r} ({root}) {what}. The demo expects "
            f"$FASTREID_DATASETS/veri/{{{','.join(VERI_DIRS)}}} (VeRi-776 layout, e.g. the "
            "57-image sample ../shared/datasets). Fix the path, or unset FASTREID_DATASETS to "
            f"train on a generated synthetic dataset (written to {SYNTHETIC_DIR}/).")
    for cand in (os.path.join(os.path.dirname(REPO), "shared", "datasets"), "datasets"):
        if _has_veri(cand):
            return os.path.abspath(cand), f"found {os.path.relpath(cand)} (FASTREID_DATASETS unset)"
    return None, "FASTREID_DATASETS is not set and neither ../shared/datasets nor ./datasets " \
                 "holds a VeRi-776-layout dataset"


def _check_output_dir(out: str, synthetic: bool) -> None:
    """A synthetic run never writes over a real-data run's checkpoint.

    Raises:
        ConfigError: ``synthetic`` and ``out`` holds a ``model_final.pth`` of a real-data run.
    """
    if not synthetic:
        return
    if (os.path.isfile(os.path.join(out, "model_final.pth"))
            and not os.path.isfile(os.path.join(out, SYNTHETIC_MARK))):
        from fastreid_plugins.errors import ConfigError

        raise ConfigError(
            f"--output-dir {out!r} holds a checkpoint trained on real data (model_final.pth, no "
            f"{SYNTHETIC_MARK} marker): a run on synthetic data would replace it. Choose another "
            f"--output-dir (default for synthetic data: {os.path.join(SYNTHETIC_DIR, 'mfgnet')}).")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, SYNTHETIC_MARK), "w") as f:
        f.write("This folder holds a demo run on generated synthetic data, not VeRi-776.\n")


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


class _HeldoutProgress(logging.Filter):
    """Console filter during the held-out run: its training log would interleave with the demo's,
    so only warnings pass, and FastReID's per-epoch metric line (``epoch/iter: E/I ...``) becomes
    one short progress line every ``every`` epochs and at the last."""

    _LINE = re.compile(r"(?:eta: (\S+)\s+)?epoch/iter: (\d+)/(\d+)")

    def __init__(self, epochs: int, every: int = 10) -> None:
        super().__init__()
        self.epochs, self.every, self.t0 = epochs, every, time.time()
        self.shown = 0

    def filter(self, record):
        if record.levelno >= logging.WARNING:
            return True
        m = self._LINE.search(record.getMessage()) if isinstance(record.msg, str) else None
        if m is None:
            return False
        epoch = int(m.group(2)) + 1
        # FastReID writes the last epoch's line twice (last iteration, then epoch end)
        if (epoch % self.every and epoch != self.epochs) or epoch == self.shown:
            return False
        self.shown = epoch
        record.msg = "held-out run: epoch {}/{} ({:.0f} s{})".format(
            epoch, self.epochs, time.time() - self.t0, f", eta {m.group(1)}" if m.group(1) else "")
        record.args = ()
        return True


def _is_console(handler):
    path = getattr(getattr(handler, "stream", None), "name", None)
    return not (isinstance(path, str) and os.path.isfile(path))


def _heldout(root, config_file, opts, epochs, seed=0):
    """One run of the held-out-camera protocol (forward fold); returns (untrained, trained)."""
    from fastreid_plugins.data import set_datasets_root
    from fastreid_plugins.tools import heldout_cams as hc

    # handlers, not loggers (FastReID's DefaultTrainer adds a console handler when the "fastreid"
    # logger itself does not log INFO): the log file gets warnings only, the console warnings and
    # a progress line (_HeldoutProgress)
    handlers = [h for n in ("fastreid", "fastreid_plugins") for h in logging.getLogger(n).handlers]
    levels = [h.level for h in handlers]
    progress = _HeldoutProgress(epochs)
    for h in handlers:
        if _is_console(h):
            h.addFilter(progress)
        else:
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
            h.removeFilter(progress)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the demo (see the module docstring); returns the metrics (``"heldout"``: the
    held-out-camera run's)."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-file", default=os.path.join(REPO, "configs", "demo", "mfgnet.yml"))
    ap.add_argument("--output-dir", default=None,
                    help=f"default {REAL_OUTPUT} ({os.path.join(SYNTHETIC_DIR, 'mfgnet')} on "
                         "synthetic data)")
    ap.add_argument("--heldout-epochs", type=int, default=60,
                    help="epochs of the held-out-camera run (sample only; one iteration each)")
    ap.add_argument("--no-heldout", action="store_true", help="skip the held-out-camera run")
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted demo training from its last checkpoint")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="extra config overrides (KEY VALUE ...)")
    args = ap.parse_args(argv)

    root, how = find_dataset(os.environ.get("FASTREID_DATASETS"))
    generated = root is None
    if generated:
        root = os.path.abspath(os.path.join(SYNTHETIC_DIR, "data"))
        print(f"SYNTHETIC DATA: {how}; training on a generated synthetic dataset in {root}, "
              f"output under {SYNTHETIC_DIR}/ (the real demo's {REAL_OUTPUT} is not touched). "
              "Set FASTREID_DATASETS to a VeRi-776 folder for the real demo.", flush=True)
    output_dir = args.output_dir or (os.path.join(SYNTHETIC_DIR, "mfgnet") if generated
                                     else REAL_OUTPUT)
    _check_output_dir(output_dir, generated)
    os.environ["FASTREID_DATASETS"] = root  # before FastReID reads it

    from fastreid_plugins import engine
    from fastreid_plugins.data import set_datasets_root
    from fastreid_plugins.mfgnet import add_mfgnet_config

    if generated and not _has_veri(root):
        from fastreid_plugins.data.toy import generate
        generate(root)
    set_datasets_root(root)
    fitting = not generated and _train_is_test(root)
    print(f"Dataset: {os.path.join(root, 'veri')}"
          + (" (SYNTHETIC)" if generated else f" ({how})"), flush=True)

    t0 = time.time()
    train_args = engine.default_argument_parser().parse_args(
        ["--config-file", args.config_file] + (["--resume"] if args.resume else [])
        + ["OUTPUT_DIR", output_dir, *args.opts])
    results = engine.main(train_args, add_mfgnet_config)
    minutes = (time.time() - t0) / 60
    weights = os.path.join(output_dir, "model_final.pth")
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
    print("Reproduce the evaluation with:\n  FASTREID_DATASETS={} {} {} "
          "--config-file {} --eval-only MODEL.WEIGHTS {}".format(
              os.path.relpath(root), py,
              os.path.relpath(os.path.join(REPO, "projects", "MFGNet", "train_net.py")),
              os.path.relpath(args.config_file), weights))

    if fitting and not args.no_heldout:
        t1 = time.time()
        print(f"\n=== Held-out cameras (projects/MFGNet/heldout_cams.py, forward fold, seed 0, "
              f"{args.heldout_epochs} epochs of one iteration) ===\nTraining on the 27 "
              "gallery-camera images, querying with the 30 images of 4 cameras never seen in "
              "training ...", flush=True)
        try:
            untrained, trained = _heldout(root, args.config_file, args.opts,
                                          args.heldout_epochs)
        except KeyboardInterrupt:
            from fastreid_plugins.checkpoint import TrainingInterrupted

            raise TrainingInterrupted(
                f"Interrupted during the held-out run (not resumable; the demo's model is "
                f"finished: {weights}). Run it alone with {os.path.relpath(HELDOUT_SCRIPT)} "
                "(command above), or skip it: --no-heldout", None) from None
        results["heldout"] = {k: trained[k] for k in ("Rank-1", "mAP", "mINP")}
        print("untrained mAP {:.1f} -> trained: Rank-1 {:.2f}  mAP {:.2f}  mINP {:.2f}  "
              "({:.1f} min)".format(untrained["mAP"], trained["Rank-1"], trained["mAP"],
                                    trained["mINP"], (time.time() - t1) / 60))
        print("What it measures: generalisation to unseen cameras (one run: single runs vary by "
              "10-20 mAP points;\nprojects/MFGNet/README.md reports 61.3 +- 2.1 mAP over 4 seeds "
              "x 2 folds). All seeds and folds:\n  FASTREID_DATASETS={} {} "
              "{} --config-file {} --fold both --seeds 0-3".format(
                  os.path.relpath(root), py, os.path.relpath(HELDOUT_SCRIPT),
                  os.path.relpath(args.config_file)))
    if generated:
        print(f"SYNTHETIC DATA: these numbers are for generated images ({root}), not VeRi-776; "
              f"weights in {weights}.")
    return results


if __name__ == "__main__":
    from fastreid_plugins.cli import run_cli
    sys.exit(0 if run_cli(main) else 1)
