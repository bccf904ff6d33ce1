"""Which implementation runs each op.

Backends: "cpp" (the compiled C++/CUDA kernels), "triton" (the Triton kernels, CUDA tensors, or CPU tensors
under TRITON_INTERPRET=1), "reference" (the unfused PyTorch sequence) and "auto" (the default: "cpp" where the
extension has a kernel for the tensor's device, else "reference" with one warning). Only "auto" ever falls back;
asking for a backend that cannot run raises.
"""
import contextlib
import os
import warnings

import torch

from . import _extension
from ._registry import OP_SPECS

BACKENDS = ("auto", "cpp", "triton", "reference")
ENV_VAR = "SAMDETR_OPS_BACKEND"


def _validated(name):
    if name not in BACKENDS:
        raise ValueError(f"samdetr_ops: unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


_state = {"backend": _validated(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto")}
_warned = set()


def set_backend(name: str) -> None:
    """Selects the backend for the whole process (see also `use_backend` for a block)."""
    _state["backend"] = _validated(name)


@contextlib.contextmanager
def use_backend(name: str):
    """`with use_backend("triton"):` selects the backend for a block; the previous choice comes back on exit."""
    previous = _state["backend"]
    set_backend(name)
    try:
        yield
    finally:
        _state["backend"] = previous


def current_backend() -> str:
    return _state["backend"]


def _triton_impl(op, device):
    try:
        from . import triton as triton_backend  # imported lazily: Triton is optional
    except ImportError as error:
        raise RuntimeError(f"samdetr_ops: backend 'triton' is unavailable: {error}") from error
    impl = triton_backend.get(op, device)
    if impl is None:
        raise RuntimeError(f"samdetr_ops: backend 'triton' cannot run {op} on {device.type}: "
                           f"{triton_backend.unavailable_reason(device)}")
    return impl


def resolve(op: str, device):
    """The callable that computes `op` for tensors on `device` under the current backend."""
    backend = _state["backend"]
    if backend == "reference":
        return OP_SPECS[op].reference
    if backend == "triton":
        return _triton_impl(op, device)
    if _extension.has_kernel(op, device.type):
        return getattr(torch.ops.samdetr_ops, op)
    reason = ("the compiled extension is not built" if not _extension.LOADED
              else f"the compiled extension has no {device.type} kernel")
    if backend == "cpp":
        raise RuntimeError(f"samdetr_ops: backend 'cpp' cannot run {op} on {device.type}: {reason} "
                           "(rebuild with `pip install --no-build-isolation -e .`)")
    if (op, device.type) not in _warned:
        _warned.add((op, device.type))
        warnings.warn(f"samdetr_ops.{op}: {reason}; falling back to the unfused reference (slow)", RuntimeWarning,
                      stacklevel=4)
    return OP_SPECS[op].reference


def available_backends(op: str, device) -> list:
    """The backends other than "auto" that can run `op` on `device` here (never warns, never falls back)."""
    device = torch.device(device)
    available = []
    for name in BACKENDS[1:]:
        try:
            with use_backend(name):
                resolve(op, device)
        except RuntimeError:
            continue
        available.append(name)
    return available
