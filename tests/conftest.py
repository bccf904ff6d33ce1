import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))  # helpers.py

# Without a GPU the Triton backend is tested through the Triton interpreter, which must be chosen before
# samdetr_ops.triton (and so triton.jit) is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
