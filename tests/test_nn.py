"""samdetr_ops.nn.SemanticAligner: equal to the official aligner written out here in the official code's
(N, B) layout, on every backend; the fused ops and the reference ops agree in values and in every gradient."""
import math
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
import torchvision

import samdetr_ops
import samdetr_ops.nn
from helpers import DEVICES, generator, make_cxcywh, randn
from samdetr_ops.nn import SemanticAligner


def official_aligner(block, memory_tokens, H, W, reference_boxes, tgt, valid_ratios):
    """The official decoder layer's aligner sequence, in its own layout: memory (HW, B, C), tgt (N, B, C),
    reference_boxes (B, N, 4), valid_ratios (B, 2) -> q_content, q_pos (N, B, M, C), points (B*N, 1, M, 2)."""
    HW, B, C = memory_tokens.shape
    N, M = tgt.shape[0], block.num_points
    memory_2d = memory_tokens.view(H, W, B, C).permute(2, 3, 0, 1)                            # (B, C, H, W)
    x_c, y_c, w, h = reference_boxes.unbind(-1)
    xyxy = torch.stack([x_c - 0.5 * w, y_c - 0.5 * h, x_c + 0.5 * w, y_c + 0.5 * h], dim=-1)
    xyxy = xyxy * torch.tensor([W, H, W, H], dtype=xyxy.dtype)
    xyxy = xyxy * valid_ratios.repeat(1, 2).view(B, 1, 4)
    rois = torchvision.ops.roi_align(memory_2d, list(xyxy.unbind(0)), (7, 7), 1.0, aligned=True)
    out = block.point_mlp(block.point_conv(rois).reshape(B * N, -1))
    points = out[:, :2 * M].reshape(B * N, 1, M, 2).tanh()
    q_content = F.grid_sample(rois, points, padding_mode="zeros", align_corners=False).view(B * N, -1)
    q_content = q_content.view(B, N, -1, M).permute(1, 0, 3, 2)                               # (N, B, M, C)
    q_content = q_content * block.reweight_query(tgt).view(N, B, M, C).sigmoid()
    position = (reference_boxes[:, :, None, :2] + 0.5 * reference_boxes[:, :, None, 2:]
                * points.view(B, N, M, 2)).permute(1, 0, 2, 3).reshape(N, B * M, 2)
    with torch.no_grad():  # the official sine embedding is a no_grad function with 128 features a coordinate
        half = C // 2
        dim_t = 10000 ** (2 * (torch.arange(half, dtype=position.dtype) // 2) / half)
        embed = []
        for coordinate in (position[..., 1], position[..., 0]):
            t = coordinate[..., None] * 2 * math.pi / dim_t
            embed.append(torch.stack((t[..., 0::2].sin(), t[..., 1::2].cos()), dim=-1).flatten(-2))
        q_pos = torch.cat(embed, dim=-1).view(N, B, M, C)
    q_pos = q_pos * block.reweight_pos(tgt).view(N, B, M, C).sigmoid()
    return q_content, q_pos, points


def make_inputs(g, B, C, H, W, N, device):
    memory_tokens = randn(g, B, H * W, C).to(device)                         # (B, HW, C), as the encoder gives
    boxes = make_cxcywh(g, B, N, torch.float64, device)
    query = randn(g, B, N, C).to(device)
    valid_ratios = (torch.rand(B, 2, generator=g, dtype=torch.float64) * 0.5 + 0.5).to(device)
    return memory_tokens, boxes, query, valid_ratios


def randomise_last_layer(block, g):
    """The last point layer is zero-initialised (every point at the box centre); random values exercise the
    point layout."""
    with torch.no_grad():
        block.point_mlp[-1].weight.copy_(randn(g, *block.point_mlp[-1].weight.shape) * 0.05)
        block.point_mlp[-1].bias.copy_(randn(g, *block.point_mlp[-1].bias.shape))


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("smca", [False, True])
def test_semantic_aligner_is_the_official_aligner(backend, smca):
    g = generator("nn-official", backend, smca)
    B, C, H, W, N, M = 2, 32, 9, 11, 5, 4
    torch.manual_seed(0)
    block = SemanticAligner(d_model=C, num_points=M, smca=smca).double()
    randomise_last_layer(block, g)
    memory_tokens, boxes, query, valid_ratios = make_inputs(g, B, C, H, W, N, "cpu")
    with samdetr_ops.use_backend(backend):
        out = block(memory_tokens.transpose(1, 2).view(B, C, H, W), boxes, query, valid_ratios)
    assert len(out) == (4 if smca else 3)
    q_content, q_pos, points = official_aligner(block, memory_tokens.transpose(0, 1), H, W, boxes,
                                                query.transpose(0, 1), valid_ratios)
    torch.testing.assert_close(out[0], q_content.transpose(0, 1), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out[1], q_pos.transpose(0, 1), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out[2], points.view(B, N, M, 2), atol=1e-12, rtol=1e-10)
    assert out[0].shape == out[1].shape == (B, N, M, C) and out[2].abs().max() <= 1
    if smca:  # the scales are the MLP's last 2*M outputs, (x, y) per head
        scales = block.point_mlp(block.point_conv(
            torchvision.ops.roi_align(memory_tokens.transpose(1, 2).reshape(B, C, H, W), [b for b in
                                      _pixel_boxes(boxes, H, W, valid_ratios)], 7, 1.0, aligned=True)
        ).flatten(1))[:, 2 * M:]
        torch.testing.assert_close(out[3], scales.view(B, N, M, 2), atol=1e-12, rtol=1e-10)


def _pixel_boxes(boxes, H, W, valid_ratios):
    x_c, y_c, w, h = boxes.unbind(-1)
    xyxy = torch.stack([x_c - 0.5 * w, y_c - 0.5 * h, x_c + 0.5 * w, y_c + 0.5 * h], dim=-1)
    return (xyxy * torch.tensor([W, H, W, H], dtype=boxes.dtype) * valid_ratios.repeat(1, 2)[:, None]).unbind(0)


def _values_and_gradients(block, memory, boxes, query, valid_ratios):
    wrt = [memory, query] + list(block.parameters())
    out = block(memory, boxes, query, valid_ratios)
    C = memory.shape[1]
    loss = (out[0] * torch.linspace(-1, 1, C, dtype=out[0].dtype, device=out[0].device)).sum() + out[1].square().sum()
    if len(out) == 4:
        loss = loss + out[3].square().sum()
    return list(out) + list(torch.autograd.grad(loss, wrt))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("smca", [False, True])
def test_fused_ops_match_reference_ops(device, smca):
    """implementation="fused" (cpp kernels) and implementation="reference" (the unfused official sequence): same
    values and every gradient (memory, query, parameters), float64."""
    g = generator("nn", device, smca)
    B, C, H, W, N, M = 2, 32, 9, 11, 6, 4
    torch.manual_seed(0)
    fused = SemanticAligner(d_model=C, num_points=M, smca=smca).to(device=device, dtype=torch.float64)
    randomise_last_layer(fused, g)
    reference = SemanticAligner(d_model=C, num_points=M, smca=smca, implementation="reference").to(device,
                                                                                                    torch.float64)
    reference.load_state_dict(fused.state_dict())
    memory_tokens, boxes, query, valid_ratios = make_inputs(g, B, C, H, W, N, device)
    memory = memory_tokens.transpose(1, 2).view(B, C, H, W).requires_grad_()   # channels-last view
    query.requires_grad_()
    with samdetr_ops.use_backend("cpp"):
        got = _values_and_gradients(fused, memory, boxes, query, valid_ratios)
    expected = _values_and_gradients(reference, memory, boxes, query, valid_ratios)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="Triton on CPU needs TRITON_INTERPRET=1")
def test_triton_backend_matches_reference_ops():
    """The Triton kernels through the aligner; on CPU they run in the interpreter, so the shape is tiny."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = generator("nn-triton")
    B, C, H, W, N, M = 1, 8, 5, 6, 2, 2
    torch.manual_seed(0)
    block = SemanticAligner(d_model=C, num_points=M).to(device=device, dtype=torch.float64)
    randomise_last_layer(block, g)
    memory_tokens, boxes, query, valid_ratios = make_inputs(g, B, C, H, W, N, device)
    memory = memory_tokens.transpose(1, 2).view(B, C, H, W).requires_grad_()
    query.requires_grad_()
    with samdetr_ops.use_backend("triton"):
        got = _values_and_gradients(block, memory, boxes, query, valid_ratios)
    with samdetr_ops.use_backend("reference"):
        expected = _values_and_gradients(block, memory, boxes, query, valid_ratios)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_last_point_layer_starts_at_zero_and_bad_implementation_raises():
    block = SemanticAligner(d_model=32, num_points=4, smca=True)
    assert block.point_mlp[-1].weight.abs().sum() == 0 and block.point_mlp[-1].bias.abs().sum() == 0
    assert block.point_mlp[-1].out_features == 16 and block.reweight_query.out_features == 4 * 32
    with pytest.raises(ValueError, match="implementation must be one of"):
        SemanticAligner(d_model=32, implementation="fast")
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="ops must be one of"):
        SemanticAligner(d_model=32, ops="fast")


@pytest.mark.parametrize("implementation", ["fused", "reference"])
def test_former_keyword_ops_warns_and_builds_the_same_module(implementation):
    """SemanticAligner(ops=...), the former name of implementation=, warns and builds the same module: same
    implementation, parameters (names and values) and outputs. The attribute `ops` and samdetr_ops.nn.OPS (the former
    name of IMPLEMENTATIONS) likewise warn and still work, and a module pickled with `ops` loads."""
    g = generator("nn-former-keyword")
    B, C, H, W, N, M = 2, 16, 5, 6, 3, 2
    torch.manual_seed(0)
    new = SemanticAligner(d_model=C, num_points=M, implementation=implementation).double()
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning, match=r"SemanticAligner\(ops=\.\.\.\) is deprecated"):
        old = SemanticAligner(d_model=C, num_points=M, ops=implementation).double()
    assert old.implementation == new.implementation == implementation
    new_state, old_state = new.state_dict(), old.state_dict()
    assert list(new_state) == list(old_state) and all(torch.equal(new_state[k], old_state[k]) for k in new_state)
    randomise_last_layer(new, g)
    old.load_state_dict(new.state_dict())
    memory_tokens, boxes, query, valid_ratios = make_inputs(g, B, C, H, W, N, "cpu")
    memory = memory_tokens.transpose(1, 2).view(B, C, H, W)
    for a, b in zip(new(memory, boxes, query, valid_ratios), old(memory, boxes, query, valid_ratios)):
        assert torch.equal(a, b)
    with pytest.warns(DeprecationWarning, match=r"SemanticAligner\.ops is deprecated"):
        assert old.ops == implementation
    with pytest.warns(DeprecationWarning, match=r"SemanticAligner\.ops is deprecated"):
        old.ops = "reference"
    assert old.implementation == "reference"
    pickled_before_the_rename = SemanticAligner(d_model=C, num_points=M, implementation=implementation)
    pickled_before_the_rename.__dict__["ops"] = pickled_before_the_rename.__dict__.pop("implementation")
    assert pickle.loads(pickle.dumps(pickled_before_the_rename)).implementation == implementation
    with pytest.warns(DeprecationWarning, match=r"samdetr_ops\.nn\.OPS is deprecated"):
        assert samdetr_ops.nn.OPS is samdetr_ops.nn.IMPLEMENTATIONS


def test_implementation_is_also_the_fifth_positional_argument_and_a_conflict_raises():
    assert SemanticAligner(16, 2, 7, False, "reference").implementation == "reference"
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="give implementation only"):
        SemanticAligner(d_model=16, implementation="reference", ops="fused")


def test_appended_denoising_queries_leave_the_matching_queries_unchanged():
    """DN-DETR style: D denoising queries (noised ground-truth boxes) appended to the N matching queries; the
    aligner just runs over the N + D queries, each query on its own, so the first N outputs (and their
    gradients) are those of the matching queries alone, and the last D those of the denoising queries alone."""
    g = generator("nn-denoising")
    B, C, H, W, N, D, M = 2, 32, 9, 11, 6, 5, 4
    torch.manual_seed(0)
    block = SemanticAligner(d_model=C, num_points=M).double()
    randomise_last_layer(block, g)
    memory_tokens, boxes, query, valid_ratios = make_inputs(g, B, C, H, W, N + D, "cpu")
    memory = memory_tokens.transpose(1, 2).view(B, C, H, W)

    def run(select):
        out = block(memory, boxes[:, select], query[:, select], valid_ratios)
        return [x.detach() for x in out], torch.autograd.grad(sum(x.square().sum() for x in out[:2]),
                                                              block.reweight_query.weight)[0]

    together, gradient_together = run(slice(None))
    matching, gradient_matching = run(slice(0, N))
    denoising, gradient_denoising = run(slice(N, N + D))
    assert [tuple(x.shape[:3]) for x in together] == [(B, N + D, M)] * 3
    for both, first, last in zip(together, matching, denoising):
        torch.testing.assert_close(both[:, :N], first, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(both[:, N:], last, atol=1e-12, rtol=1e-12)
    # per-query sums: the N + D gradient is the sum of the two groups' gradients
    torch.testing.assert_close(gradient_together, gradient_matching + gradient_denoising, atol=1e-10, rtol=1e-10)
