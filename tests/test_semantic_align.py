"""samdetr_ops.semantic_align against the unfused roi_align -> grid_sample -> permute -> sigmoid-mul sequence."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import samdetr_ops
from helpers import (
    BACKENDS,
    DEVICES,
    TARGETS,
    check_against_reference,
    generator,
    gradcheck_device,
    make_boxes,
    make_features,
    make_points,
    randn,
)

SHAPES = [  # B, C, H, W, N, M, S
    (2, 8, 13, 17, 5, 8, 7),
    (1, 3, 4, 4, 3, 1, 1),     # a 1x1 RoI grid
    (3, 37, 9, 6, 4, 5, 4),    # channels not a multiple of the CPU channel block
]


def _inputs(g, shape, layout, kind, spread, scale, dtype, device):
    B, C, H, W, N, M, S = shape
    features = make_features(g, B, C, H, W, layout, dtype, device).requires_grad_()
    boxes = make_boxes(g, B, N, H, W, scale, kind, dtype, device)
    points = make_points(g, B, N, M, spread, dtype, device).requires_grad_()
    logits = randn(g, B, N, M, C).to(device=device, dtype=dtype).requires_grad_()
    return features, boxes, points, logits


@pytest.mark.parametrize("device,backend", TARGETS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("kind", ["mixed", "tiny", "huge", "outside", "flipped"])
@pytest.mark.parametrize("spread", [1.0, 1.6], ids=["in-grid", "beyond-grid"])
@pytest.mark.parametrize("aligned,sampling_ratio,spatial_scale", [(True, -1, 1.0), (False, 2, 0.25)])
def test_forward_and_backward_match_reference(device, backend, dtype, shape, layout, kind, spread, aligned,
                                              sampling_ratio, spatial_scale):
    g = generator("semantic_align", device, dtype, shape, layout, kind, spread, aligned, sampling_ratio)
    inputs = _inputs(g, shape, layout, kind, spread, spatial_scale, dtype, device)
    check_against_reference("semantic_align", inputs, (shape[-1], spatial_scale, sampling_ratio, aligned), backend,
                            g=g)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("aligned,sampling_ratio", [(True, -1), (False, 2)])
def test_gradcheck_float64(backend, aligned, sampling_ratio):
    g = generator("semantic_align gradcheck", aligned, sampling_ratio)
    features, boxes, points, logits = _inputs(g, (2, 3, 6, 7, 3, 4, 4), "channels_last", "mixed", 1.2, 1.0,
                                              torch.float64, gradcheck_device(backend))
    def fn(f, p, w):
        return samdetr_ops.semantic_align(f, boxes, p, w, 4, 1.0, sampling_ratio, aligned)

    with samdetr_ops.use_backend(backend):
        assert torch.autograd.gradcheck(fn, (features, points, logits))


class _RecordBackwardCalls(TorchDispatchMode):
    """Records (output_mask, outputs) of every semantic_align_backward op call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.name().endswith("::semantic_align_backward"):
            self.calls.append((list(args[-1]), out))
        return out


@pytest.mark.parametrize("device,backend", TARGETS)
@pytest.mark.parametrize("wanted", [(True, False, False), (False, True, False), (False, False, True),
                                    (True, False, True)], ids=["features", "points", "logits", "features+logits"])
def test_partial_gradients(device, backend, wanted):
    """The backward op is asked for exactly the gradients autograd needs (its output_mask), leaves the others
    uncomputed (zeros, where the full backward's are not), and gives the requested ones as the full backward does."""
    g = generator("semantic_align partial", device, wanted)
    features, boxes, points, logits = _inputs(g, (2, 16, 8, 9, 6, 8, 7), "channels_last", "mixed", 1.1, 1.0,
                                              torch.float64, device)
    differentiable = (features, points, logits)
    with samdetr_ops.use_backend(backend):
        full = torch.autograd.grad(samdetr_ops.semantic_align(features, boxes, points, logits).sum(), differentiable)
        chosen = [t for t, w in zip(differentiable, wanted) if w]
        out = samdetr_ops.semantic_align(features, boxes, points, logits).sum()
        with _RecordBackwardCalls() as recorder:
            partial = torch.autograd.grad(out, chosen)
    assert len(recorder.calls) == 1, recorder.calls
    mask, computed = recorder.calls[0]
    assert mask == list(wanted)
    for name, w, grad_full, grad_computed in zip(("features", "points", "weight_logits"), wanted, full, computed):
        assert grad_full.abs().max() > 0, name
        if not w:
            assert (grad_computed == 0).all(), f"the gradient of `{name}` was computed though not requested"
    for grad_partial, grad_full in zip(partial, [f for f, w in zip(full, wanted) if w]):
        if device == "cuda":  # the feature gradient is a sum of atomics in varying order: its last bits vary
            torch.testing.assert_close(grad_partial, grad_full, rtol=1e-12, atol=1e-15)
        else:
            assert torch.equal(grad_partial, grad_full)


@pytest.mark.parametrize("device", DEVICES)
def test_nonfinite_and_absurd_inputs_are_safe(device):
    g = generator("semantic_align absurd", device)
    features, boxes, points, logits = _inputs(g, (1, 4, 8, 8, 6, 4, 7), "channels_last", "mixed", 1.0, 1.0,
                                              torch.float64, device)
    boxes = boxes.clone()
    boxes[0, 0] = float("nan")
    boxes[0, 1] = torch.tensor([-1e9, -1e9, 1e9, 1e9])
    boxes[0, 2, 2] = float("inf")
    points = points.detach().clone()
    points[0, 3, 0] = float("nan")
    points[0, 3, 1] = torch.tensor([1e30, -1e30])
    points[0, 3, 2] = torch.tensor([float("inf"), 0.0])
    points.requires_grad_()
    out = samdetr_ops.semantic_align(features, boxes, points, logits)
    assert torch.isfinite(out).all()
    assert (out[0, 0] == 0).all() and (out[0, 2] == 0).all(), "non-finite boxes give zeros"
    assert (out[0, 3, :3] == 0).all(), "points off the grid (or NaN) give zeros"
    grads = torch.autograd.grad(out.sum(), (features, points, logits))
    assert all(torch.isfinite(t).all() for t in grads)


@pytest.mark.parametrize("device,backend", TARGETS)
@pytest.mark.parametrize("B,N,M,C,H", [(0, 3, 8, 4, 5), (2, 0, 8, 4, 5), (2, 3, 0, 4, 5), (2, 3, 8, 0, 5),
                                       (2, 3, 8, 4, 0)])
def test_zero_size(device, backend, B, N, M, C, H):
    g = generator("semantic_align zero", device, B, N, M, C, H)
    inputs = _inputs(g, (B, C, H, 5, N, M, 7), "contiguous", "mixed", 1.0, 1.0, torch.float32, device)
    out, grads = check_against_reference("semantic_align", inputs, (7,), backend, g=g)
    assert out.shape == (B, N, M, C)
    assert all(torch.isfinite(grad).all() for grad in grads)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_is_deterministic(device):
    """Bit-identical on CPU. On CUDA the point and logit gradients are bit-identical (no atomics) and the feature
    gradient, an atomicAdd scatter (documented), is equal to rounding."""
    g = generator("semantic_align determinism", device)
    inputs = _inputs(g, (2, 64, 16, 16, 50, 8, 7), "channels_last", "mixed", 1.0, 1.0, torch.float32, device)
    grad = randn(g, 2, 50, 8, 64).to(device=device, dtype=torch.float32)
    differentiable = (inputs[0], inputs[2], inputs[3])
    first = torch.autograd.grad(samdetr_ops.semantic_align(*inputs), differentiable, grad)
    for _ in range(3):
        again = torch.autograd.grad(samdetr_ops.semantic_align(*inputs), differentiable, grad)
        assert torch.equal(first[1], again[1]) and torch.equal(first[2], again[2])
        if device == "cpu":
            assert torch.equal(first[0], again[0])
        else:
            torch.testing.assert_close(first[0], again[0], atol=1e-5, rtol=1e-5)
