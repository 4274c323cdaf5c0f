"""Deployment: exporting a trained model to an inference engine and proving that it gives the
same answers as the PyTorch model.

* :mod:`.onnx`: the ONNX graph of any meta-architecture's eval forward (TorchScript exporter),
  checked against PyTorch with onnxruntime on random input.
* :mod:`.openvino`: ONNX -> OpenVINO IR (fp32, fp16-compressed weights, bf16 execution, int8 from
  the QDQ graph).
* :mod:`.quantize`: INT8 ONNX (QDQ) by onnxruntime's post-training static quantizer.
* :mod:`.tensorrt`: ONNX -> TensorRT engine (fp32 / fp16 / int8 from the QDQ graph) for NVIDIA
  GPUs; written against TensorRT 10's Python API and not run here (no GPU): unverified.
* :mod:`.runtime`: :class:`~.runtime.EngineRunner`, one interface to run an engine file.
* :mod:`.gate`: the accuracy gate (feature cosine, Rank-1 / mAP / mINP of engine vs PyTorch).

The command line is ``python -m fastreid_plugins.tools.export`` (``docs/deploy.md``).
OpenVINO (with onnx / onnxruntime) is the optional extra ``deploy``
(``pip install -e ".[deploy]"``).
"""

import types

from fastreid_plugins.errors import UserError

#: the ONNX check's tolerance, ``|onnx - torch| <= atol + rtol * |torch|`` elementwise (float32;
#: the observed differences are ~1e-6); the command line's ``--atol`` / ``--rtol`` defaults
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3

#: engine formats and precisions of ``tools.export``
FORMATS = ("onnx", "openvino", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")

#: the gate's default minimum cosine similarity between engine and PyTorch features, by precision
#: (int8 quantizes every activation to 256 levels; fp16 / bf16 round to 11 / 8 mantissa bits)
MIN_COSINE = {"fp32": 0.9999, "fp16": 0.9999, "bf16": 0.9999, "int8": 0.98}
#: the gate's default largest mAP drop (points of %) of the engine against PyTorch
MAX_MAP_DROP = 1.0


class MissingExtraError(UserError, ImportError):
    """An optional dependency of deployment (OpenVINO, onnx, onnxruntime) is not installed."""


class GateFailedError(UserError):
    """An exported engine failed the accuracy gate (the message holds the numbers)."""


#: how to install the deploy extra (the hint of :func:`require`)
DEPLOY_EXTRA = 'pip install -e ".[deploy]"  (openvino, onnx, onnxruntime)'


def require(module: str, what: str, install: str = DEPLOY_EXTRA) -> types.ModuleType:
    """Import ``module`` (e.g. ``"openvino"``) or raise :class:`MissingExtraError` naming how to
    install it (default: the extra ``deploy``).

    Raises:
        MissingExtraError: ``module`` is not importable.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{what} needs the Python package {module.split('.')[0]!r}, which is not installed: "
            f"{install}") from e
