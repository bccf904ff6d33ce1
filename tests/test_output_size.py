"""output_size as torchvision takes it, an int S or an (h, w) pair, non-square included, in every backend; and the
NaN-box rule under aligned=False (the legacy 1-pixel clamp must not turn a NaN box into a 1x1 read)."""
import os

import pytest
import torch

import samdetr_ops
from helpers import (
    BACKWARD_TOL,
    FORWARD_TOL,
    HAS_CUDA,
    assert_close,
    generator,
    make_boxes,
    make_features,
    make_points,
    randn,
    use,
)
from samdetr_ops import reference

# The compiled kernels on CPU (and CUDA when present); the Triton kernels through the interpreter on CPU (small
# shapes keep that fast) or compiled on CUDA.
CASES = [pytest.param("cpp", "cpu", id="cpp-cpu"), pytest.param("triton", "cpu", id="triton-cpu")]
if HAS_CUDA:
    CASES += [pytest.param("cpp", "cuda", id="cpp-cuda"), pytest.param("triton", "cuda", id="triton-cuda")]


def _skip_triton_on_cpu_without_interpreter(backend, device):
    if backend == "triton" and device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")


def _small_for_the_interpreter(backend, device, B, N):
    """The Triton interpreter runs each program as Python (~0.1 s each here): fewer RoIs keep it to seconds."""
    return (1, 2) if backend == "triton" and device == "cpu" else (B, N)


# The interpreter covers two non-square sizes (time); compiled backends all four.
ROI_ALIGN_CASES = [pytest.param(*case.values, size, id=f"{case.id}-{size}") for case in CASES
                   for size in ([(2, 5), (7, 3)] if case.id == "triton-cpu" else [(2, 5), (7, 3), [4, 4], (1, 6)])]


@pytest.mark.parametrize("backend,device,output_size", ROI_ALIGN_CASES)
@pytest.mark.parametrize("aligned,sampling_ratio,spatial_scale", [(True, -1, 1.0), (False, 2, 0.5)])
def test_roi_align_non_square_matches_torchvision(backend, device, output_size, aligned, sampling_ratio,
                                                  spatial_scale):
    _skip_triton_on_cpu_without_interpreter(backend, device)
    g = generator("roi_align hw", backend, output_size, aligned, sampling_ratio)
    (B, N), C, H, W = _small_for_the_interpreter(backend, device, 2, 4), 5, 9, 11
    S_h, S_w = output_size
    features = make_features(g, B, C, H, W, "channels_last", torch.float64, device).requires_grad_()
    boxes = make_boxes(g, B, N, H, W, spatial_scale, "mixed", torch.float64, device)
    grad = randn(g, B, N, C, S_h, S_w).to(device)
    with use(backend):
        out = samdetr_ops.roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned)
    expected = reference.roi_align(features, boxes, tuple(output_size), spatial_scale, sampling_ratio, aligned)
    assert out.shape == (B, N, C, S_h, S_w)
    assert_close(out, expected, FORWARD_TOL[torch.float64], "forward")
    (grad_features,) = torch.autograd.grad(out, features, grad)
    (expected_grad,) = torch.autograd.grad(expected, features, grad)
    assert_close(grad_features, expected_grad, BACKWARD_TOL[torch.float64], "grad features")


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("output_size", [(3, 6), (7, 2)], ids=str)
def test_semantic_align_non_square_matches_reference(backend, device, output_size):
    _skip_triton_on_cpu_without_interpreter(backend, device)
    g = generator("semantic_align hw", backend, output_size)
    (B, N), C, H, W, M = _small_for_the_interpreter(backend, device, 2, 3), 6, 10, 8, 5
    features = make_features(g, B, C, H, W, "channels_last", torch.float64, device).requires_grad_()
    boxes = make_boxes(g, B, N, H, W, 1.0, "mixed", torch.float64, device)
    points = make_points(g, B, N, M, 1.2, torch.float64, device).requires_grad_()
    logits = randn(g, B, N, M, C).to(device).requires_grad_()
    grad = randn(g, B, N, M, C).to(device)
    with use(backend):
        out = samdetr_ops.semantic_align(features, boxes, points, logits, output_size)
    expected = reference.semantic_align(features, boxes, points, logits, output_size)
    assert_close(out, expected, FORWARD_TOL[torch.float64], "forward")
    grads = torch.autograd.grad(out, (features, points, logits), grad)
    expected_grads = torch.autograd.grad(expected, (features, points, logits), grad)
    for name, actual, wanted in zip(("features", "points", "weight_logits"), grads, expected_grads):
        assert_close(actual, wanted, BACKWARD_TOL[torch.float64], f"grad {name}")


def test_int_and_square_pair_agree():
    g = generator("int vs pair")
    features = make_features(g, 1, 4, 6, 6, "channels_last", torch.float32)
    boxes = make_boxes(g, 1, 3, 6, 6)
    assert torch.equal(samdetr_ops.roi_align(features, boxes, 5), samdetr_ops.roi_align(features, boxes, (5, 5)))


def test_non_square_gradcheck_float64():
    g = generator("hw gradcheck")
    features = make_features(g, 1, 3, 6, 7, "channels_last", torch.float64).requires_grad_()
    boxes = make_boxes(g, 1, 2, 6, 7, 1.0, "mixed", torch.float64)
    points = make_points(g, 1, 2, 3, 0.9, torch.float64).requires_grad_()
    logits = randn(g, 1, 2, 3, 3).requires_grad_()
    with use("cpp"):
        assert torch.autograd.gradcheck(lambda f: samdetr_ops.roi_align(f, boxes, (2, 3)), (features,))
        assert torch.autograd.gradcheck(
            lambda f, p, w: samdetr_ops.semantic_align(f, boxes, p, w, (4, 2)), (features, points, logits))


@pytest.mark.parametrize("output_size", [0, (0, 3), (3,), (2, 3, 4), 2.5, (2.0, 3), "7", True])
def test_bad_output_size_is_named(output_size):
    g = generator("bad output size")
    features = make_features(g, 1, 2, 4, 4, "contiguous", torch.float32)
    boxes = make_boxes(g, 1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"`output_size` must be an int or an \(h, w\) pair of ints >= 1"):
        samdetr_ops.roi_align(features, boxes, output_size)
    with pytest.raises(ValueError, match=r"`output_size` must be an int or an \(h, w\) pair of ints >= 1"):
        samdetr_ops.semantic_align(features, boxes, torch.zeros(1, 2, 3, 2), torch.ones(1, 2, 3, 2), output_size)


def test_direct_op_call_checks_output_size():
    features, boxes = torch.randn(1, 2, 4, 4), torch.rand(1, 2, 4) * 3
    with pytest.raises(ValueError, match="`output_size` must be an int or an \\(h, w\\) pair of ints >= 1"):
        torch.ops.samdetr_ops.roi_align(features, boxes, [0, 3], 1.0, -1, True)
    # an int reaches the int[2] schema as (S, S)
    assert torch.ops.samdetr_ops.roi_align(features, boxes, 3, 1.0, -1, True).shape == (1, 2, 2, 3, 3)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("aligned", [False, True])
def test_nan_box_gives_zeros_even_without_alignment(backend, device, aligned):
    """With aligned=False torchvision clamps the box extent to at least 1 pixel; a NaN extent must not become 1
    (which would read a 1x1 region at the box corner): a NaN box contributes zeros, as with aligned=True."""
    _skip_triton_on_cpu_without_interpreter(backend, device)
    features = (torch.rand(1, 3, 5, 5, dtype=torch.float64) + 1).to(device).requires_grad_()
    boxes = torch.tensor([[[1.0, 1.0, float("nan"), float("nan")], [1.0, 1.0, 3.0, 3.0]]], dtype=torch.float64,
                         device=device)
    points = torch.zeros(1, 2, 2, 2, dtype=torch.float64, device=device)
    logits = torch.zeros(1, 2, 2, 3, dtype=torch.float64, device=device)
    with use(backend):
        rois = samdetr_ops.roi_align(features, boxes, 2, 1.0, -1, aligned)
        q = samdetr_ops.semantic_align(features, boxes, points, logits, 2, 1.0, -1, aligned)
    assert torch.equal(rois[0, 0], torch.zeros_like(rois[0, 0])) and rois[0, 1].abs().sum() > 0
    assert torch.equal(q[0, 0], torch.zeros_like(q[0, 0])) and q[0, 1].abs().sum() > 0
    (grad,) = torch.autograd.grad(rois[0, 0].sum() + q[0, 0].sum(), features)
    assert torch.equal(grad, torch.zeros_like(grad))
