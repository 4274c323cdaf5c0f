"""Features of your own images with a trained model: Python API and sharded, resumable CLI.

Python::

    from fastreid_plugins.tools.extract import FeatureExtractor
    ext = FeatureExtractor("configs/demo/mfgnet.yml", weights="logs/demo/mfgnet/model_final.pth")
    feats = ext.extract(["a.jpg", "b.jpg"])          # (2, D) float32 numpy array

Command line (``MODEL.WEIGHTS`` is an override, as for the other tools)::

    python -m fastreid_plugins.tools.extract --config-file configs/demo/mfgnet.yml \\
        --images DIR|LIST.txt --out feats/ [--batch-size 64] [--num-workers 4] \\
        [--shard-size 10000] [--dtype float32|float16] [--amp] [--channels-last] \\
        [--on-error raise|skip] \\
        [--backend torch | --backend onnx MODEL.onnx | --backend openvino MODEL.xml]
        MODEL.WEIGHTS model_final.pth

The features are the evaluator's: every image is read as FastReID's test loader reads it
(``fastreid.data.data_utils.read_image``: PIL, EXIF orientation applied, RGB), transformed by
``build_transforms(cfg, is_train=False)`` (resize to ``INPUT.SIZE_TEST``, bicubic; float pixels in
[0, 255]) and passed through the model's eval forward (the method's test descriptor; with
``TEST.FLIP.ENABLED`` the mean with the horizontally flipped image, as FastReID's
``inference_on_dataset``). No normalisation is applied to the stored features: the search applies
the config's ``TEST.METRIC`` (recorded in the manifest) as the evaluator does. Models whose eval
forward uses side information (CLIP-SENet's camera / viewpoint embeddings) get none here (their
"unknown" entries), since your images have no camera labels.

Output folder (``--out``)::

    manifest.json           dim, dtype, metric, flip, config (file + full dump), weights (path,
                            SHA-256), image source, shard size, shards, counts, complete
    shard_00000.npy         (n_0, D) features (float32 or float16) of shard 0
    shard_00000.txt         the n_0 image paths, one a line, in the rows' order
    shard_00000.json        the shard's record (count, skipped images, hash of its source paths)
    ...

The image list (a folder walked recursively in sorted order, or a text file with one path a line)
is streamed: shard ``k`` covers source images ``k * shard_size`` to ``(k + 1) * shard_size - 1``;
only one shard's paths and features are held (memory ``shard_size * D * 4`` bytes, plus one
batch), whatever the number of images. Every file is written to a temporary name and moved into
place with ``os.replace``; a shard's ``.json`` is written last. A run that is killed and started
again with the same arguments skips the shards whose ``.json`` exists (their source paths must
hash to the recorded value, else the list changed and the run stops with an error) and writes the
rest; the result equals an uninterrupted run.

A user error (missing images, a config or weights that do not fit, an unreadable image with
``--on-error raise``) ends in one ``Error:`` block and exit status 2
(:func:`fastreid_plugins.cli.run_cli`; ``--debug`` for the traceback). Importing this module
imports no torch, numpy or FastReID code (they are imported where they are used), so ``--help``
and argument errors are fast.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
import time
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from fastreid_plugins.errors import (
    ConfigError,
    DatasetError,
    DatasetNotFoundError,
    ImageReadError,
    UserError,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["FeatureExtractor", "engine_key", "iter_image_paths", "count_images", "extract_to_dir",
           "save_feature_shards", "read_manifest", "IMAGE_EXTENSIONS", "MANIFEST", "SHARD_SIZE",
           "main", "build_parser"]

logger = logging.getLogger("fastreid_plugins.tools.extract")

#: file name endings (lower case) taken from a folder given as ``--images``
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
#: source images per shard file (``--shard-size``)
SHARD_SIZE = 10000
#: seconds a DataLoader worker may take for one batch before the run fails (never hangs)
WORKER_TIMEOUT = 600
#: test hook: SIGKILL this process after this many shards were written (kill-and-resume tests)
_KILL_ENV = "FASTREID_PLUGINS_EXTRACT_KILL_AFTER_SHARDS"


# ----------------------------------------------------------------------------- image sources
def _is_image_name(name):
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def iter_image_paths(source: Union[str, os.PathLike]) -> Iterator[str]:
    """Stream the image paths of ``source`` (O(1) memory in the number of images, except one
    folder's entry names at a time).

    Args:
        source (str): a folder (walked recursively; sub-folders and files in sorted order; files
            ending in :data:`IMAGE_EXTENSIONS`, hidden files skipped), or a text file listing one
            image path a line (blank lines and lines starting with ``#`` skipped; relative paths
            are relative to the list file's folder).

    Yields:
        str: image paths, in a deterministic order.

    Raises:
        DatasetNotFoundError: ``source`` does not exist.
    """
    source = os.fspath(source)
    if os.path.isdir(source):
        for root, dirs, files in os.walk(source):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if _is_image_name(name):
                    yield os.path.join(root, name)
    elif os.path.isfile(source):
        base = os.path.dirname(os.path.abspath(source))
        with open(source, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    yield line if os.path.isabs(line) else os.path.join(base, line)
    else:
        raise DatasetNotFoundError(f"--images not found: {source!r} is neither a folder of images "
                                   "nor a text file listing image paths.")


def count_images(source: Union[str, os.PathLike]) -> int:
    """Number of paths :func:`iter_image_paths` yields (one streaming pass).

    Raises:
        DatasetNotFoundError: ``source`` does not exist.
        DatasetError: ``source`` holds / lists no image.
    """
    n = sum(1 for _ in iter_image_paths(source))
    if n == 0:
        what = ("a folder with no image file (" + ", ".join(IMAGE_EXTENSIONS) + ")"
                if os.path.isdir(source) else "a list file with no image path")
        raise DatasetError(f"--images {source!r} is {what}: nothing to extract.")
    return n


def _read(item, what):
    """PIL RGB image of a path (FastReID's ``read_image``), PIL image or uint8 array / tensor."""
    import numpy as np
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

        from fastreid.data.data_utils import read_image

        path = os.fspath(item)
        if not os.path.isfile(path):
            raise DatasetNotFoundError(f"Image file not found: {path!r}")
        try:  # format "RGB": = the test loader's read for RGB / grey images, also RGBA / palette
            return read_image(path, "RGB")
        except ImageReadError:
            raise
        except Exception as e:
            raise ImageReadError(f"Cannot read image {path!r}: {type(e).__name__}: {e}. The file "
                                 "is corrupt, truncated or not an image.") from e
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    arr = item
    if hasattr(arr, "detach"):  # torch tensor (3, H, W) uint8
        if arr.dim() != 3 or arr.shape[0] not in (1, 3):
            raise TypeError(f"{what}: a tensor image must be (3, H, W) uint8 RGB, got "
                            f"{tuple(arr.shape)} {arr.dtype}")
        arr = arr.detach().cpu().permute(1, 2, 0).numpy()
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise TypeError(f"{what}: images must be paths, PIL images or uint8 arrays / tensors "
                        f"(H, W, 3) / (3, H, W), got {type(item).__name__} {arr.dtype} "
                        f"{arr.shape}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")


class _ImageDataset:
    """Map-style dataset: item ``i`` -> ``(i, (3, H, W) float tensor or None, error or None)``.

    Read errors are returned, not raised, so that they reach the main process the same way with
    0 or more DataLoader workers, naming the file.
    """

    def __init__(self, items, transform):
        self.items, self.transform = items, transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        item = self.items[i]
        what = repr(os.fspath(item)) if isinstance(item, (str, os.PathLike)) else f"image {i}"
        try:
            return i, self.transform(_read(item, what)), None
        except UserError as e:
            return i, None, (type(e).__name__, str(e))
        except TypeError:
            raise
        except Exception as e:  # a transform failing on a decoded image
            return i, None, ("ImageReadError", f"Cannot use image {what}: {type(e).__name__}: {e}")


def _collate(batch):
    import torch

    ok = [(i, t) for i, t, err in batch if err is None]
    errors = [(i, err) for i, t, err in batch if err is not None]
    images = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], images, errors


_ERROR_TYPES = {"ImageReadError": ImageReadError, "DatasetNotFoundError": DatasetNotFoundError}


# ----------------------------------------------------------------------------- the extractor
class FeatureExtractor:
    """Re-id features of images with a trained model of any registered meta-architecture.

    The model is FastReID's ``Baseline`` / ``MGN`` or a plugin's (``MFGNet``, ``MBFN``, ``SVRN``,
    ``CLIPSENet``), built from ``config_file`` with every plugin's keys
    (:func:`fastreid_plugins.tools.build_tool_cfg`), ``MODEL.WEIGHTS`` loaded strictly
    (:func:`fastreid_plugins.tools.load_tool_model`). It runs on ``MODEL.DEVICE`` (CUDA when
    available, else the CPU).

    Args:
        config_file (str): the model's ``.yml`` config.
        weights (str or None): checkpoint; overrides ``MODEL.WEIGHTS`` of the config / ``opts``.
        opts (list[str]): ``KEY VALUE`` config overrides.
        batch_size (int or None): images per forward (default ``TEST.IMS_PER_BATCH``).
        num_workers (int): DataLoader worker processes reading images (0 = in this process).
        amp (bool): autocast the forward (float16 on CUDA, bfloat16 on CPU); features are
            returned as float32 and are then not bit-equal to the evaluator's.
        channels_last (bool): run the torch model in the ``channels_last`` memory format
            (NHWC convolutions: 1.27x FastReID's ``DefaultPredictor`` for SVRN's ResNet-50 on a
            2-core AVX-512 CPU, docs/deploy.md); float32 still, equal to the evaluator's
            features up to float rounding, not bit for bit (so off by default).
        backend (str): ``"torch"``, ``"onnx"`` (an ONNX file from
            :mod:`fastreid_plugins.tools.export` / ``export_onnx``, run by onnxruntime) or
            ``"openvino"`` (an OpenVINO ``.xml`` or ``.onnx`` engine from
            :mod:`fastreid_plugins.tools.export`, run by OpenVINO on the CPU) or ``"tensorrt"``
            (a TensorRT ``.engine``, on a CUDA GPU; unverified here); for an engine the
            config still gives the transforms, ``TEST.FLIP`` and the metric; no checkpoint
            needed. The manifest records the engine's file, format, precision, SHA-256 and its
            accuracy gate's numbers (from the ``.gate.json`` beside it).
        onnx_model (str or None): the engine file of ``backend="onnx"``.
        engine (str or None): the engine file of ``backend="onnx"`` / ``"openvino"`` /
            ``"tensorrt"``.
        log_file (str or None): where the full config and the model print go (appended); the
            console gets one line (``extract`` passes ``OUT/log.txt``).

    Attributes:
        cfg (CfgNode): the frozen config. dim (int): feature dimension D (after the first batch).
        skipped (list[tuple[int, str, str]]): ``(index, image, message)`` of the images the last
            :meth:`extract` call skipped (``on_error="skip"``).

    Raises:
        FileNotFoundError: the config file is missing.
        ConfigError: no ``MODEL.WEIGHTS`` (torch backend), a missing weights / engine file, an
            unknown backend, ``batch_size < 1``, ``channels_last`` with an engine backend, or an
            engine whose input size is not ``INPUT.SIZE_TEST``.
        MissingExtraError: the engine's runtime (onnxruntime / openvino) is not installed.
        WeightsMismatchError: the checkpoint does not fit the model.
    """

    def __init__(self, config_file: Union[str, os.PathLike],
                 weights: Optional[Union[str, os.PathLike]] = None,
                 opts: Optional[Sequence[str]] = (), batch_size: Optional[int] = None,
                 num_workers: int = 0, amp: bool = False, backend: str = "torch",
                 onnx_model: Optional[Union[str, os.PathLike]] = None,
                 engine: Optional[Union[str, os.PathLike]] = None,
                 log_file: Optional[Union[str, os.PathLike]] = None,
                 channels_last: bool = False) -> None:
        import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

        from fastreid.data.transforms import build_transforms

        from fastreid_plugins.tools import build_tool_cfg, load_tool_model

        opts = list(opts or [])
        if weights:
            opts += ["MODEL.WEIGHTS", os.fspath(weights)]
        self.cfg = cfg = build_tool_cfg(config_file, opts)
        self.config_file = os.fspath(config_file)
        self.batch_size = int(batch_size or cfg.TEST.IMS_PER_BATCH)
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
        self.num_workers, self.amp, self.backend = int(num_workers), bool(amp), backend
        self.channels_last = bool(channels_last)
        if self.channels_last and backend != "torch":
            raise ConfigError(f"channels_last applies to the torch backend; the {backend} engine "
                              "chooses its own memory layout")
        self.flip = bool(cfg.TEST.FLIP.ENABLED)
        self.transform = build_transforms(cfg, is_train=False)
        self.dim, self.skipped = None, []
        self.weights = cfg.MODEL.WEIGHTS
        if backend == "torch":
            if not self.weights:
                raise ConfigError("No model: pass `MODEL.WEIGHTS /path/to/model_final.pth` "
                                  "(or weights=...).")
            if not os.path.isfile(self.weights):
                raise ConfigError(f"MODEL.WEIGHTS not found: {self.weights!r}")
            self.model = load_tool_model(cfg, "extract features with", log_file=log_file)
            self.device = self.model.device
            if self.channels_last:
                import torch

                self.model.to(memory_format=torch.channels_last)
        elif backend in ("onnx", "openvino", "tensorrt"):
            self._init_engine(engine or onnx_model)
        else:
            raise ConfigError("backend must be 'torch', 'onnx', 'openvino' or 'tensorrt' (a GPU "
                              f"host), got {backend!r}")

    def _init_engine(self, path):
        import torch

        from fastreid_plugins.deploy.runtime import EngineRunner

        if not path or not os.path.isfile(path):
            raise ConfigError(f"{self.backend} engine not found: {path!r} (export one with "
                              "`python -m fastreid_plugins.tools.export`)")
        self.weights = os.fspath(path)
        self.runner = EngineRunner(self.weights, self.backend, threads=torch.get_num_threads())
        shape = self.runner.input_shape
        want = list(self.cfg.INPUT.SIZE_TEST)
        if len(shape) != 4 or [shape[2], shape[3]] != want:
            raise ConfigError(f"{self.backend} engine {path!r} takes images of shape {shape}, the "
                              f"config's INPUT.SIZE_TEST is {want}: export it with this config.")
        self.device = torch.device("cpu")

    # -- forward -----------------------------------------------------------------------------
    def _model_forward(self, images):
        import torch

        if self.backend in ("onnx", "openvino", "tensorrt"):
            return torch.from_numpy(self.runner(images.numpy()))
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, enabled=self.amp,
                            dtype=torch.float16 if self.device.type == "cuda" else torch.bfloat16):
            out = self.model({"images": images})
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features of a batch as the evaluator computes them.

        Args:
            images (torch.Tensor): (B, 3, H, W) float RGB in [0, 255] (the test transforms'
                output), ``H, W = INPUT.SIZE_TEST``.

        Returns:
            torch.Tensor: (B, D) float32 features on the CPU.
        """
        import torch

        with torch.no_grad():
            out = self._model_forward(images)
            if self.flip:  # FastReID's inference_on_dataset with TEST.FLIP.ENABLED
                out = (out + self._model_forward(images.flip(dims=[3]))) / 2
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise TypeError(f"The model's eval forward must return a (B, D) tensor, got "
                            f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))}")
        return out.to("cpu", torch.float32)

    def loader(self, items: Sequence[Any]) -> torch.utils.data.DataLoader:
        """A torch DataLoader over ``items`` yielding ``(indices, images or None, errors)``."""
        import torch

        workers = self.num_workers
        if workers and not all(isinstance(x, (str, os.PathLike)) for x in items):
            workers = 0  # in-memory images: no point pickling them to workers
        workers = min(workers, max(1, len(items) // self.batch_size))
        # a worker stuck for WORKER_TIMEOUT s on one batch (e.g. a hung network file system)
        # raises in the main process instead of hanging the run
        return torch.utils.data.DataLoader(
            _ImageDataset(items, self.transform), batch_size=self.batch_size, shuffle=False,
            num_workers=workers, collate_fn=_collate, pin_memory=self.device.type == "cuda",
            timeout=WORKER_TIMEOUT if workers else 0)

    def iter_batches(self, items: Sequence[Any], on_error: str = "raise"
                     ) -> Iterator[Tuple[List[int], np.ndarray]]:
        """Yield ``(indices, (b, D) float32 features)`` per batch of ``items``, in order.

        Failed images are raised (``on_error="raise"``) or left out and recorded in
        :attr:`skipped` (``"skip"``, one warning each).
        """
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.skipped = []
        for idx, images, errors in self.loader(items):
            for i, (kind, msg) in errors:
                if on_error == "raise":
                    raise _ERROR_TYPES.get(kind, ImageReadError)(msg)
                name = items[i] if isinstance(items[i], (str, os.PathLike)) else f"image {i}"
                logger.warning(f"skipped {msg}")
                self.skipped.append((i, os.fspath(name) if not isinstance(name, str) else name,
                                     msg))
            if images is None:
                continue
            feats = self.forward(images).numpy()
            self.dim = feats.shape[1]
            yield idx, feats

    def extract(self, images: Iterable[Any], on_error: str = "raise", return_index: bool = False
                ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        """Features of ``images``, batched.

        Args:
            images (list): image paths (str / PathLike), PIL images, uint8 torch tensors
                (3, H, W) or uint8 numpy arrays (H, W, 3), RGB; any size (resized to
                ``INPUT.SIZE_TEST``).
            on_error (str): ``"raise"``: a missing / unreadable image raises; ``"skip"``: it is
                left out, logged, and listed in :attr:`skipped`.
            return_index (bool): also return the indices (into ``images``) of the rows.

        Returns:
            np.ndarray: (N, D) float32 features (N = len(images) minus skipped ones), and with
            ``return_index`` a (N,) int64 index array.

        Raises:
            ImageReadError: an image cannot be decoded (the message names the file).
            DatasetNotFoundError: an image path does not exist.
            TypeError: an item is of another type.
        """
        import numpy as np

        images = list(images)
        idx, feats = [], []
        for i, f in self.iter_batches(images, on_error):
            idx.extend(i)
            feats.append(f)
        dim = self.dim or 0
        out = np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)
        return (out, np.asarray(idx, dtype=np.int64)) if return_index else out

    __call__ = extract

    def describe(self) -> Dict[str, Any]:
        """What the manifest records about the model (JSON-serialisable dict); ``engine``:
        :meth:`engine_record`."""
        from fastreid_plugins.deploy.runtime import sha256

        return {"engine": self.engine_record(),
                "config_file": os.path.abspath(self.config_file), "config": self.cfg.dump(),
                "meta_architecture": self.cfg.MODEL.META_ARCHITECTURE,
                "backend": self.backend, "weights": os.path.abspath(self.weights),
                "weights_sha256": sha256(self.weights), "metric": self.cfg.TEST.METRIC,
                "flip": self.flip, "amp": self.amp, "channels_last": self.channels_last,
                "input_size": list(self.cfg.INPUT.SIZE_TEST),
                "rerank": {"k1": int(self.cfg.TEST.RERANK.K1), "k2": int(self.cfg.TEST.RERANK.K2),
                           "lambda": float(self.cfg.TEST.RERANK.LAMBDA)}}


    def engine_record(self) -> Dict[str, Any]:
        """What computed the features: ``format`` (torch / onnx / openvino), ``precision``
        (fp32, bf16-autocast, or the engine's fp32 / fp16 / bf16 / int8), and for an engine its
        ``file``, ``sha256`` (an OpenVINO ``.xml`` with its ``.bin``) and ``gate`` (the accuracy
        gate's numbers from its report, or None when it has none)."""
        if self.backend == "torch":
            return {"format": "torch", "precision": "bf16-autocast" if self.amp else "fp32"}
        from fastreid_plugins.deploy.runtime import read_report, sha256

        report = read_report(self.weights)
        gate = None if report is None else {
            k: report.get(k) for k in ("passed", "forced", "dataset", "cosine", "pytorch",
                                       "engine", "difference", "thresholds", "split")}
        return {"format": self.backend, "precision": self.runner.precision,
                "file": os.path.abspath(self.weights), "sha256": sha256(self.weights),
                "gate": gate}


def engine_key(manifest: Dict[str, Any]) -> Tuple[str, str]:
    """``(format, precision)`` of the features of an extraction manifest (older manifests
    without ``engine``: from ``backend`` / ``amp``)."""
    eng = manifest.get("engine") or {}
    fmt = eng.get("format") or manifest.get("backend") or "torch"
    precision = eng.get("precision") or (
        "bf16-autocast" if manifest.get("amp") and fmt == "torch" else "fp32")
    return str(fmt), str(precision)


# ----------------------------------------------------------------------------- sharded output
def _atomic_write(path, write):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_json(path, obj):
    data = json.dumps(obj, indent=1).encode("utf-8")
    _atomic_write(path, lambda f: f.write(data))


def _write_npy(path, array):
    import numpy as np

    _atomic_write(path, lambda f: np.save(f, array))


def _write_lines(path, lines):
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    _atomic_write(path, lambda f: f.write(data))


def _paths_hash(paths):
    h = hashlib.sha1()
    for p in paths:
        h.update(p.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def read_manifest(out_dir: str) -> Dict[str, Any]:
    """The manifest of an extraction folder.

    Raises:
        DatasetNotFoundError: ``out_dir`` or its ``manifest.json`` does not exist.
        DatasetError: the manifest is not valid JSON or not an extraction manifest.
    """
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.isdir(out_dir):
        raise DatasetNotFoundError(f"Feature folder not found: {out_dir!r}")
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"{path!r} not found: {out_dir!r} is not the --out folder of "
                                   "`python -m fastreid_plugins.tools.extract`.")
    try:
        with open(path, encoding="utf-8") as f:
            man = json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetError(f"Cannot read the manifest {path!r}: {e}") from e
    missing = [k for k in ("format_version", "dim", "dtype", "metric", "shards") if k not in man]
    if missing:
        raise DatasetError(f"{path!r} is not an extraction manifest (missing keys {missing}).")
    return man


def _shard_name(k):
    return f"shard_{k:05d}"


def _chunks(iterable, size):
    chunk = []
    for x in iterable:
        chunk.append(x)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _extract_shard(extractor, paths, k, base, digest, shard_size, np_dtype, on_error, dim, bar):
    """Extract one shard's images and write its ``.npy``, ``.txt`` and (last) ``.json``; returns
    the shard's record."""
    import numpy as np

    rows, kept, counted = [], [], 0
    for idx, feats in extractor.iter_batches(paths, on_error):
        rows.append(feats.astype(np_dtype))
        kept.extend(paths[i] for i in idx)
        done = len(kept) + len(extractor.skipped)
        bar.update(done - counted)
        counted = done
    bar.update(len(paths) - counted)
    skipped = [{"image": p, "error": m} for _, p, m in extractor.skipped]
    feats = np.concatenate(rows) if rows else np.zeros((0, extractor.dim or dim or 0), np_dtype)
    del rows
    name = os.path.basename(base)
    _write_npy(base + ".npy", feats)
    _write_lines(base + ".txt", kept)
    record = {"shard": k, "features": name + ".npy", "paths": name + ".txt",
              "count": len(kept), "dim": int(feats.shape[1]),
              "source_start": k * shard_size, "source_count": len(paths),
              "source_sha1": digest, "skipped": skipped}
    _write_json(base + ".json", record)
    return record


def extract_to_dir(extractor: FeatureExtractor, images: str, out_dir: str,
                   shard_size: int = SHARD_SIZE,
                   dtype: str = "float32", on_error: str = "raise",
                   progress: bool = True) -> Dict[str, Any]:
    """Extract every image of ``images`` into feature shards in ``out_dir`` (resumable).

    Args:
        extractor (FeatureExtractor): the model.
        images (str): a folder or a list file (see :func:`iter_image_paths`).
        out_dir (str): output folder (created); see the module docstring for its files.
        shard_size (int): source images per shard (memory: ``shard_size * D * 4`` bytes).
        dtype (str): ``"float32"`` or ``"float16"`` (stored features).
        on_error (str): ``"raise"`` or ``"skip"`` (see :meth:`FeatureExtractor.extract`).
        progress (bool): tqdm bar (images/s).

    Returns:
        dict: the final manifest.

    Raises:
        DatasetNotFoundError / DatasetError: missing or empty ``images``.
        DatasetError: ``out_dir`` holds an extraction with other settings (model, weights, image
            source, shard size, dtype) or whose image list has changed.
        ImageReadError: an unreadable image with ``on_error="raise"`` (names the file).
    """
    import numpy as np
    from tqdm import tqdm

    if dtype not in ("float32", "float16"):
        raise ConfigError(f"--dtype must be float32 or float16, got {dtype!r}")
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be >= 1, got {shard_size}")
    total = count_images(images)
    os.makedirs(out_dir, exist_ok=True)
    settings = dict(extractor.describe(), images=os.path.abspath(images), shard_size=shard_size,
                    dtype=dtype, on_error=on_error)
    mpath = os.path.join(out_dir, MANIFEST)
    if os.path.isfile(mpath):
        old = read_manifest(out_dir)
        diff = [k for k in ("config", "weights_sha256", "backend", "images", "shard_size",
                            "dtype", "flip", "amp") if old.get(k) != settings[k]]
        if engine_key(old) != engine_key(settings):
            diff.append("engine")
        if diff:
            raise DatasetError(f"{out_dir!r} already holds an extraction made with other "
                               f"settings ({', '.join(diff)} differ); use another --out folder "
                               "or delete it.")
    num_shards = -(-total // shard_size)
    manifest = dict(settings, format_version=FORMAT_VERSION, num_source_images=total,
                    num_shards=num_shards, dim=None, shards=[], num_images=0, num_skipped=0,
                    complete=False)
    kill_after = int(os.environ.get(_KILL_ENV, "0") or 0)
    written = 0
    bar = tqdm(total=total, unit="img", desc="extract", dynamic_ncols=True, disable=not progress,
               smoothing=0.1)
    t0 = time.time()
    np_dtype = np.dtype(dtype)
    for k, paths in enumerate(_chunks(iter_image_paths(images), shard_size)):
        base = os.path.join(out_dir, _shard_name(k))
        digest = _paths_hash(paths)
        record = _finished_shard(base, digest, out_dir)
        if record is None:
            record = _extract_shard(extractor, paths, k, base, digest, shard_size, np_dtype,
                                    on_error, manifest["dim"], bar)
            written += 1
        else:
            bar.update(len(paths))
        if record["count"]:
            if manifest["dim"] not in (None, record["dim"]):
                raise DatasetError(f"{base}.npy has dimension {record['dim']}, earlier shards "
                                   f"{manifest['dim']}: delete {out_dir!r} and extract again.")
            manifest["dim"] = record["dim"]
        manifest["shards"].append({"features": record["features"], "paths": record["paths"],
                                   "count": record["count"]})
        manifest["num_images"] += record["count"]
        manifest["num_skipped"] += len(record["skipped"])
        _write_json(mpath, manifest)
        if kill_after and written >= kill_after:
            bar.close()
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    if manifest["num_images"] == 0:
        raise DatasetError(f"No image of {images!r} could be read ({manifest['num_skipped']} "
                           f"skipped; see {out_dir}/shard_*.json).")
    manifest["complete"] = True
    _write_json(mpath, manifest)
    dt = time.time() - t0
    logger.info(f"{manifest['num_images']} images ({manifest['num_skipped']} skipped) -> "
                f"{num_shards} shards in {out_dir}, D={manifest['dim']}, {dtype}; "
                f"{written} shards written in {dt:.1f} s")
    return manifest


def save_feature_shards(out_dir: str, shards: Iterable[Tuple[np.ndarray, Sequence[Any]]],
                        metric: str = "cosine", dtype: str = "float32",
                        **info: Any) -> Dict[str, Any]:
    """Write features computed elsewhere as an extraction folder that the search reads.

    Args:
        out_dir (str): output folder (created).
        shards (iterable): ``(features, paths)`` pairs: (n, D) arrays and n image paths / ids.
        metric (str): ``cosine`` or ``euclidean`` (the evaluator's ``TEST.METRIC``).
        dtype (str): stored ``float32`` or ``float16``.
        **info: more manifest entries (e.g. ``weights``).

    Returns:
        dict: the manifest.

    Raises:
        ConfigError: bad ``metric`` / ``dtype``; DatasetError: shards of different dimension,
            features and paths of different lengths.
    """
    import numpy as np

    if metric not in ("cosine", "euclidean"):
        raise ConfigError(f"metric must be cosine or euclidean, got {metric!r}")
    if dtype not in ("float32", "float16"):
        raise ConfigError(f"dtype must be float32 or float16, got {dtype!r}")
    os.makedirs(out_dir, exist_ok=True)
    man = dict(info, format_version=FORMAT_VERSION, metric=metric, dtype=dtype, dim=None,
               shards=[], num_images=0, num_skipped=0, complete=False)
    for k, (feats, paths) in enumerate(shards):
        feats = np.asarray(feats).astype(dtype, copy=False)
        paths = [os.fspath(p) for p in paths]
        if feats.ndim != 2 or len(feats) != len(paths):
            raise DatasetError(f"shard {k}: features {feats.shape} and {len(paths)} paths")
        if man["dim"] not in (None, feats.shape[1]):
            raise DatasetError(f"shard {k} has dimension {feats.shape[1]}, earlier shards "
                               f"{man['dim']}")
        man["dim"] = int(feats.shape[1])
        base = os.path.join(out_dir, _shard_name(k))
        _write_npy(base + ".npy", feats)
        _write_lines(base + ".txt", paths)
        name = _shard_name(k)
        man["shards"].append({"features": name + ".npy", "paths": name + ".txt",
                              "count": len(paths)})
        man["num_images"] += len(paths)
    man["num_shards"] = len(man["shards"])
    man["complete"] = True
    _write_json(os.path.join(out_dir, MANIFEST), man)
    return man


def _finished_shard(base, digest, out_dir):
    """The record of a shard a previous run finished, or None (then it is (re)written)."""
    jpath = base + ".json"
    if not os.path.isfile(jpath):
        return None
    try:
        with open(jpath, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None  # cannot happen with atomic writes; redo the shard
    if record.get("source_sha1") != digest:
        raise DatasetError(f"The image list changed since {out_dir!r} was written (shard "
                           f"{os.path.basename(base)} was made from other images): use another "
                           "--out folder or delete it.")
    if not (os.path.isfile(base + ".npy") and os.path.isfile(base + ".txt")):
        return None
    return record


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastreid_plugins.tools.extract",
        description="Re-id features of your own images, written as resumable shards.")
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--images", required=True, metavar="DIR|LIST",
                   help="folder of images (recursive) or text file with one image path a line")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward (default TEST.IMS_PER_BATCH)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader workers reading images (default DATALOADER.NUM_WORKERS)")
    p.add_argument("--shard-size", type=int, default=SHARD_SIZE,
                   help="images per shard file (default %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--amp", action="store_true", help="autocast (float16 on CUDA, bf16 on CPU)")
    p.add_argument("--channels-last", action="store_true",
                   help="torch backend: channels_last (NHWC) convolutions, faster on CPUs; equal "
                        "to the evaluator's features up to float rounding")
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="an unreadable image stops the run (raise) or is skipped and listed")
    p.add_argument("--backend", nargs="+", default=["torch"],
                   metavar="torch|onnx MODEL.onnx|openvino MODEL.xml",
                   help="`torch` (MODEL.WEIGHTS), `onnx MODEL.onnx` (onnxruntime) or "
                   "`openvino MODEL.xml` (OpenVINO; an engine from tools.export)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch / onnxruntime CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of a user error (taken by cli.run_cli)")
    p.add_argument("opts", nargs=argparse.REMAINDER,
                   help="KEY VALUE config overrides (MODEL.WEIGHTS path/to/model.pth)")
    return p


def parse_backend(values):
    """``["torch"]`` -> ("torch", None); ``["onnx", "m.onnx"]`` -> ("onnx", "m.onnx");
    ``["openvino", "m.xml"]`` -> ("openvino", "m.xml").

    Raises:
        ConfigError: anything else.
    """
    if values == ["torch"]:
        return "torch", None
    if len(values) == 2 and values[0] in ("onnx", "openvino", "tensorrt"):
        return values[0], values[1]
    raise ConfigError("--backend must be `torch`, `onnx MODEL.onnx` or `openvino MODEL.xml`, got "
                      f"{' '.join(values)!r}")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the extraction CLI; returns the manifest (dict).

    Raises:
        UserError: bad arguments or input (see :func:`extract_to_dir`);
            :func:`fastreid_plugins.cli.run_cli` prints it as one ``Error:`` block.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    backend, onnx_model = parse_backend(args.backend)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    count_images(args.images)  # a missing / empty source fails before the model is built
    if args.num_workers is None:
        from fastreid_plugins.tools import build_tool_cfg

        args.num_workers = build_tool_cfg(args.config_file, args.opts).DATALOADER.NUM_WORKERS
    ext = FeatureExtractor(args.config_file, opts=args.opts, batch_size=args.batch_size,
                           num_workers=args.num_workers, amp=args.amp, backend=backend,
                           engine=onnx_model, log_file=os.path.join(args.out, "log.txt"),
                           channels_last=args.channels_last)
    try:
        return extract_to_dir(ext, args.images, args.out, args.shard_size, args.dtype,
                              args.on_error, progress=not args.no_progress)
    except (ImageReadError, DatasetNotFoundError) as e:  # the next step: the option that goes on
        if args.on_error != "raise":
            raise
        from fastreid_plugins.cli import error_message

        raise type(e)(f"{error_message(e)}\nTo leave unreadable images out (listed in the "
                      "manifest) and go on, rerun the same command with --on-error skip.") from e


if __name__ == "__main__":
    from fastreid_plugins.cli import run_cli

    run_cli(main, sys.argv[1:])
