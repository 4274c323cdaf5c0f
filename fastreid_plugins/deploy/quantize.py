"""INT8 ONNX graphs by onnxruntime's post-training static quantizer, and calibration batches.

``quantize_onnx``: ``onnxruntime.quantization.quantize_static`` in QDQ format (QuantizeLinear /
DequantizeLinear pairs around each quantized operator, which onnxruntime, OpenVINO and TensorRT
all read), int8 weights per output channel, uint8 activations per tensor, MinMax calibration on
the given batches; the graph is first shape-inferred and optimised by ``quant_pre_process``.
"""

import os
import tempfile
from typing import Iterator, Sequence

import numpy as np

from . import require
from .runtime import PRECISION_KEY

__all__ = ["quantize_onnx", "set_onnx_precision", "batches"]


def batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Split (N, 3, H, W) into consecutive batches of at most ``batch_size``."""
    for s in range(0, len(images), batch_size):
        yield images[s:s + batch_size]


def set_onnx_precision(path: str, precision: str) -> None:
    """Record ``precision`` in the ONNX file's metadata (:data:`.runtime.PRECISION_KEY`)."""
    onnx = require("onnx", "ONNX export")
    model = onnx.load(path)
    for p in list(model.metadata_props):
        if p.key == PRECISION_KEY:
            model.metadata_props.remove(p)
    entry = model.metadata_props.add()
    entry.key, entry.value = PRECISION_KEY, precision
    onnx.save(model, path)


def quantize_onnx(src: str, dst: str, calibration: Sequence[np.ndarray],
                  fp32_prefixes: Sequence[str] = ()) -> str:
    """INT8 (QDQ) copy of the fp32 ONNX graph ``src`` at ``dst``.

    Args:
        src (str): fp32 graph. dst (str): output ``.onnx``.
        calibration (list[np.ndarray]): (B, 3, H, W) float32 batches in [0, 255].
        fp32_prefixes (list[str]): nodes whose name starts with one of these stay in fp32
            (:func:`.onnx.export_onnx` names a module's nodes ``/model/<module path>/...``).

    Returns:
        str: ``dst``.

    Raises:
        MissingExtraError: onnxruntime not installed. ValueError: no calibration batch.
        RuntimeError: the quantizer fails (the cause named).
    """
    if not len(calibration):
        raise ValueError("int8 needs calibration images (--calib-images / --calib-count)")
    q = require("onnxruntime.quantization", "--precision int8 with --format onnx")
    onnx = require("onnx", "--precision int8 with --format onnx")
    graph = onnx.load(src, load_external_data=False).graph
    input_name = graph.input[0].name
    exclude = [n.name for n in graph.node if n.name.startswith(tuple(fp32_prefixes))] \
        if fp32_prefixes else []

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {input_name: np.ascontiguousarray(b, np.float32)}

    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        try:
            q.quant_pre_process(src, pre, skip_symbolic_shape=True)
            q.quantize_static(pre, dst, Reader(), quant_format=q.QuantFormat.QDQ,
                              per_channel=True, activation_type=q.QuantType.QUInt8,
                              weight_type=q.QuantType.QInt8,
                              calibrate_method=q.CalibrationMethod.MinMax,
                              nodes_to_exclude=exclude)
        except Exception as e:
            raise RuntimeError(f"onnxruntime cannot quantize {src!r}: {type(e).__name__}: "
                               f"{e}") from e
    set_onnx_precision(dst, "int8")
    return dst
