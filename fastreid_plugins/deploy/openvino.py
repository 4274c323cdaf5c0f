"""ONNX graph -> OpenVINO IR (``.xml`` + ``.bin``) in fp32, fp16, bf16 or int8.

* ``fp32``: the graph as converted by ``openvino.convert_model``; run with f32 inference precision.
* ``fp16``: weights stored as float16 (``save_model(compress_to_fp16=True)``, half the file);
  decompressed and run in f32 on a CPU.
* ``bf16``: fp32 weights, run in bfloat16 (``INFERENCE_PRECISION_HINT=bf16``: OpenVINO's own
  default on CPUs with AVX-512 BF16 / AMX).
* ``int8``: the QDQ graph of onnxruntime's static quantizer (:func:`.quantize.quantize_onnx`),
  converted: OpenVINO runs QuantizeLinear / DequantizeLinear pairs as int8 operators (VNNI / AMX
  where the CPU has them); operators left in float run in f32. NNCF (``nncf.quantize`` on the IR)
  was tried here (NNCF 3.4, OpenVINO 2026.4) and its model failed at inference with a batch size
  other than the calibration's on FastReID's BN-neck head (CPU plugin shape error), while the QDQ
  graph runs at any batch size with the same feature cosine (docs/deploy.md).

The engine records its precision in ``rt_info`` (:data:`.runtime.PRECISION_KEY`).
"""

import os

from . import require
from .runtime import PRECISION_KEY

__all__ = ["onnx_to_openvino"]


def onnx_to_openvino(onnx_path: str, xml_path: str, precision: str = "fp32") -> str:
    """Convert an ONNX graph to an OpenVINO IR of ``precision``.

    Args:
        onnx_path (str): the fp32 graph (:func:`.onnx.export_onnx`), or for ``int8`` its QDQ
            quantization (:func:`.quantize.quantize_onnx`).
        xml_path (str): output ``.xml`` (its ``.bin`` is written beside it).
        precision (str): ``fp32``, ``fp16``, ``bf16`` or ``int8``.

    Returns:
        str: ``xml_path``.

    Raises:
        MissingExtraError: openvino not installed.
        ValueError: unknown precision, ``xml_path`` not ending in ``.xml``.
        RuntimeError: OpenVINO cannot convert the graph (names the operator / cause).
    """
    if precision not in ("fp32", "fp16", "bf16", "int8"):
        raise ValueError(f"precision must be fp32, fp16, bf16 or int8, got {precision!r}")
    if not xml_path.endswith(".xml"):
        raise ValueError(f"an OpenVINO engine is an .xml file, got --output {xml_path!r}")
    ov = require("openvino", "--format openvino")
    try:
        model = ov.convert_model(onnx_path)
    except Exception as e:
        raise RuntimeError(f"OpenVINO cannot convert {onnx_path!r}: {type(e).__name__}: "
                           f"{e}") from e
    model.set_rt_info(precision, [PRECISION_KEY])
    os.makedirs(os.path.dirname(os.path.abspath(xml_path)), exist_ok=True)
    ov.save_model(model, xml_path, compress_to_fp16=precision == "fp16")
    return xml_path
