"""Loads the compiled extension and completes each registered op (samdetr_ops._registry) for PyTorch: fake kernels
for torch.compile, the autograd formula and the autocast rule. The schemas and the CPU/CUDA kernels are registered
in C++ (csrc/)."""
import torch

from . import _autograd
from ._registry import OP_SPECS

try:
    from . import _C  # noqa: F401  (registers the samdetr_ops::* schemas and kernels)

    _LOAD_ERROR = None
except ImportError as error:  # not built: the public functions fall back to samdetr_ops.reference
    _LOAD_ERROR = error

LOADED = _LOAD_ERROR is None

# (op name, device type) pairs the compiled extension has kernels for, read once at import (registrations are
# static), so that backend choice is a plain lookup that torch.compile traces through.
KERNELS = frozenset(
    (op, device_type)
    for op in OP_SPECS
    for device_type, key in (("cpu", "CPU"), ("cuda", "CUDA"))
    if LOADED and torch._C._dispatch_has_kernel_for_dispatch_key(f"samdetr_ops::{op}", key)
)


def has_kernel(op_name: str, device_type: str) -> bool:
    """Whether the compiled extension registered a kernel of samdetr_ops::<op_name> for this device type."""
    return (op_name, device_type) in KERNELS


if LOADED:
    for _spec in OP_SPECS.values():
        _qualname = f"samdetr_ops::{_spec.name}"
        torch.library.register_fake(_qualname, _spec.fake)
        torch.library.register_fake(f"{_qualname}_backward", _spec.backward_fake)
        _autograd.register(_qualname, getattr(torch.ops.samdetr_ops, f"{_spec.name}_backward"), _spec.autograd)
        # A direct torch.ops call under torch.autocast computes in float32 (the public functions, in addition, cast
        # the result back to the input's dtype, as torchvision's roi_align does).
        for _device_type in ("cpu", "cuda"):
            torch.library.register_autocast(_qualname, _device_type, torch.float32)
