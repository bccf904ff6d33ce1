"""The Triton backend: each registered op (samdetr_ops._registry) as a torch.library.triton_op custom op (namespace
samdetr_ops_triton), so torch.compile sees through them, defined in the module the registry names. They run on CUDA
tensors, and on CPU tensors under the Triton interpreter (TRITON_INTERPRET=1, set before samdetr_ops.triton is
first imported), which is how CI tests them."""
import importlib

import triton  # noqa: F401  (ImportError here: the backend is unavailable)

from .._registry import OP_SPECS
from ._common import INTERPRET

_TRITON_OPS = {name: getattr(importlib.import_module(f".{spec.triton_module}", __name__), name)
               for name, spec in OP_SPECS.items()}


def unavailable_reason(device):
    if device.type == "cuda" or (device.type == "cpu" and INTERPRET):
        return None
    if device.type == "cpu":
        return "Triton kernels run on CPU tensors only under the interpreter (set TRITON_INTERPRET=1 before import)"
    return f"no Triton support for {device.type} tensors"


def get(op, device):
    """The Triton op for `op` on `device`, or None."""
    if unavailable_reason(device) is not None:
        return None
    return _TRITON_OPS.get(op)
