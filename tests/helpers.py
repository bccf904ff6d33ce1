"""Input generators and tolerances shared by the op tests. Inputs are fresh random draws (never zeros) from a
seeded generator, so a failure reproduces; SAMDETR_TEST_SEED changes the draw."""
import os
import zlib

import torch

import samdetr_ops

BASE_SEED = int(os.environ.get("SAMDETR_TEST_SEED", "20221"))

HAS_CUDA = torch.cuda.is_available()
# Parameter lists hold only what this machine can run, so no test cell is collected just to be skipped.
DEVICES = ["cpu", "cuda"] if HAS_CUDA else ["cpu"]
# (device, backend) pairs of the full test matrix: the compiled kernels on every device, and the Triton kernels
# where they run compiled (CUDA). On CPU the Triton kernels run in the interpreter, far too slowly for the full
# matrix: tests/test_triton.py covers them there with small shapes.
TARGETS = [("cpu", "cpp")] + ([("cuda", "cpp"), ("cuda", "triton")] if HAS_CUDA else [])
# The backends whose float64 gradcheck runs here (gradcheck_device says on which device).
BACKENDS = ["cpp", "triton"] if HAS_CUDA else ["cpp"]

# Absolute/relative tolerances against the reference, by dtype (see test docstrings for what is compared):
# float64 kernels do the same arithmetic as the reference in another order, so only rounding of ~1e-16 per op,
# summed over at most a few thousand terms, separates them; float32 likewise at ~6e-8 per op. Gradients of the
# features accumulate one term per (query, point, corner, sample) and so get a looser bound than the forward.
FORWARD_TOL = {torch.float64: dict(atol=1e-12, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=1e-5)}
BACKWARD_TOL = {torch.float64: dict(atol=1e-10, rtol=1e-9), torch.float32: dict(atol=2e-4, rtol=1e-4)}


def generator(*salt):
    """A generator seeded from BASE_SEED and the test's parameters (crc32: stable across processes)."""
    return torch.Generator().manual_seed(BASE_SEED * 7919 + zlib.crc32(repr(salt).encode()))


def rand(g, *shape, low=0.0, high=1.0, dtype=torch.float64):
    return torch.rand(*shape, generator=g, dtype=dtype) * (high - low) + low


def randn(g, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=g, dtype=dtype)


def make_features(g, B, C, H, W, layout="contiguous", dtype=torch.float32, device="cpu"):
    """(B, C, H, W) features in the given memory layout:
    contiguous     plain NCHW
    channels_last  a (B, H*W, C) token tensor viewed as (B, C, H, W), as a DETR encoder produces
    strided        every other channel of a wider tensor, spatially transposed twice: no dense layout at all
    """
    if layout == "contiguous":
        f = randn(g, B, C, H, W)
    elif layout == "channels_last":
        f = randn(g, B, H * W, C).transpose(1, 2).reshape(B, C, H, W)
    elif layout == "strided":  # cast before taking the view: .to() of a view returns a dense copy
        wide = randn(g, B, 2 * C, W, H + 1).to(device=device, dtype=dtype)
        return wide.transpose(2, 3)[:, ::2, :H]
    else:
        raise ValueError(layout)
    f = f.to(device=device, dtype=dtype)
    if layout == "channels_last":
        assert f.is_contiguous(memory_format=torch.channels_last) or min(C, H * W) <= 1
    return f


def make_boxes(g, B, N, H, W, spatial_scale=1.0, kind="mixed", dtype=torch.float32, device="cpu"):
    """(B, N, 4) x1 y1 x2 y2 in input pixels, for a feature map of H x W at `spatial_scale`.
    mixed     sizes from a tenth of a pixel to the whole map, centres up to 3 pixels outside it
    tiny      under half a feature pixel
    huge      10 to 60 times the map, so the adaptive sampling grid is large
    outside   wholly off the map
    flipped   x2 < x1 or y2 < y1
    """
    size = torch.tensor([W, H], dtype=torch.float64)
    if kind == "mixed":
        centre = rand(g, B, N, 2) * (size + 6) - 3
        wh = torch.exp(rand(g, B, N, 2, low=-2.3, high=0.0)) * size
    elif kind == "tiny":
        centre = rand(g, B, N, 2) * size
        wh = rand(g, B, N, 2, low=0.01, high=0.5)
    elif kind == "huge":
        centre = rand(g, B, N, 2) * size
        wh = rand(g, B, N, 2, low=10, high=60) * size
    elif kind == "outside":
        centre = size * 3 + rand(g, B, N, 2) * size
        wh = rand(g, B, N, 2, low=0.5, high=4)
    elif kind == "flipped":
        centre = rand(g, B, N, 2) * size
        wh = -rand(g, B, N, 2, low=0.5, high=4)
    else:
        raise ValueError(kind)
    boxes = torch.cat([centre - wh / 2, centre + wh / 2], dim=-1) / spatial_scale
    return boxes.to(device=device, dtype=dtype)


def make_points(g, B, N, M, spread=1.2, dtype=torch.float32, device="cpu"):
    """(B, N, M, 2) normalised (x, y), uniform in [-spread, spread] (beyond [-1, 1] = partly off the grid)."""
    return rand(g, B, N, M, 2, low=-spread, high=spread).to(device=device, dtype=dtype)


def make_cxcywh(g, B, N, dtype=torch.float32, device="cpu"):
    centre = rand(g, B, N, 2, low=0.05, high=0.95)
    wh = rand(g, B, N, 2, low=0.02, high=0.9)
    return torch.cat([centre, wh], -1).to(device=device, dtype=dtype)


def assert_close(actual, expected, tol, what=""):
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{what}: {m}")


def gradcheck_device(backend):
    return "cuda" if backend == "triton" else "cpu"


def check_against_reference(op, inputs, args=(), backend="cpp", grad_tol_scale=None, g=None):
    """Checks registered op `op` (samdetr_ops.OP_SPECS) on one backend against its reference, the way torchvision's
    RoIOpTester checks its ops: the output (shape, dtype, device, values) and the gradient of every differentiable
    input for one random output gradient, within FORWARD_TOL / BACKWARD_TOL of the inputs' dtype.

    inputs: the op's tensor arguments in order (any device, any dtype of the tolerance tables); args: the scalar
    arguments that follow; grad_tol_scale: {input name: factor} widening BACKWARD_TOL for a gradient that sums
    many terms (the caller says why); g: the generator of the output gradient. Returns (output, gradients)."""
    spec = samdetr_ops.OP_SPECS[op]
    names = spec.tensor_args
    assert len(inputs) == len(names), f"{op} takes the tensors {names}"
    leaves = [t.detach().requires_grad_(name in spec.differentiable) for name, t in zip(names, inputs)]
    wrt = [t for t in leaves if t.requires_grad]
    with samdetr_ops.use_backend(backend):
        out = spec.public(*leaves, *args)
    expected = spec.reference(*leaves, *args)
    dtype = leaves[0].dtype
    assert (out.shape, out.dtype, out.device) == (expected.shape, expected.dtype, expected.device), \
        f"{op}: got {out.shape} {out.dtype} on {out.device}, expected {expected.shape} {expected.dtype}"
    assert_close(out, expected, FORWARD_TOL[dtype], f"{op} forward ({backend})")
    g = g if g is not None else generator(op, "output gradient")
    grad_output = randn(g, *out.shape).to(device=out.device, dtype=dtype)
    grads = torch.autograd.grad(out, wrt, grad_output, allow_unused=True)
    expected_grads = torch.autograd.grad(expected, wrt, grad_output, allow_unused=True)
    differentiable = [name for name in names if name in spec.differentiable]
    for name, leaf, actual, wanted in zip(differentiable, wrt, grads, expected_grads):
        # The reference may return None for an input that did not influence a zero-size output: that is zeros.
        wanted = torch.zeros_like(leaf) if wanted is None else wanted
        assert actual is not None, f"{op}: no gradient for `{name}`"
        assert actual.shape == leaf.shape, f"{op}: gradient of `{name}` has shape {actual.shape}"
        factor = (grad_tol_scale or {}).get(name, 1)
        tol = {key: value * factor for key, value in BACKWARD_TOL[dtype].items()}
        assert_close(actual, wanted, tol, f"{op} gradient of `{name}` ({backend})")
    return out, grads


def use(backend):
    """`with use(backend):` runs a block on that backend."""
    return samdetr_ops.use_backend(backend)
