"""Export a re-id model's eval forward to ONNX and check it against PyTorch with onnxruntime.

Command line: ``python -m fastreid_plugins.tools.export_onnx --config-file CFG [--output
model.onnx] [--batch-size 2] [--opset 17] [--no-check] MODEL.WEIGHTS model_final.pth``.

Works for every meta-architecture in FastReID's registry (FastReID's ``Baseline``/``MGN`` and the
plugins' ``MFGNet``, ``MBFN``, ``SVRN``, ``CLIPSENet``): the model is built from the config (with
every plugin's ``add_*_config``), its weights are loaded strictly, it is put in eval mode and its
bare-tensor forward ``model(images) -> features`` is traced.

The ONNX graph has one input ``images``: float32 (B, 3, H, W) RGB in [0, 255] (what FastReID's
test loader yields; pixel normalisation is inside the graph), ``H, W = INPUT.SIZE_TEST``; and one
output ``features``: float32 (B, D), the feature the evaluator ranks with. The batch axis is
dynamic; H and W are those of the export (shape checks in the models are evaluated at trace
time).

The export uses PyTorch's TorchScript-based exporter (``dynamo=False``: the dynamo exporter needs
``onnxscript``), with three symbolics added for the duration of the export: ``torch.sort(...,
stable=True)`` -> a pairwise rank (torch's tie order in every runtime; OpenVINO's ``TopK`` is not
stable), ``adaptive_avg_pool2d`` on maps whose spatial size is not static at trace time ->
reshape + mean (both used by SVRN), and ``sigmoid`` -> ``Exp``-based with torch's tail
(onnxruntime's ``Sigmoid`` is inaccurate in the tail, which SVRN's top-n cut can rank by).

Models whose eval forward uses side information (CLIP-SENet's camera / viewpoint embeddings)
are exported with what their bare-tensor forward does without it (CLIP-SENet: the learned
"unknown" camera and viewpoint entries); the check compares with that same PyTorch forward.

Check (on by default): onnxruntime (CPU) runs the exported graph on a random batch of a different
batch size than the export batch and the output must match PyTorch's eval output within
``|onnx - torch| <= atol + rtol * |torch|`` elementwise, ``atol = 1e-4``, ``rtol = 1e-3``
(float32; the observed differences are ~1e-6).
"""

import logging
import os
import warnings
from typing import Any, Dict

import numpy as np
import torch
from torch import nn

from fastreid_plugins.errors import UpstreamChangedError

__all__ = ["export_onnx", "check_onnx", "BareTensorModel", "DEFAULT_ATOL", "DEFAULT_RTOL"]

logger = logging.getLogger("fastreid_plugins.export_onnx")

from . import DEFAULT_ATOL, DEFAULT_RTOL  # noqa: E402


class BareTensorModel(nn.Module):
    """Eval-mode wrapper: (B, 3, H, W) images in [0, 255] -> (B, D) features.

    Raises (at trace time):
        TypeError: the wrapped model's eval forward does not return one (B, D) tensor.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(images)
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise TypeError(
                f"{type(self.model).__name__}'s eval forward must return a (B, D) feature "
                f"tensor for a bare image tensor, got {type(out).__name__} "
                f"{tuple(getattr(out, 'shape', ()))}")
        return out


#: the TorchScript exporter's private helpers the two symbolics below use
ONNX_INTERNALS = ("_parse_arg", "_get_tensor_sizes", "_get_tensor_rank")


def _symbolic_helper():
    """torch's TorchScript-exporter ``symbolic_helper`` module, checked for
    :data:`ONNX_INTERNALS` (private; the one place they are looked up).

    Raises:
        UpstreamChangedError: the installed torch lacks the module or one of the helpers.
    """
    try:  # torch >= 2.9
        from torch.onnx._internal.torchscript_exporter import symbolic_helper
    except ImportError:  # pragma: no cover - older torch
        try:
            from torch.onnx import symbolic_helper
        except ImportError as e:
            raise UpstreamChangedError(
                "torch.onnx's symbolic_helper (TorchScript exporter) is gone in torch "
                f"{torch.__version__}; export_onnx was written against torch 2.14") from e
    missing = [n for n in ONNX_INTERNALS if not hasattr(symbolic_helper, n)]
    if missing:
        raise UpstreamChangedError(
            f"torch {torch.__version__}'s ONNX symbolic_helper lacks {missing} (private helpers "
            "fastreid_plugins.tools.export_onnx uses); it was written against torch 2.14")
    return symbolic_helper


#: longest sorted axis of static length exported as a pairwise rank (an N x N comparison per
#: row); a longer one is exported as ONNX ``TopK``
PAIRWISE_SORT_MAX = 4096


def _sort_symbolic(g, self, *args):
    """``aten::sort`` including the ``stable=True`` overload -> a stable sort in plain ONNX.

    The TorchScript exporter has no symbolic for ``aten::sort.stable`` (its ``sort`` symbolic
    reads the extra ``stable`` argument as an ``out=`` tensor and refuses). FastReID-style
    models use stable sorts for deterministic ranking (e.g. SVRN's salience suppression, whose
    top-n cut falls on exact ties when the scores saturate). ONNX ``TopK`` orders equal values
    by lower index first by its spec, but runtimes do not all keep that: OpenVINO 2026.4 converts
    it to a TopK with ``stable=False`` and returns equal values in another order. So a sort along
    the last axis is exported as a pairwise rank, ``rank_i = #{j: x_j ahead of x_i} + #{j < i:
    x_j == x_i}`` (ahead: greater when descending, less when ascending), scattered into the
    sorting permutation: every runtime then gives torch's stable order (NaN, which torch sorts
    last, has no defined order here). It costs an N x N comparison per row; a sort along another
    axis, or along an axis whose length is known at export time and exceeds
    :data:`PAIRWISE_SORT_MAX`, is exported as ``TopK`` (k = dim size).
    """
    sh = _symbolic_helper()
    if len(args) == 3:  # aten::sort.stable(self, stable, dim, descending)
        _, dim, descending = args
    else:  # aten::sort(self, dim, descending)
        dim, descending = args[:2]
    dim = sh._parse_arg(dim, "i")
    descending = bool(sh._parse_arg(descending, "i"))
    sizes = sh._get_tensor_sizes(self)
    rank = sh._get_tensor_rank(self)
    n = sizes[-1] if sizes else None
    if (dim == -1 or (rank is not None and dim == rank - 1)) and not (n and n > PAIRWISE_SORT_MAX):
        return _pairwise_stable_sort(g, self, descending)
    size = g.op("Gather", g.op("Shape", self),
                g.op("Constant", value_t=torch.tensor([dim], dtype=torch.int64)), axis_i=0)
    return g.op("TopK", self, size, axis_i=dim, largest_i=int(descending), sorted_i=1,
                outputs=2)


def _unsqueeze(g, x, axis):
    if g.opset >= 13:
        return g.op("Unsqueeze", x, _const(g, [axis]))
    return g.op("Unsqueeze", x, axes_i=[axis])


def _pairwise_stable_sort(g, x, descending):
    """(values, indices) of the stable sort of ``x`` along its last axis (any length)."""
    xi, xj = _unsqueeze(g, x, -1), _unsqueeze(g, x, -2)  # (..., N, 1): x_i; (..., 1, N): x_j
    ahead = g.op("Greater" if descending else "Less", xj, xi)  # [.., i, j]: x_j ahead of x_i
    shape = g.op("Shape", x)
    n = g.op("Gather", shape, _const(g, [-1]), axis_i=0)
    idx = g.op("Range", _const(g, 0), g.op("Squeeze", n) if g.opset < 13 else
               g.op("Squeeze", n, _const(g, [0])), _const(g, 1))  # 0..N-1
    lower = g.op("Less", _unsqueeze(g, idx, 0), _unsqueeze(g, idx, 1))  # [i, j]: j < i
    before = g.op("Or", ahead, g.op("And", g.op("Equal", xj, xi), lower))
    before = g.op("Cast", before, to_i=7)  # int64
    if g.opset >= 13:
        rank = g.op("ReduceSum", before, _const(g, [-1]), keepdims_i=0)
    else:
        rank = g.op("ReduceSum", before, axes_i=[-1], keepdims_i=0)
    positions = g.op("Expand", idx, shape)
    indices = g.op("ScatterElements", g.op("Mul", positions, _const(g, 0)), rank, positions,
                   axis_i=-1)
    return g.op("GatherElements", x, indices, axis_i=-1), indices


def _const(g, values):
    return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))


def _adaptive_avg_pool2d_symbolic(g, input, output_size):
    """``adaptive_avg_pool2d`` also when the traced input's H, W are not static.

    The TorchScript exporter exports adaptive average pooling to ``AveragePool`` only when the
    input's spatial size is known at export time; a map whose size comes out of shape arithmetic
    (e.g. SVRN's suppression-mask up-sampling) has unknown H, W and the export fails. For output
    sizes that divide the input size (the only case ``AveragePool`` can express anyway), pooling
    is a reshape to (B, C, Gh, H/Gh, Gw, W/Gw) and a mean over the two cell axes, which needs no
    static size; a non-divisible size makes the ``Reshape`` fail at run time, never a silently
    different result. Static sizes keep PyTorch's own symbolic.
    """
    sh = _symbolic_helper()
    out = sh._parse_arg(output_size, "is")
    out = list(out) * 2 if len(out) == 1 else list(out)
    if out == [1, 1]:
        return g.op("GlobalAveragePool", input)
    sizes = sh._get_tensor_sizes(input)
    if sizes is not None and len(sizes) == 4 and all(v is not None for v in sizes[2:]):
        try:
            from torch.onnx._internal.torchscript_exporter import symbolic_opset9 as o9
        except ImportError:  # pragma: no cover - older torch
            from torch.onnx import symbolic_opset9 as o9
        return o9.adaptive_avg_pool2d(g, input, output_size)
    gh, gw = out
    shape = g.op("Shape", input)

    def dim(i):
        return g.op("Gather", shape, _const(g, [i]), axis_i=0)

    new_shape = g.op("Concat", dim(0), dim(1),
                     _const(g, [gh]), g.op("Div", dim(2), _const(g, [gh])),
                     _const(g, [gw]), g.op("Div", dim(3), _const(g, [gw])), axis_i=0)
    x = g.op("Reshape", input, new_shape)
    if g.opset >= 18:
        return g.op("ReduceMean", x, _const(g, [3, 5]), keepdims_i=0)
    return g.op("ReduceMean", x, axes_i=[3, 5], keepdims_i=0)


def _sigmoid_symbolic(g, x):
    """``sigmoid(x)`` with torch's tail: ``1 / (1 + e)`` for x >= 0 and ``e / (1 + e)`` below,
    ``e = exp(-|x|)``, and 0 below -88.72 (where torch's ``exp(-x)`` overflows).

    onnxruntime's ``Sigmoid`` (MLAS, 1.32) is accurate to ~6e-8 *absolute* only: it returns 0
    for x <= -18 (torch: 1.5e-8 at -18, 9e-14 at -30) and is not even monotone below -15
    (5.96e-8 at -16, 8.94e-8 at -16.5); OpenVINO's differs near the float32 underflow. A
    saturated attention map (SVRN's SIM: logits down to -555 with random weights) multiplies
    features by those tail values, and SVRN's top-n salience cut then ranks cells by them: with
    ``Sigmoid``, onnxruntime picked other suppressed cells than PyTorch for all 57 VeRi sample
    images (min cosine 0.99885). ``Exp`` is accurate relative to its value in both runtimes.
    Every intermediate stays in [0, 2] (``exp(-|x|)``, not ``exp(-x)``, which overflows to inf
    for x < -88.7: fine in float32, but the int8 quantizer's MinMax calibration then gives the
    tensor an infinite scale and the int8 engine outputs zeros). The few extra element-wise
    operators run on attention-sized maps in this project's models.
    """
    def const(v):
        return g.op("Constant", value_t=torch.tensor(v, dtype=torch.float32))

    e = g.op("Exp", g.op("Neg", g.op("Abs", x)))
    r = g.op("Reciprocal", g.op("Add", const(1.0), e))   # sigmoid(|x|)
    below = g.op("Where", g.op("Less", x, const(-88.72284)), const(0.0), g.op("Mul", e, r))
    return g.op("Where", g.op("Less", x, const(0.0)), below, r)


# symbolics registered for the duration of an export (see their docstrings)
_CUSTOM_SYMBOLICS = {"aten::sort": _sort_symbolic,
                     "aten::adaptive_avg_pool2d": _adaptive_avg_pool2d_symbolic,
                     "aten::sigmoid": _sigmoid_symbolic}


def export_onnx(model: nn.Module, path: str, height: int, width: int, batch_size: int = 2,
                opset: int = 17) -> BareTensorModel:
    """Trace ``model``'s eval forward on a bare (B, 3, H, W) tensor into an ONNX file.

    Args:
        model (nn.Module): a FastReID-style meta-architecture (eval forward -> (B, D) tensor).
        path (str): output ``.onnx`` file.
        height, width (int): input size (``INPUT.SIZE_TEST``).
        batch_size (int): batch size of the example input (the batch axis stays dynamic).
        opset (int): ONNX opset version (>= 11).

    Returns:
        nn.Module: the eval-mode wrapper that was exported.

    The tracer's ``TracerWarning`` s (a Python value read from a tensor "might not generalize")
    are not shown: the batch axis is the only dynamic one, and :func:`check_onnx` runs the file
    on another batch size against PyTorch.

    Raises:
        ValueError: ``opset < 11``.
        RuntimeError: the model cannot be traced (the message names the model and the cause).
    """
    wrapper = BareTensorModel(model).eval()
    device = next(iter(model.parameters()), torch.zeros(())).device
    dummy = torch.rand(batch_size, 3, height, width, device=device) * 255
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if opset < 11:
        raise ValueError(f"--opset must be >= 11 (ONNX Range, TopK), got {opset}")
    for name, fn in _CUSTOM_SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(name, fn, opset)
    stack, handles = _track_modules(model)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer's "might not generalize to other inputs" warnings (Python values taken
            # from tensors, e.g. shape checks): the batch axis is the only dynamic one, and
            # check_onnx compares onnxruntime with PyTorch on another batch size
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                wrapper, (dummy,), path, input_names=["images"], output_names=["features"],
                dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                opset_version=opset, do_constant_folding=True, dynamo=False)
    except Exception as e:
        culprit = stack[-1] if stack else _module_running_op(wrapper, dummy, str(e), stack)
        where = f" in module {culprit[0]!r} ({culprit[1]})" if culprit else ""
        raise RuntimeError(f"ONNX export of {type(model).__name__} failed{where}: "
                           f"{type(e).__name__}: {e}") from e
    finally:
        for h in handles:
            h.remove()
        for name in _CUSTOM_SYMBOLICS:
            torch.onnx.unregister_custom_op_symbolic(name, opset)
    return wrapper


def _module_running_op(wrapper, dummy, message, stack):
    """``(qualified name, class)`` of the innermost module whose forward calls the ATen operator
    an exporter error message names (``'aten::xxx'``), or None.

    Tracing succeeds and only the conversion of one traced operator fails (no ONNX symbolic);
    the operator is found again in a plain eval forward (with the hooks of
    :func:`_track_modules` still in place) by a dispatch mode that sees every ATen call.
    """
    import re

    m = re.search(r"aten::([A-Za-z0-9_]+)", message)
    if not m:
        return None
    try:
        from torch.utils._python_dispatch import TorchDispatchMode
    except ImportError:  # pragma: no cover - older torch
        return None
    op, found = "aten::" + m.group(1), []

    class _Find(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not found and stack and func._schema.name == op:
                found.append(stack[-1])
            return func(*args, **(kwargs or {}))

    try:
        with torch.no_grad(), _Find():
            wrapper(dummy)
    except Exception:  # noqa: BLE001 - best effort: the export error is raised anyway
        pass
    finally:
        stack.clear()
    return found[0] if found else None


def _track_modules(model):
    """Forward hooks keeping the stack of ``model``'s sub-modules being run: when tracing fails,
    ``stack[-1]`` is ``(qualified name, class name)`` of the innermost module that failed.

    Returns:
        (list, list): the stack (left as it was at the failure) and the hook handles.
    """
    stack = []

    def pre(name):
        def hook(module, args):
            stack.append((name or "<root>", type(module).__name__))
        return hook

    def post(module, args, out):
        if stack:
            stack.pop()

    handles = []
    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(pre(name)))
        handles.append(m.register_forward_hook(post))
    return stack, handles


def check_onnx(wrapper: nn.Module, path: str, height: int, width: int, batch_size: int = 3,
               atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
               seed: int = 0) -> Dict[str, Any]:
    """Compare onnxruntime's output of ``path`` with PyTorch's on one random batch.

    Args:
        wrapper (nn.Module): the exported eval-mode model (images -> features).
        path (str): the ``.onnx`` file.
        height, width (int): input size; batch_size (int): batch of the check input.
        atol, rtol (float): elementwise tolerance ``|onnx - torch| <= atol + rtol * |torch|``.
        seed (int): seed of the random input.

    Returns:
        dict: ``max_abs_diff``, ``max_rel_diff``, ``shape``, ``atol``, ``rtol``.

    Raises:
        AssertionError: the outputs differ beyond the tolerance or in shape.
    """
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(path))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, 3, height, width, generator=g) * 255
    device = next(iter(wrapper.parameters()), torch.zeros(())).device
    with torch.no_grad():
        ref = wrapper(x.to(device)).float().cpu().numpy()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(["features"], {"images": x.numpy()})[0]
    if got.shape != ref.shape:
        raise AssertionError(f"ONNX output shape {got.shape} != PyTorch {ref.shape}")
    diff = np.abs(got - ref)
    report = {"max_abs_diff": float(diff.max()),
              "max_rel_diff": float((diff / np.maximum(np.abs(ref), 1e-12)).max()),
              "shape": list(got.shape), "atol": atol, "rtol": rtol}
    if not np.all(diff <= atol + rtol * np.abs(ref)):
        raise AssertionError(f"ONNX output differs from PyTorch beyond atol={atol}, rtol={rtol}: "
                             f"max |diff| {report['max_abs_diff']:.3g}")
    return report
