"""float16 and bfloat16 in the CPU kernels: read and written in their precision, computed and accumulated in
float32, each gradient cast once.

Every input is drawn in float64 and rounded to the dtype; the expectation is the float32 reference on those same
rounded values (exact in float32) with the same rounded output gradient. The kernel computes in float32 from the
very same values, so it may differ from the expectation by float32 rounding (the float32 bounds of helpers.py)
plus one final rounding to the dtype: at most its unit roundoff u (2^-8 bfloat16, 2^-11 float16) relative, taken
twice here for the float32 error underneath the rounding.
"""
import pytest
import torch

import samdetr_ops
from helpers import (
    BACKWARD_TOL,
    FORWARD_TOL,
    assert_close,
    generator,
    make_boxes,
    make_cxcywh,
    make_features,
    make_points,
    randn,
    use,
)
from samdetr_ops import reference

DTYPES = [pytest.param(torch.float16, id="f16"), pytest.param(torch.bfloat16, id="bf16")]
UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def _tolerance(float32_tol, dtype, scale=1.0):
    return dict(atol=float32_tol["atol"] * scale, rtol=float32_tol["rtol"] * scale + 2 * UNIT_ROUNDOFF[dtype])


def _roi_inputs(g, B, C, H, W, N, layout):
    features = make_features(g, B, C, H, W, layout, torch.float64)
    return [features, make_boxes(g, B, N, H, W, 1.0, "mixed", torch.float64)]


def _semantic_inputs(g, B, C, H, W, N, M, layout):
    return _roi_inputs(g, B, C, H, W, N, layout) + [make_points(g, B, N, M, 1.2, torch.float64),
                                                    randn(g, B, N, M, C)]


def _pos_embed_inputs(g, B, N, M, D):
    return [make_cxcywh(g, B, N, torch.float64), make_points(g, B, N, M, 1.0, torch.float64), randn(g, B, N, M, D)]


# (op, input builder arguments, indices of the differentiable inputs, gradient tolerance scale for each)
CASES = [
    ("roi_align", (_roi_inputs, (2, 37, 9, 11, 6, "channels_last")), {0: 1.0}),
    ("roi_align", (_roi_inputs, (1, 8, 5, 4, 3, "contiguous")), {0: 1.0}),
    ("semantic_align", (_semantic_inputs, (2, 37, 9, 11, 6, 5, "channels_last")), {0: 1.0, 2: 1.0, 3: 1.0}),
    ("semantic_align", (_semantic_inputs, (1, 8, 5, 4, 3, 8, "contiguous")), {0: 1.0, 2: 1.0, 3: 1.0}),
    # d/d p of the embedding sums D/2 terms of O(2 pi): the same scaled bound as test_pos_embed.py
    ("salient_point_pos_embed", (_pos_embed_inputs, (2, 5, 4, 256)), {0: 256.0, 1: 256.0, 2: 1.0}),
    ("salient_point_pos_embed", (_pos_embed_inputs, (1, 3, 5, 34)), {0: 34.0, 1: 34.0, 2: 1.0}),  # odd D/2
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,build,grad_scales", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_low_precision_matches_float32_reference_on_rounded_inputs(op, build, grad_scales, dtype):
    builder, args = build
    g = generator("cpu dtypes", op, args, str(dtype))
    rounded = [t.to(dtype) for t in builder(g, *args)]
    low = [t.clone().requires_grad_(i in grad_scales) for i, t in enumerate(rounded)]
    exact = [t.float().requires_grad_(i in grad_scales) for i, t in enumerate(rounded)]
    with use("cpp"):
        out = getattr(samdetr_ops, op)(*low)
    expected = getattr(reference, op)(*exact)
    assert out.dtype == dtype and out.shape == expected.shape
    assert_close(out.float(), expected, _tolerance(FORWARD_TOL[torch.float32], dtype), "forward")

    grad_output = randn(g, *out.shape).to(dtype)
    wanted = sorted(grad_scales)
    grads = torch.autograd.grad(out, [low[i] for i in wanted], grad_output)
    expected_grads = torch.autograd.grad(expected, [exact[i] for i in wanted], grad_output.float())
    for i, actual, reference_grad in zip(wanted, grads, expected_grads):
        assert actual.dtype == dtype
        tol = _tolerance(BACKWARD_TOL[torch.float32], dtype, grad_scales[i])
        assert_close(actual.float(), reference_grad, tol, f"grad of input {i}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_low_precision_backward_is_deterministic(dtype):
    """Bit-identical run to run, as in float32: each task owns a channel slice of the float32 feature gradient."""
    g = generator("cpu dtypes determinism", str(dtype))
    inputs = [t.to(dtype) for t in _semantic_inputs(g, 2, 64, 16, 16, 40, 8, "channels_last")]
    differentiable = [inputs[0].requires_grad_(), inputs[2].requires_grad_(), inputs[3].requires_grad_()]
    grad_output = randn(g, 2, 40, 8, 64).to(dtype)
    first = torch.autograd.grad(samdetr_ops.semantic_align(*inputs), differentiable, grad_output)
    again = torch.autograd.grad(samdetr_ops.semantic_align(*inputs), differentiable, grad_output)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
