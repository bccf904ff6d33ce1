"""The Triton backend against the reference. Without a GPU the kernels run in the Triton interpreter
(TRITON_INTERPRET=1, set by conftest.py), which executes them in Python: shapes stay small so the interpreter stays
quick, while still covering every box kind, point range, memory layout and zero size. With a GPU the full matrix
of test_roi_align.py / test_semantic_align.py / test_pos_embed.py runs the Triton backend too."""
import os

import pytest
import torch

import samdetr_ops
from samdetr_ops import reference
from helpers import (BACKWARD_TOL, FORWARD_TOL, assert_close, generator, make_boxes, make_cxcywh, make_features,
                     make_points, randn)

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="Triton on CPU needs TRITON_INTERPRET=1")


def _check(op, inputs, grad_index, dtype, args=()):
    xs = [t.detach().requires_grad_(i in grad_index) for i, t in enumerate(inputs)]
    with samdetr_ops.use_backend("triton"):
        out = getattr(samdetr_ops, op)(*xs, *args)
    expected = getattr(reference, op)(*xs, *args)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    assert_close(out, expected, FORWARD_TOL[dtype], f"{op} forward")
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=dtype).to(out.device)
    wrt = [xs[i] for i in grad_index]
    for i, a, b in zip(grad_index, torch.autograd.grad(out, wrt, grad), torch.autograd.grad(expected, wrt, grad)):
        assert_close(a, b, BACKWARD_TOL[dtype], f"{op} grad of input {i}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["mixed", "tiny", "huge", "outside", "flipped"])
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("aligned,sampling_ratio,scale", [(True, -1, 1.0), (False, 2, 0.5)])
def test_roi_align(dtype, kind, layout, aligned, sampling_ratio, scale):
    g = generator("triton roi_align", dtype, kind, layout, aligned)
    B, C, H, W, N = 2, 6, 5, 7, 2
    features = make_features(g, B, C, H, W, layout, dtype, DEVICE)
    boxes = make_boxes(g, B, N, H, W, scale, kind, dtype, DEVICE)
    _check("roi_align", [features, boxes], [0], dtype, (3, scale, sampling_ratio, aligned))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["mixed", "tiny", "huge", "outside", "flipped"])
@pytest.mark.parametrize("spread", [1.0, 1.6])
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_semantic_align(dtype, kind, spread, layout):
    g = generator("triton semantic_align", dtype, kind, spread, layout)
    B, C, H, W, N, M = 2, 5, 6, 7, 2, 3
    features = make_features(g, B, C, H, W, layout, dtype, DEVICE)
    boxes = make_boxes(g, B, N, H, W, 1.0, kind, dtype, DEVICE)
    points = make_points(g, B, N, M, spread, dtype, DEVICE)
    logits = randn(g, B, N, M, C).to(DEVICE, dtype)
    _check("semantic_align", [features, boxes, points, logits], [0, 2, 3], dtype, (4,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("D", [2, 6, 16])
def test_salient_point_pos_embed(dtype, D):
    g = generator("triton pos_embed", dtype, D)
    B, N, M = 2, 3, 4
    inputs = [make_cxcywh(g, B, N, dtype, DEVICE), make_points(g, B, N, M, 1.2, dtype, DEVICE),
              randn(g, B, N, M, D).to(DEVICE, dtype)]
    _check("salient_point_pos_embed", inputs, [0, 1, 2], dtype, (20.0,))


@pytest.mark.parametrize("shape", [(0, 2, 3, 4, 4), (2, 0, 3, 4, 4), (2, 2, 3, 0, 4)], ids=str)
def test_zero_size(shape):
    B, N, C, H, W = shape
    g = generator("triton zero", shape)
    features = make_features(g, B, C, H, W, "contiguous", torch.float32, DEVICE)
    boxes = make_boxes(g, B, N, max(H, 1), W, 1.0, "mixed", torch.float32, DEVICE)
    points = make_points(g, B, N, 3, 1.0, torch.float32, DEVICE)
    logits = randn(g, B, N, 3, C).to(DEVICE, torch.float32)
    _check("roi_align", [features, boxes], [0], torch.float32, (3,))
    _check("semantic_align", [features, boxes, points, logits], [0, 2, 3], torch.float32, (3,))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter computes NaN * 0
def test_nonfinite_boxes_and_points_give_zeros():
    g = generator("triton nan")
    features = make_features(g, 1, 4, 6, 6, "channels_last", torch.float32, DEVICE)
    boxes = torch.tensor([[[float("nan"), 0, 3, 3], [0, 0, float("inf"), 2], [1, 1, 4, 4]]], device=DEVICE)
    points = make_points(g, 1, 3, 2, 1.0, torch.float32, DEVICE)
    points[0, 2, 0] = float("nan")
    logits = randn(g, 1, 3, 2, 4).to(DEVICE, torch.float32)
    with samdetr_ops.use_backend("triton"):
        rois = samdetr_ops.roi_align(features, boxes, 3)
        q = samdetr_ops.semantic_align(features, boxes, points, logits, 3)
    assert (rois[0, :2] == 0).all() and torch.isfinite(rois).all()
    assert (q[0, :2] == 0).all() and (q[0, 2, 0] == 0).all() and torch.isfinite(q).all()


def test_unavailable_device_raises():
    if DEVICE == "cuda":
        pytest.skip("on a GPU machine CPU tensors have no Triton backend unless interpreted")
    from samdetr_ops import triton as triton_backend
    assert triton_backend.get("semantic_align", torch.device("cpu")) is not None
    assert "no Triton support for meta" in triton_backend.unavailable_reason(torch.device("meta"))


@pytest.mark.parametrize("op", ["roi_align", "semantic_align", "salient_point_pos_embed"])
def test_gradcheck_float64(op):
    """float64 gradcheck of the Triton kernels. fast_mode checks the Jacobian along random directions, which keeps
    the interpreter to a few dozen forward calls instead of one per input element."""
    g = generator("triton gradcheck", op)
    B, C, H, W, N, M = 1, 3, 5, 6, 2, 3
    features = make_features(g, B, C, H, W, "channels_last", torch.float64, DEVICE).requires_grad_()
    boxes = make_boxes(g, B, N, H, W, 1.0, "mixed", torch.float64, DEVICE)
    points = make_points(g, B, N, M, 1.1, torch.float64, DEVICE).requires_grad_()
    logits = randn(g, B, N, M, C).to(DEVICE, torch.float64).requires_grad_()
    if op == "roi_align":
        fn, inputs = (lambda f: samdetr_ops.roi_align(f, boxes, 3)), (features,)
    elif op == "semantic_align":
        fn, inputs = (lambda f, p, l: samdetr_ops.semantic_align(f, boxes, p, l, 3)), (features, points, logits)
    else:
        cxcywh = make_cxcywh(g, B, N, torch.float64, DEVICE).requires_grad_()
        embed_logits = randn(g, B, N, M, 6).to(DEVICE, torch.float64).requires_grad_()
        fn = lambda b, p, l: samdetr_ops.salient_point_pos_embed(b, p, l, 30.0)  # noqa: E731
        inputs = (cxcywh, points, embed_logits)
    with samdetr_ops.use_backend("triton"):
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
