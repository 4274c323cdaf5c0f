"""Run an exported engine: one interface over onnxruntime and OpenVINO.

An engine file is an ``.onnx`` graph (fp32, or int8 QDQ from :mod:`.quantize`) or an OpenVINO IR
``.xml`` (+ ``.bin``; :mod:`.openvino`). Its input is ``images`` (B, 3, H, W) float32 RGB in
[0, 255], its output ``features`` (B, D) float32 (:mod:`.onnx`). The engine carries its own
precision: ONNX metadata / OpenVINO ``rt_info`` key ``fastreid_plugins_precision`` (written by
``tools.export``; a graph without it, e.g. from ``tools.export_onnx``, is ``fp32``), and OpenVINO
compiles it with the inference precision of :data:`OV_INFERENCE_PRECISION`.
"""

import hashlib
import os
from typing import Any, Dict, List, Optional

import numpy as np

from . import require

__all__ = ["EngineRunner", "PRECISION_KEY", "OV_INFERENCE_PRECISION", "sha256", "report_path",
           "read_report"]

#: metadata key of an engine's precision (fp32 / fp16 / bf16 / int8)
PRECISION_KEY = "fastreid_plugins_precision"
#: OpenVINO CPU ``INFERENCE_PRECISION_HINT`` per engine precision: fp32 and fp16 (fp16-compressed
#: weights) execute in f32 (OpenVINO's default is bf16 on CPUs with bf16 instructions, which the
#: fp32 gate would then measure); bf16 in bf16; int8 keeps the non-quantized operators in f32
OV_INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f32", "bf16": "bf16", "int8": "f32"}


def sha256(path: str, block: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file; of an OpenVINO ``.xml``, of the ``.xml`` and then its ``.bin``."""
    h = hashlib.sha256()
    files = [path]
    if path.endswith(".xml") and os.path.isfile(path[:-4] + ".bin"):
        files.append(path[:-4] + ".bin")
    for p in files:
        with open(p, "rb") as f:
            for chunk in iter(lambda f=f: f.read(block), b""):
                h.update(chunk)
    return h.hexdigest()


def report_path(engine: str) -> str:
    """The accuracy-gate report beside an engine: ``model.xml`` -> ``model.xml.gate.json``."""
    return os.fspath(engine) + ".gate.json"


def read_report(engine: str) -> Optional[Dict[str, Any]]:
    """The gate report of ``engine`` (dict) or None when there is none / it is unreadable."""
    import json

    try:
        with open(report_path(engine), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class EngineRunner:
    """An engine file, loaded for inference on the CPU.

    Args:
        path (str): ``.onnx`` or OpenVINO ``.xml``.
        runtime (str): ``"onnx"`` (onnxruntime; ``.onnx`` only), ``"openvino"`` (``.onnx`` or
            ``.xml``) or ``"tensorrt"`` (a ``.engine`` of :mod:`.tensorrt`, on a CUDA GPU;
            unverified here).
        threads (int or None): intra-op threads (default: the runtime's).

    Attributes:
        precision (str): the engine's precision (fp32 / fp16 / bf16 / int8).
        input_shape (list): (B, 3, H, W) with B ``None``/dynamic.

    Raises:
        FileNotFoundError: ``path`` missing.
        MissingExtraError: onnxruntime / openvino not installed.
        ValueError: unknown runtime, or ``.xml`` with onnxruntime.
    """

    def __init__(self, path: str, runtime: str = "openvino", threads: Optional[int] = None
                 ) -> None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Engine file not found: {path!r} (export one with "
                                    "`python -m fastreid_plugins.tools.export`)")
        self.path, self.runtime = os.fspath(path), runtime
        if runtime == "onnx":
            self._init_ort(threads)
        elif runtime == "openvino":
            self._init_ov(threads)
        elif runtime == "tensorrt":
            from .tensorrt import TensorRTRunner

            self.trt = TensorRTRunner(self.path)
            self.precision, self.input_shape = self.trt.precision, self.trt.input_shape
        else:
            raise ValueError(f"runtime must be 'onnx', 'openvino' or 'tensorrt', got {runtime!r}")

    def _init_ort(self, threads):
        if self.path.endswith(".xml"):
            raise ValueError(f"{self.path!r} is an OpenVINO IR: run it with the openvino backend")
        ort = require("onnxruntime", "Running an ONNX engine")
        so = ort.SessionOptions()
        self.precision = _onnx_precision(self.path)
        if self.precision == "int8":
            # onnxruntime 1.32's buffer reuse fails on the QDQ graph of MBFN's unequal part
            # split ("Shape mismatch attempting to re-use buffer" at a SequenceAt); the fp32
            # graph runs with it
            so.enable_mem_reuse = False
        if threads:
            so.intra_op_num_threads = int(threads)
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(self.path, so, providers=providers)
        inp = self.session.get_inputs()[0]
        self.input_name, self.input_shape = inp.name, list(inp.shape)

    def _init_ov(self, threads):
        ov = require("openvino", "Running an OpenVINO engine")
        core = ov.Core()
        model = core.read_model(self.path)
        self.precision = "fp32"
        if model.has_rt_info([PRECISION_KEY]):
            self.precision = str(model.get_rt_info([PRECISION_KEY]).astype(str))
        if self.path.endswith(".onnx"):  # an ONNX file read by OpenVINO: precision from metadata
            self.precision = _onnx_precision(self.path)
        config = {"INFERENCE_PRECISION_HINT": OV_INFERENCE_PRECISION.get(self.precision, "f32"),
                  "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, "CPU", config)
        inp = model.inputs[0]
        self.input_name = inp.get_any_name()
        self.input_shape = [None if d.is_dynamic else d.get_length()
                            for d in inp.get_partial_shape()]
        self.request = self.compiled.create_infer_request()

    @property
    def input_hw(self) -> List[Any]:
        """``[H, W]`` of the engine's input."""
        return list(self.input_shape[2:4])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 images in [0, 255] -> (B, D) float32 features."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        if self.runtime == "onnx":
            out = self.session.run(None, {self.input_name: images})[0]
        elif self.runtime == "tensorrt":
            out = self.trt(images)
        else:
            out = self.request.infer({0: images})[self.compiled.outputs[0]]
        return np.asarray(out, dtype=np.float32)


def _onnx_precision(path):
    onnx = require("onnx", "Reading an ONNX engine's metadata")
    model = onnx.load(path, load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    return meta.get(PRECISION_KEY, "fp32")
