"""samdetr_ops.ops.roi_align / RoIAlign as drop-ins for torchvision.ops.roi_align / RoIAlign: torchvision's
signature, defaults and box forms, its results and gradients. (torchvision's own tests: `make torchvision-tests`.)"""
import inspect

import pytest
import torch
import torchvision

import samdetr_ops
from helpers import BACKWARD_TOL, FORWARD_TOL, assert_close, generator, make_boxes, make_features
from samdetr_ops.ops import BoxFormatError, RoIAlign, roi_align

pytestmark = pytest.mark.skipif(not samdetr_ops.has_extension(), reason="compiled extension not built")


def _box_list(g, counts, H, W, dtype=torch.float64):
    return [make_boxes(g, 1, n, H, W, 1.0, "mixed", dtype)[0] for n in counts]


def _as_rois(box_list):
    """torchvision's Tensor[K, 5] form of a box list."""
    return torch.cat([torch.cat([torch.full((len(b), 1), i, dtype=b.dtype), b], 1) for i, b in enumerate(box_list)])


def test_signature_and_defaults_are_torchvisions():
    ours, theirs = inspect.signature(roi_align), inspect.signature(torchvision.ops.roi_align)
    assert list(ours.parameters) == list(theirs.parameters)
    assert [p.default for p in ours.parameters.values()] == [p.default for p in theirs.parameters.values()]
    ours, theirs = inspect.signature(RoIAlign.__init__), inspect.signature(torchvision.ops.RoIAlign.__init__)
    assert [(p.name, p.default) for p in ours.parameters.values()] == \
        [(p.name, p.default) for p in theirs.parameters.values()]


@pytest.mark.parametrize("form", ["list-equal", "list-unequal", "rois-sorted", "rois-shuffled", "list-short"])
@pytest.mark.parametrize("aligned,sampling_ratio,spatial_scale", [(False, -1, 1.0), (True, 2, 0.5)])
def test_matches_torchvision(form, aligned, sampling_ratio, spatial_scale):
    g = generator("dropin", form, aligned, sampling_ratio)
    B, C, H, W = 3, 6, 9, 11
    features = make_features(g, B, C, H, W, "channels_last", torch.float64).requires_grad_()
    counts = {"list-equal": [4, 4, 4], "list-short": [3, 0], "list-unequal": [5, 0, 2]}.get(form, [3, 1, 4])
    boxes = _box_list(g, counts, H / spatial_scale, W / spatial_scale)
    if form.startswith("rois"):
        boxes = _as_rois(boxes)
        if form == "rois-shuffled":
            boxes = boxes[torch.randperm(len(boxes), generator=g)]
    args = (5, spatial_scale, sampling_ratio, aligned)
    out = roi_align(features, boxes, *args)
    expected = torchvision.ops.roi_align(features, boxes, *args)
    assert out.shape == expected.shape == (sum(counts), C, 5, 5)
    assert_close(out, expected, FORWARD_TOL[torch.float64], "forward")
    grad = torch.randn(out.shape, generator=g, dtype=out.dtype)
    (ours,), (theirs,) = (torch.autograd.grad(o, features, grad) for o in (out, expected))
    assert_close(ours, theirs, BACKWARD_TOL[torch.float64], "grad features")


def test_module_and_output_size_forms():
    g = generator("dropin module")
    features = make_features(g, 2, 4, 8, 8, "contiguous", torch.float32)
    rois = _as_rois(_box_list(g, [2, 3], 8, 8, torch.float32))
    layer = RoIAlign((3, 3), spatial_scale=1.0, sampling_ratio=-1)
    assert repr(layer) == "RoIAlign(output_size=(3, 3), spatial_scale=1.0, sampling_ratio=-1, aligned=False)"
    expected = torchvision.ops.RoIAlign((3, 3), 1.0, -1)(features, rois)
    for out in (layer(features, rois), roi_align(features, rois, 3), roi_align(features, rois, [3, 3])):
        assert_close(out, expected, FORWARD_TOL[torch.float32], "forward")


def test_no_boxes():
    features = torch.randn(2, 3, 5, 5)
    assert roi_align(features, torch.zeros(0, 5), 2).shape == (0, 3, 2, 2)
    assert roi_align(features, [], 2).shape == (0, 3, 2, 2)
    assert roi_align(features, [torch.zeros(0, 4), torch.zeros(0, 4)], 2).shape == (0, 3, 2, 2)


@pytest.mark.parametrize("boxes,message", [
    (torch.zeros(3, 4), r"`boxes` as a tensor must have shape \[K, 5\]"),
    ([torch.zeros(3, 3)], r"each tensor in the `boxes` list must have shape \[L, 4\]"),
    (torch.tensor([[2.0, 0, 0, 1, 1]]), r"image indices in `boxes\[:, 0\]` must lie in \[0, 2\), got 2 to 2"),
    (torch.tensor([[-1.0, 0, 0, 1, 1]]), r"must lie in \[0, 2\), got -1 to -1"),
    ([torch.zeros(1, 4)] * 3, r"`boxes` lists 3 images but `input` holds only 2"),
], ids=["rois-shape", "list-shape", "index-high", "index-negative", "too-many-images"])
def test_bad_boxes_raise_an_error_torchvision_code_catches(boxes, message):
    with pytest.raises(BoxFormatError, match=message) as error:
        roi_align(torch.randn(2, 3, 5, 5), boxes, 2)
    assert isinstance(error.value, ValueError) and isinstance(error.value, AssertionError)


def test_torchscript():
    g = generator("dropin script")
    features = make_features(g, 2, 4, 8, 8, "contiguous", torch.float32)
    box_list = _box_list(g, [2, 3], 8, 8, torch.float32)
    rois = _as_rois(box_list)
    scripted = torch.jit.script(roi_align)
    module = torch.jit.script(RoIAlign([3, 3], 0.5, 2, True))
    expected = torchvision.ops.roi_align(features, rois, 3, 0.5, 2, True)
    for out in (scripted(features, rois, 3, 0.5, 2, True), scripted(features, box_list, [3, 3], 0.5, 2, True),
                module(features, rois), module(features, box_list)):
        assert_close(out, expected, FORWARD_TOL[torch.float32], "scripted")


def test_torch_compile():
    g = generator("dropin compile")
    features = make_features(g, 2, 4, 8, 8, "channels_last", torch.float32)
    box_list = _box_list(g, [3, 3], 8, 8, torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(lambda f, b: roi_align(f, b, 3, aligned=True), fullgraph=True)
    assert_close(compiled(features, box_list), torchvision.ops.roi_align(features, box_list, 3, aligned=True),
                 FORWARD_TOL[torch.float32], "compiled")
