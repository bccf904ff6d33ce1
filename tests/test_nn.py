"""samdetr_ops.nn.SemanticAligner: the same module on the fused ops and on the reference ops agrees, in values
and in every gradient (inputs and parameters)."""
import pytest
import torch

import samdetr_ops
from samdetr_ops.nn import SemanticAligner
from helpers import DEVICES, generator, make_cxcywh, randn


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["cpp"])
def test_semantic_aligner_matches_reference_ops(device, backend):
    g = generator("nn", device)
    B, C, H, W, N, M = 2, 32, 9, 11, 6, 4
    torch.manual_seed(0)
    block = SemanticAligner(d_model=C, num_points=M).to(device=device, dtype=torch.float64)
    memory = randn(g, B, H * W, C).to(device).transpose(1, 2).reshape(B, C, H, W).requires_grad_()
    ref_boxes = make_cxcywh(g, B, N, torch.float64, device)
    query = randn(g, B, N, C).to(device).requires_grad_()
    wrt = [memory, query] + list(block.parameters())

    def run(name):
        with samdetr_ops.use_backend(name):
            q, pos, points = block(memory, ref_boxes, query)
        assert q.shape == (B, N, M, C) and pos.shape == (B, N, M, C) and points.shape == (B, N, M, 2)
        assert points.abs().max() <= 1
        loss = (q * torch.linspace(-1, 1, C, dtype=q.dtype, device=device)).sum() + pos.square().sum()
        return [q, pos] + list(torch.autograd.grad(loss, wrt))

    for a, b in zip(run(backend), run("reference")):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
