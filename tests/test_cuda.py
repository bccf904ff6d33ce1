"""What is CUDA-specific: the kernels are compiled and registered (checked on every machine where the extension
was built with CUDA, GPU or not), half/bfloat16 accuracy, deterministic mode, CUDA graphs and autocast."""
import os

import pytest
import torch

import samdetr_ops
from samdetr_ops import reference
from helpers import HAS_CUDA, generator, make_boxes, make_cxcywh, make_features, make_points, randn

OPS = ("roi_align", "semantic_align", "salient_point_pos_embed")
BUILT_WITH_CUDA = HAS_CUDA or os.environ.get("FORCE_CUDA") == "1"
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")


@pytest.mark.skipif(not BUILT_WITH_CUDA, reason="extension built without CUDA (set FORCE_CUDA=1)")
@pytest.mark.parametrize("op", OPS)
def test_cuda_kernels_are_registered(op):
    for name in (op, op + "_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"samdetr_ops::{name}", "CUDA"), name


def _inputs(op, dtype, seed=0):
    g = generator("cuda", op, dtype, seed)
    B, C, H, W, N, M = 2, 64, 25, 38, 40, 8
    f = make_features(g, B, C, H, W, "channels_last", torch.float32, "cuda")
    boxes = make_boxes(g, B, N, H, W, 1.0, "mixed", torch.float32, "cuda")
    points = make_points(g, B, N, M, 1.1, torch.float32, "cuda")
    if op == "roi_align":
        return [f, boxes], [0]
    if op == "semantic_align":
        return [f, boxes, points, randn(g, B, N, M, C).cuda()], [0, 2, 3]
    return [make_cxcywh(g, B, N, torch.float32, "cuda"), points, randn(g, B, N, M, C).cuda()], [0, 1, 2]


def _forward_and_grads(fn, inputs, grad_index, dtype, grad_seed=1):
    xs = [t.to(dtype).detach().requires_grad_(i in grad_index) for i, t in enumerate(inputs)]
    out = fn(*xs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out)
    grads = torch.autograd.grad(out, [xs[i] for i in grad_index], g)
    return [out.float()] + [t.float() for t in grads]


@needs_gpu
@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_low_precision_error_is_within_twice_the_references(op, dtype, backend):
    """float16/bfloat16 are judged as flash-attention's tests judge them: the fused op's error against the
    float32 reference must be at most twice the error of the reference sequence itself run in that dtype (plus
    a tiny floor for outputs the reference gets exactly right). The kernels accumulate in float32, so they are
    usually well inside it."""
    inputs, grad_index = _inputs(op, dtype)
    exact = _forward_and_grads(getattr(reference, op), inputs, grad_index, torch.float32)
    with samdetr_ops.use_backend(backend):
        fused = _forward_and_grads(getattr(samdetr_ops, op), inputs, grad_index, dtype)
    try:
        low = _forward_and_grads(getattr(reference, op), inputs, grad_index, dtype)
    except (RuntimeError, NotImplementedError):  # the reference lacks a kernel in this dtype: round its result
        low = [t.to(dtype).float() for t in exact]
    for name, f, lo, ex in zip(["output"] + [f"grad {i}" for i in grad_index], fused, low, exact):
        bound = 2 * (lo - ex).abs().max().item() + 1e-3 * ex.abs().max().item()
        err = (f - ex).abs().max().item()
        assert err <= bound, f"{op} {dtype} {name}: error {err:.3g} > bound {bound:.3g}"


@needs_gpu
@pytest.mark.parametrize("op", ["roi_align", "semantic_align"])
def test_deterministic_mode_raises_for_the_atomic_backward(op):
    inputs, grad_index = _inputs(op, torch.float32)
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="atomicAdd"):
            _forward_and_grads(getattr(samdetr_ops, op), inputs, grad_index, torch.float32)
    finally:
        torch.use_deterministic_algorithms(False)


@needs_gpu
def test_pos_embed_backward_is_deterministic_on_cuda():
    inputs, grad_index = _inputs("salient_point_pos_embed", torch.float32)
    first = _forward_and_grads(samdetr_ops.salient_point_pos_embed, inputs, grad_index, torch.float32)
    again = _forward_and_grads(samdetr_ops.salient_point_pos_embed, inputs, grad_index, torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


@needs_gpu
def test_cuda_graph_capture_and_replay():
    """No host syncs and no allocations outside the caching allocator: the forward and backward capture."""
    inputs, grad_index = _inputs("semantic_align", torch.float32)
    static = [t.clone().requires_grad_(i in grad_index) for i, t in enumerate(inputs)]
    grad = torch.randn(2, 40, 8, 64, device="cuda")

    def step():
        out = samdetr_ops.semantic_align(*static)
        return (out,) + torch.autograd.grad(out, [static[i] for i in grad_index], grad)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    new = _inputs("semantic_align", torch.float32, seed=7)[0]
    with torch.no_grad():
        for s, n in zip(static, new):
            s.copy_(n)
    graph.replay()
    torch.cuda.synchronize()
    eager = step()
    for a, b in zip(captured, eager):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@needs_gpu
def test_autocast_computes_in_float32():
    inputs, _ = _inputs("semantic_align", torch.float32)
    features, boxes, points, logits = inputs
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = samdetr_ops.semantic_align(features.bfloat16(), boxes, points.bfloat16(), logits)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference.semantic_align(features.bfloat16().float(), boxes,
                                                             points.bfloat16().float(), logits),
                               atol=1e-4, rtol=1e-4)
