"""samdetr_ops.salient_point_pos_embed against the unfused sine embedding * sigmoid sequence."""
import pytest
import torch

import samdetr_ops
from helpers import (
    BACKENDS,
    DEVICES,
    TARGETS,
    check_against_reference,
    generator,
    gradcheck_device,
    make_cxcywh,
    make_points,
    randn,
)


def _inputs(g, B, N, M, D, spread, dtype, device):
    boxes = make_cxcywh(g, B, N, dtype, device).requires_grad_()
    points = make_points(g, B, N, M, spread, dtype, device).requires_grad_()
    logits = randn(g, B, N, M, D).to(device=device, dtype=dtype).requires_grad_()
    return boxes, points, logits


@pytest.mark.parametrize("device,backend", TARGETS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("B,N,M,D", [(2, 7, 8, 256), (1, 3, 5, 6), (3, 2, 1, 2), (2, 4, 3, 34)], ids=str)
@pytest.mark.parametrize("temperature", [10000.0, 20.0])
@pytest.mark.parametrize("spread", [1.0, 1.5])
def test_forward_and_backward_match_reference(device, backend, dtype, B, N, M, D, temperature, spread):
    g = generator("pos_embed", device, dtype, B, N, M, D, temperature, spread)
    inputs = _inputs(g, B, N, M, D, spread, dtype, device)
    # d/d p of sin(p * 2 pi * f) is O(2 pi) with f up to 1, summed over D/2 features: the box and point gradients
    # get a bound D times wider
    check_against_reference("salient_point_pos_embed", inputs, (temperature,), backend,
                            grad_tol_scale={"boxes_cxcywh": D, "points": D}, g=g)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("D", [2, 6, 8])
def test_gradcheck_float64(backend, D):
    g = generator("pos_embed gradcheck", D)
    inputs = _inputs(g, 2, 3, 4, D, 1.0, torch.float64, gradcheck_device(backend))
    with samdetr_ops.use_backend(backend):
        assert torch.autograd.gradcheck(lambda *t: samdetr_ops.salient_point_pos_embed(*t, 50.0), inputs)


@pytest.mark.parametrize("device,backend", TARGETS)
@pytest.mark.parametrize("B,N,M,D", [(0, 3, 8, 4), (2, 0, 8, 4), (2, 3, 0, 4), (2, 3, 8, 0)])
def test_zero_size(device, backend, B, N, M, D):
    """Zero-size inputs give an empty output and a (zero-size or zero) gradient for every input, never None."""
    g = generator("pos_embed zero", device, B, N, M, D)
    inputs = _inputs(g, B, N, M, D, 1.0, torch.float32, device)
    out, grads = check_against_reference("salient_point_pos_embed", inputs, (), backend, g=g)
    assert out.shape == (B, N, M, D)
    assert all((grad == 0).all() for grad in grads)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_is_deterministic(device):
    g = generator("pos_embed determinism", device)
    inputs = _inputs(g, 2, 100, 8, 256, 1.0, torch.float32, device)
    first = torch.autograd.grad(samdetr_ops.salient_point_pos_embed(*inputs).sum(), inputs)
    again = torch.autograd.grad(samdetr_ops.salient_point_pos_embed(*inputs).sum(), inputs)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
