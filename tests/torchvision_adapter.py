"""pytest plugin that runs torchvision's own RoIAlign tests against samdetr_ops.ops.roi_align / RoIAlign.

    make torchvision-tests TORCHVISION_TESTS=/path/to/a/copy/of/vision/test

The copy (torchvision's test/test_ops.py and test/common_utils.py, see the README) is never part of this repository.
In each collected test module, the global `ops` (torchvision.ops) is replaced by a module whose roi_align and
RoIAlign are samdetr_ops.ops'; everything else still comes from torchvision.ops (the tests also call ops.roi_pool).
torchvision's own conftest.py is not used: this plugin skips the needs_cuda / needs_mps cases the way it does, and
skips the tests that cannot apply to samdetr_ops, each with its reason.
"""
import types

import pytest
import torch
import torchvision.ops

import samdetr_ops.ops

# test name -> why it cannot apply to samdetr_ops.ops (the report of `make torchvision-tests` lists them)
NOT_APPLICABLE = {
    "test_qroialign": "quantized tensors (torchvision's qroi_align) are out of scope for samdetr_ops (README)",
    "test_qroi_align_multiple_images": "quantized tensors (torchvision's qroi_align) are out of scope for "
                                       "samdetr_ops (README)",
}


class _AdaptedOps(types.ModuleType):
    """torchvision.ops with roi_align and RoIAlign taken from samdetr_ops.ops."""

    roi_align = staticmethod(samdetr_ops.ops.roi_align)
    RoIAlign = samdetr_ops.ops.RoIAlign

    def __getattr__(self, name):
        return getattr(torchvision.ops, name)


ADAPTED_OPS = _AdaptedOps("torchvision_ops_on_samdetr_ops")


def pytest_configure(config):
    for marker in ("needs_cuda: needs a CUDA device", "needs_mps: needs an MPS device",
                   "opcheck_only_one: torchvision's optests marker (unused here)"):
        config.addinivalue_line("markers", marker)


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and getattr(module, "ops", None) is torchvision.ops:
            module.ops = ADAPTED_OPS
        name = getattr(item, "originalname", item.name)
        if name in NOT_APPLICABLE:
            item.add_marker(pytest.mark.skip(reason=f"cannot apply: {NOT_APPLICABLE[name]}"))
        if item.get_closest_marker("needs_cuda") and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="CUDA device not available"))
        if item.get_closest_marker("needs_mps") and not torch.backends.mps.is_available():
            item.add_marker(pytest.mark.skip(reason="MPS device not available"))
