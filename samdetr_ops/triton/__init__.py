"""The Triton backend: roi_align, semantic_align and salient_point_pos_embed as torch.library.triton_op custom ops
(namespace samdetr_ops_triton), so torch.compile sees through them. They run on CUDA tensors, and on CPU tensors
under the Triton interpreter (TRITON_INTERPRET=1, set before samdetr_ops.triton is first imported), which is how
CI tests them."""
import os

import triton  # noqa: F401  (ImportError here: the backend is unavailable)

from .roi_align import roi_align
from .salient_point_pos_embed import salient_point_pos_embed
from .semantic_align import semantic_align

_OPS = {"roi_align": roi_align, "semantic_align": semantic_align, "salient_point_pos_embed": salient_point_pos_embed}
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


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
    return _OPS.get(op)
