"""samdetr_ops.roi_align against torchvision's roi_align (samdetr_ops.reference.roi_align)."""
import pytest
import torch

import samdetr_ops
from helpers import (
    BACKENDS,
    DEVICES,
    FORWARD_TOL,
    TARGETS,
    assert_close,
    check_against_reference,
    generator,
    gradcheck_device,
    make_boxes,
    make_features,
    randn,
)
from samdetr_ops import reference

SHAPES = [  # B, C, H, W, N, S
    (2, 8, 13, 17, 5, 7),
    (1, 3, 1, 1, 4, 7),      # a 1x1 map: every sample clamps to the one pixel
    (3, 33, 9, 5, 2, 3),     # channels not a multiple of the CPU channel block
]


@pytest.mark.parametrize("device,backend", TARGETS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("kind", ["mixed", "tiny", "huge", "outside", "flipped"])
@pytest.mark.parametrize("aligned,sampling_ratio,spatial_scale", [(True, -1, 1.0), (False, 2, 0.25), (True, 3, 0.5),
                                                                   (False, -1, 0.125)])
def test_forward_and_backward_match_torchvision(device, backend, dtype, shape, layout, kind, aligned, sampling_ratio,
                                                spatial_scale):
    B, C, H, W, N, S = shape
    g = generator("roi_align", device, dtype, shape, layout, kind, aligned, sampling_ratio, spatial_scale)
    features = make_features(g, B, C, H, W, layout, dtype, device)
    boxes = make_boxes(g, B, N, H, W, spatial_scale, kind, dtype, device)
    check_against_reference("roi_align", (features, boxes), (S, spatial_scale, sampling_ratio, aligned), backend, g=g)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("aligned,sampling_ratio", [(True, -1), (False, 2)])
def test_gradcheck_float64(backend, aligned, sampling_ratio):
    g = generator("roi_align gradcheck", aligned, sampling_ratio)
    device = gradcheck_device(backend)
    features = make_features(g, 2, 3, 6, 7, "channels_last", torch.float64, device).requires_grad_()
    boxes = make_boxes(g, 2, 3, 6, 7, 1.0, "mixed", torch.float64, device)
    with samdetr_ops.use_backend(backend):
        assert torch.autograd.gradcheck(lambda f: samdetr_ops.roi_align(f, boxes, 4, 1.0, sampling_ratio, aligned),
                                        (features,))


@pytest.mark.parametrize("device", DEVICES)
def test_huge_and_absurd_boxes_are_safe_and_fast(device):
    """A box far larger than the map must not cost O(box area) samples (torchvision would take hours for the
    1e9-pixel box) nor read out of bounds; NaN / Inf boxes give zeros."""
    g = generator("roi_align absurd", device)
    features = make_features(g, 1, 4, 16, 16, "channels_last", torch.float64, device)
    # A 2000-pixel box: torchvision is still fast enough to compare with exactly.
    big = torch.tensor([[[-1000.0, -900.0, 1000.0, 1100.0]]], dtype=torch.float64, device=device)
    assert_close(samdetr_ops.roi_align(features, big), reference.roi_align(features, big),
                 FORWARD_TOL[torch.float64], "2000-pixel box")
    absurd = torch.tensor([[[-1e9, -1e9, 1e9, 1e9], [3.0, 3.0, 1e12, 1e12], [float("nan"), 1.0, 5.0, 5.0],
                            [0.0, 0.0, float("inf"), 4.0], [-float("inf"), 2.0, 3.0, 4.0], [1e30, 1e30, 2e30, 2e30]]],
                          dtype=torch.float64, device=device)
    features = features.requires_grad_()
    out = samdetr_ops.roi_align(features, absurd)
    assert torch.isfinite(out).all()
    assert (out[0, 2:] == 0).all(), "non-finite boxes must give zeros"
    (grad,) = torch.autograd.grad(out.sum(), features)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("device,backend", TARGETS)
@pytest.mark.parametrize("B,N,C,H,W", [(0, 3, 4, 5, 5), (2, 0, 4, 5, 5), (2, 3, 0, 5, 5), (2, 3, 4, 0, 5)])
def test_zero_size(device, backend, B, N, C, H, W):
    g = generator("roi_align zero", device, B, N, C, H, W)
    features = make_features(g, B, C, H, W, "contiguous", torch.float32, device)
    boxes = make_boxes(g, B, N, max(H, 1), max(W, 1), 1.0, "mixed", torch.float32, device)
    _, (grad,) = check_against_reference("roi_align", (features, boxes), (7,), backend, g=g)
    assert (grad == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_backward_is_deterministic(device):
    """Bit-identical on CPU. On CUDA the feature gradient is an atomicAdd scatter (documented): equal to rounding."""
    g = generator("roi_align determinism", device)
    features = make_features(g, 2, 64, 16, 16, "channels_last", torch.float32, device).requires_grad_()
    boxes = make_boxes(g, 2, 50, 16, 16, 1.0, "mixed", torch.float32, device)
    grad = randn(g, 2, 50, 64, 7, 7).to(device=device, dtype=torch.float32)
    first = torch.autograd.grad(samdetr_ops.roi_align(features, boxes), features, grad)[0]
    for _ in range(3):
        again = torch.autograd.grad(samdetr_ops.roi_align(features, boxes), features, grad)[0]
        if device == "cpu":
            assert torch.equal(first, again)
        else:
            torch.testing.assert_close(first, again, atol=1e-5, rtol=1e-5)
