"""ONNX graph -> TensorRT engine for NVIDIA GPUs, and its runner. UNVERIFIED: written against
TensorRT 10's Python API (``tensorrt`` wheel) and never run in this project's CI, which has no GPU;
run ``python -m fastreid_plugins.tools.export --format tensorrt`` on a GPU host, whose accuracy
gate then checks the engine like any other (docs/deploy.md).

* ``fp32``: the fp32 graph, TF32 disabled.
* ``fp16``: the fp32 graph built with ``BuilderFlag.FP16`` (TensorRT picks fp16 kernels where
  faster; the gate measures the result).
* ``int8``: the QDQ graph of :func:`.quantize.quantize_onnx` (explicit quantization: TensorRT
  takes the scales from the QuantizeLinear / DequantizeLinear pairs, no TensorRT calibrator),
  with ``FP16`` also allowed for the layers left in float.

The engine is built for batches 1 to :data:`MAX_BATCH` (optimisation profile, optimum
``opt_batch``); its precision is written to ``<engine>.meta.json`` (a TensorRT plan carries no
user metadata). An engine runs only on the GPU model and TensorRT version that built it.
"""

import json
import os
from typing import Any, Dict

import numpy as np

from . import require

__all__ = ["onnx_to_tensorrt", "TensorRTRunner", "MAX_BATCH", "TENSORRT_INSTALL"]

#: the largest batch an engine accepts
MAX_BATCH = 64
TENSORRT_INSTALL = ("pip install tensorrt torch (CUDA build), on a host with an NVIDIA GPU; "
                    "no GPU here: use --format openvino")


def _trt():
    return require("tensorrt", "--format tensorrt", TENSORRT_INSTALL)


def onnx_to_tensorrt(onnx_path: str, plan_path: str, precision: str, height: int, width: int,
                     opt_batch: int = 16, workspace_gb: float = 4.0) -> str:
    """Build a serialized TensorRT engine from an ONNX graph (UNVERIFIED, see the module).

    Args:
        onnx_path (str): fp32 graph, or for ``int8`` its QDQ quantization.
        plan_path (str): output ``.engine`` file (``.meta.json`` beside it).
        precision (str): ``fp32``, ``fp16`` or ``int8``.
        height, width (int): input size. opt_batch (int): the profile's optimum batch.
        workspace_gb (float): builder workspace limit.

    Returns:
        str: ``plan_path``.

    Raises:
        MissingExtraError: tensorrt not installed. ValueError: bf16 / unknown precision.
        RuntimeError: TensorRT cannot parse or build the graph (parser errors named).
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"--format tensorrt takes fp32, fp16 or int8, got {precision!r}")
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path!r}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.clear_flag(trt.BuilderFlag.TF32)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, (1, 3, height, width), (opt_batch, 3, height, width),
                      (MAX_BATCH, 3, height, width))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT could not build a {precision} engine from {onnx_path!r} "
                           "(see its log above)")
    os.makedirs(os.path.dirname(os.path.abspath(plan_path)), exist_ok=True)
    with open(plan_path, "wb") as f:
        f.write(bytes(plan))
    with open(plan_path + ".meta.json", "w", encoding="utf-8") as f:
        json.dump({"precision": precision, "input": name, "height": height, "width": width,
                   "max_batch": MAX_BATCH, "tensorrt": trt.__version__}, f)
    return plan_path


class TensorRTRunner:
    """A TensorRT engine on the current CUDA device (UNVERIFIED): (B, 3, H, W) float32 numpy
    images in [0, 255] -> (B, D) float32 numpy features; B <= :data:`MAX_BATCH`.

    Raises:
        MissingExtraError: tensorrt not installed. RuntimeError: no CUDA device / bad engine.
    """

    def __init__(self, path: str) -> None:
        import torch

        trt = _trt()
        if not torch.cuda.is_available():
            raise RuntimeError("a TensorRT engine needs a CUDA device; none is available")
        with open(path + ".meta.json", encoding="utf-8") as f:
            self.meta: Dict[str, Any] = json.load(f)
        self.precision = self.meta["precision"]
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with open(path, "rb") as f:
            self.engine = runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise RuntimeError(f"TensorRT cannot load {path!r} (built by another TensorRT "
                               "version or for another GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == mode)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) != mode)
        self.input_shape = [None, 3, self.meta["height"], self.meta["width"]]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(images, np.float32)).cuda()
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)),
                          dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return out.cpu().numpy()
