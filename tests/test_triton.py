"""The Triton backend against the reference. Without a GPU the kernels run in the Triton interpreter
(TRITON_INTERPRET=1, set by conftest.py), which executes them in Python: shapes stay small so the interpreter stays
quick, while still covering every box kind, point range, memory layout and zero size. With a GPU the full matrix
of test_roi_align.py / test_semantic_align.py / test_pos_embed.py runs the Triton backend too."""
import os
import warnings

import pytest
import torch

import samdetr_ops
from helpers import (
    BACKWARD_TOL,
    assert_close,
    check_against_reference,
    generator,
    make_boxes,
    make_cxcywh,
    make_features,
    make_points,
    randn,
)

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="Triton on CPU needs TRITON_INTERPRET=1")


def _check(op, inputs, args=()):
    """The op on the Triton backend against its reference: output and every gradient (helpers' shared checker)."""
    check_against_reference(op, inputs, args, backend="triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["mixed", "tiny", "huge", "outside", "flipped"])
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("aligned,sampling_ratio,scale", [(True, -1, 1.0), (False, 2, 0.5)])
def test_roi_align(dtype, kind, layout, aligned, sampling_ratio, scale):
    g = generator("triton roi_align", dtype, kind, layout, aligned)
    B, C, H, W, N = 2, 6, 5, 7, 2
    features = make_features(g, B, C, H, W, layout, dtype, DEVICE)
    boxes = make_boxes(g, B, N, H, W, scale, kind, dtype, DEVICE)
    _check("roi_align", [features, boxes], (3, scale, sampling_ratio, aligned))


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
    _check("semantic_align", [features, boxes, points, logits], (4,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("D", [2, 6, 16])
def test_salient_point_pos_embed(dtype, D):
    g = generator("triton pos_embed", dtype, D)
    B, N, M = 2, 3, 4
    inputs = [make_cxcywh(g, B, N, dtype, DEVICE), make_points(g, B, N, M, 1.2, dtype, DEVICE),
              randn(g, B, N, M, D).to(DEVICE, dtype)]
    _check("salient_point_pos_embed", inputs, (20.0,))


@pytest.mark.parametrize("shape", [(0, 2, 3, 4, 4), (2, 0, 3, 4, 4), (2, 2, 3, 0, 4)], ids=str)
def test_zero_size(shape):
    B, N, C, H, W = shape
    g = generator("triton zero", shape)
    features = make_features(g, B, C, H, W, "contiguous", torch.float32, DEVICE)
    boxes = make_boxes(g, B, N, max(H, 1), W, 1.0, "mixed", torch.float32, DEVICE)
    points = make_points(g, B, N, 3, 1.0, torch.float32, DEVICE)
    logits = randn(g, B, N, 3, C).to(DEVICE, torch.float32)
    _check("roi_align", [features, boxes], (3,))
    _check("semantic_align", [features, boxes, points, logits], (3,))


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
    """The Triton backend asked for tensors it cannot run on raises, naming the reason (it never falls back)."""
    g = generator("triton unavailable")
    features = make_features(g, 1, 2, 4, 4, "contiguous", torch.float32, "cpu")
    boxes = make_boxes(g, 1, 2, 4, 4, 1.0, "mixed", torch.float32, "cpu")
    with samdetr_ops.use_backend("triton"), pytest.raises(RuntimeError, match="no Triton support for meta"):
        samdetr_ops.roi_align(features.to("meta"), boxes.to("meta"), 2)
    if os.environ.get("TRITON_INTERPRET") != "1":  # a GPU machine: CPU tensors need the interpreter
        with samdetr_ops.use_backend("triton"), pytest.raises(RuntimeError, match="only under the interpreter"):
            samdetr_ops.roi_align(features, boxes, 2)


def _semantic_inputs(seed, C=5, dtype=torch.float32):
    g = generator("triton semantic inputs", seed, C, dtype)
    B, H, W, N, M = 2, 6, 7, 3, 4
    return [make_features(g, B, C, H, W, "channels_last", dtype, DEVICE),
            make_boxes(g, B, N, H, W, 1.0, "mixed", dtype, DEVICE), make_points(g, B, N, M, 1.1, dtype, DEVICE),
            randn(g, B, N, M, C).to(DEVICE, dtype)]


@pytest.mark.parametrize("mask", [(True, False, False), (False, True, False), (False, False, True),
                                  (False, True, True)], ids=str)
def test_semantic_align_backward_computes_only_what_is_asked(mask):
    """output_mask: each gradient asked for equals the full backward's; the others are not computed (they come
    back as zeros, as from the compiled op, instead of the full backward's non-zero values)."""
    from samdetr_ops.triton.semantic_align import semantic_align_backward

    features, boxes, points, logits = _semantic_inputs("mask")
    grad = torch.randn(logits.shape, generator=torch.Generator().manual_seed(3)).to(logits)
    full = semantic_align_backward(grad, features, boxes, points, logits, [3, 2], 1.0, -1, True, [True, True, True])
    part = semantic_align_backward(grad, features, boxes, points, logits, [3, 2], 1.0, -1, True, list(mask))
    for name, asked, f, p in zip(["features", "points", "weight_logits"], mask, full, part):
        assert f.abs().sum() > 0, name  # the inputs make every gradient non-zero
        if asked:
            assert_close(p, f, BACKWARD_TOL[torch.float32], f"grad {name}")
        else:
            assert (p == 0).all(), f"grad {name} was computed though not asked for"


def _backward_of(op, requires_grad):
    """Runs op forward and backward through the Triton backend, inputs requiring grad as given."""
    if op == "salient_point_pos_embed":
        g = generator("triton determinism")
        inputs = [make_cxcywh(g, 2, 3, torch.float32, DEVICE), make_points(g, 2, 3, 4, 1.0, torch.float32, DEVICE),
                  randn(g, 2, 3, 4, 6).to(DEVICE, torch.float32)]
    else:
        inputs = _semantic_inputs("determinism")
        if op == "roi_align":
            inputs = inputs[:2]
    xs = [t.detach().requires_grad_(r) for t, r in zip(inputs, requires_grad)]
    with samdetr_ops.use_backend("triton"):
        out = getattr(samdetr_ops, op)(*xs, 3) if op != "salient_point_pos_embed" else \
            samdetr_ops.salient_point_pos_embed(*xs)
    out.sum().backward()


ATOMIC = [("roi_align", (True, False)), ("semantic_align", (True, False, True, True))]
ATOMIC_FREE = [("semantic_align", (False, False, True, True)), ("salient_point_pos_embed", (True, True, True))]


@pytest.mark.parametrize("warn_only", [False, True], ids=["strict", "warn_only"])
@pytest.mark.parametrize("op,requires_grad", ATOMIC + ATOMIC_FREE,
                         ids=["roi_align", "semantic_align", "semantic_align_no_features", "pos_embed"])
def test_deterministic_mode(op, requires_grad, warn_only):
    """As the CUDA kernels: under torch.use_deterministic_algorithms(True) the atomically scattered feature
    gradient raises (warns with warn_only=True); the atomic-free gradients neither raise nor warn. (Raised under
    the interpreter too, which runs the same atomic code, only in order.)"""
    atomic = (op, requires_grad) in ATOMIC
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if atomic and not warn_only:
                with pytest.raises(RuntimeError, match="accumulated with atomic adds"):
                    _backward_of(op, requires_grad)
            else:
                _backward_of(op, requires_grad)
    finally:
        torch.use_deterministic_algorithms(False)
    warned = any("accumulated with atomic adds" in str(w.message) for w in caught)
    assert warned == (atomic and warn_only)


def test_first_call_at_a_new_shape_gives_the_right_gradient():
    """On a GPU the first call for a new channel count autotunes; a kernel that accumulates with atomics must not
    run once per config into the same buffer (the gradient would come back multiplied). C = 37 is used by no
    other test, so this is the first call for it."""
    inputs = _semantic_inputs("first call", C=37)
    _check("semantic_align", inputs, (3,))
    _check("roi_align", inputs[:2], (3,))


def test_float64_scalars_keep_their_precision():
    """spatial_scale and log2(temperature) reach the kernels as float64 (a Python float passed plainly to a
    Triton kernel becomes a 32-bit float: ~3e-8 off at D=16, far outside the float64 tolerance). 1/3 is not a
    power of two, so a 32-bit scale would show."""
    g = generator("triton float64 scalars")
    B, C, H, W, N, M = 1, 4, 9, 9, 3, 2
    features = make_features(g, B, C, H, W, "channels_last", torch.float64, DEVICE)
    boxes = make_boxes(g, B, N, H, W, 1 / 3, "mixed", torch.float64, DEVICE)
    _check("roi_align", [features, boxes], (3, 1 / 3, -1, True))
    points = make_points(g, B, N, M, 1.0, torch.float64, DEVICE)
    inputs = [make_cxcywh(g, B, N, torch.float64, DEVICE), points, randn(g, B, N, M, 16).to(DEVICE, torch.float64)]
    _check("salient_point_pos_embed", inputs, (10000.0,))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter computes NaN * 0
def test_nan_box_unaligned_gives_zeros():
    """aligned=False clamps a box to at least 1x1: a NaN corner must still make the box read nothing (the
    finiteness test comes before the clamp; a GPU's max(NaN, 1) is 1)."""
    g = generator("triton nan unaligned")
    features = make_features(g, 1, 4, 6, 6, "channels_last", torch.float32, DEVICE)
    boxes = torch.tensor([[[1.0, 1.0, float("nan"), float("nan")], [1.0, 1.0, 4.0, 4.0]]], device=DEVICE)
    with samdetr_ops.use_backend("triton"):
        rois = samdetr_ops.roi_align(features, boxes, 3, aligned=False)
    assert (rois[0, 0] == 0).all() and (rois[0, 1] != 0).any()


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
        fn, inputs = (lambda f, p, lg: samdetr_ops.semantic_align(f, boxes, p, lg, 3)), (features, points, logits)
    else:
        cxcywh = make_cxcywh(g, B, N, torch.float64, DEVICE).requires_grad_()
        embed_logits = randn(g, B, N, M, 6).to(DEVICE, torch.float64).requires_grad_()
        fn = lambda b, p, lg: samdetr_ops.salient_point_pos_embed(b, p, lg, 30.0)  # noqa: E731
        inputs = (cxcywh, points, embed_logits)
    with samdetr_ops.use_backend("triton"):
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
