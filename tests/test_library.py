"""The ops as torch.library custom ops: opcheck (schema, fake kernels, autograd registration), and
torch.compile(fullgraph=True) giving the eager values and gradients."""
import pytest
import torch

import samdetr_ops
from helpers import (
    BACKWARD_TOL,
    DEVICES,
    FORWARD_TOL,
    assert_close,
    generator,
    make_boxes,
    make_cxcywh,
    make_features,
    make_points,
    randn,
)

pytestmark = pytest.mark.skipif(not samdetr_ops.has_extension(), reason="compiled extension not built")


def _sample_inputs(device, dtype=torch.float64, layout="channels_last"):
    g = generator("library", device, dtype, layout)
    B, C, H, W, N, M = 2, 5, 7, 9, 4, 3
    features = make_features(g, B, C, H, W, layout, dtype, device).requires_grad_()
    boxes = make_boxes(g, B, N, H, W, 1.0, "mixed", dtype, device)
    points = make_points(g, B, N, M, 1.2, dtype, device).requires_grad_()
    logits = randn(g, B, N, M, C).to(device=device, dtype=dtype).requires_grad_()
    cxcywh = make_cxcywh(g, B, N, dtype, device).requires_grad_()
    embed_logits = randn(g, B, N, M, 8).to(device=device, dtype=dtype).requires_grad_()
    return features, boxes, points, logits, cxcywh, embed_logits


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(device, layout):
    features, boxes, points, logits, cxcywh, embed_logits = _sample_inputs(device, layout=layout)
    ops = torch.ops.samdetr_ops
    torch.library.opcheck(ops.roi_align.default, (features, boxes, 4, 1.0, -1, True))
    torch.library.opcheck(ops.roi_align.default, (features, boxes, 3, 0.5, 2, False))
    torch.library.opcheck(ops.semantic_align.default, (features, boxes, points, logits, 4, 1.0, -1, True))
    torch.library.opcheck(ops.salient_point_pos_embed.default, (cxcywh, points, embed_logits, 10000.0))
    grad = torch.randn_like(logits)
    torch.library.opcheck(ops.semantic_align_backward.default,
                          (grad, features.detach(), boxes, points.detach(), logits.detach(), 4, 1.0, -1, True,
                           [True, True, True]))
    torch.library.opcheck(ops.roi_align_backward.default,
                          (torch.randn(2, 4, 5, 4, 4, dtype=features.dtype, device=device), boxes,
                           list(features.shape), 4, 1.0, -1, True))


def _model(features, boxes, points, logits, cxcywh, embed_logits):
    """A SAM-DETR-like use of all three ops, as one graph."""
    rois = samdetr_ops.roi_align(features, boxes, 4)                          # (B, N, C, 4, 4)
    q = samdetr_ops.semantic_align(features, boxes, points, logits, 4)          # (B, N, M, C)
    pos = samdetr_ops.salient_point_pos_embed(cxcywh, points, embed_logits)     # (B, N, M, 8)
    return rois.mean(dim=(-1, -2)).sum() + (q * q).sum() + pos.square().sum()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_torch_compile_fullgraph(device, dynamic):
    torch._dynamo.reset()
    inputs = _sample_inputs(device, torch.float32)
    differentiable = [t for t in inputs if t.requires_grad]
    eager = _model(*inputs)
    eager_grads = torch.autograd.grad(eager, differentiable)
    compiled = torch.compile(_model, fullgraph=True, dynamic=dynamic)(*inputs)
    compiled_grads = torch.autograd.grad(compiled, differentiable)
    assert_close(compiled, eager, FORWARD_TOL[torch.float32], "compiled value")
    for a, b in zip(compiled_grads, eager_grads):
        assert_close(a, b, BACKWARD_TOL[torch.float32], "compiled grad")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton ops under fake tensors / compile need CUDA")
def test_triton_ops_opcheck_and_compile():
    """The Triton ops are triton_op custom ops: opcheck passes and torch.compile traces into their kernels."""
    from samdetr_ops import triton as triton_backend  # noqa: F401  (registers samdetr_ops_triton::*)
    features, boxes, points, logits, cxcywh, embed_logits = _sample_inputs("cuda", torch.float32)
    ops = torch.ops.samdetr_ops_triton
    torch.library.opcheck(ops.roi_align.default, (features, boxes, [4, 4], 1.0, -1, True))
    torch.library.opcheck(ops.semantic_align.default, (features, boxes, points, logits, [4, 4], 1.0, -1, True))
    torch.library.opcheck(ops.salient_point_pos_embed.default, (cxcywh, points, embed_logits, 10000.0))
    inputs = (features, boxes, points, logits, cxcywh, embed_logits)
    differentiable = [t for t in inputs if t.requires_grad]
    torch._dynamo.reset()
    with samdetr_ops.use_backend("triton"):
        eager = _model(*inputs)
        compiled = torch.compile(_model, fullgraph=True)(*inputs)
    assert_close(compiled, eager, FORWARD_TOL[torch.float32], "compiled value")
    for a, b in zip(torch.autograd.grad(compiled, differentiable), torch.autograd.grad(eager, differentiable)):
        assert_close(a, b, BACKWARD_TOL[torch.float32], "compiled grad")
