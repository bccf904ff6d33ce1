"""samdetr_ops.ms_deform_attn against Deformable-DETR's ms_deform_attn_core_pytorch (samdetr_ops.reference)."""
import pytest
import torch

import samdetr_ops
from helpers import (
    BACKENDS,
    DEVICES,
    FORWARD_TOL,
    TARGETS,
    check_against_reference,
    generator,
    gradcheck_device,
    rand,
    randn,
)
from samdetr_ops import _checks, reference

# (H, W) per level: odd sizes, a 1x1 level, a 1-row level
LEVELS = [(7, 9), (4, 5), (1, 1), (1, 3)]


def make_inputs(g, B=2, Q=5, heads=3, D=6, levels=LEVELS, P=2, spread=0.15, dtype=torch.float32, device="cpu"):
    """(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) as Deformable-DETR's
    MSDeformAttn feeds them; locations uniform in [-spread, 1 + spread] (beyond [0, 1]: partly off the map),
    weights a softmax over each query's L * P samples."""
    shapes = torch.tensor(levels, dtype=torch.int64).view(-1, 2)
    sizes = shapes.prod(1)
    starts = torch.cumsum(sizes, 0) - sizes
    L = shapes.shape[0]
    value = randn(g, B, int(sizes.sum()), heads, D)
    locations = rand(g, B, Q, heads, L, P, 2, low=-spread, high=1 + spread)
    weights = torch.softmax(randn(g, B, Q, heads, L * P), -1).view(B, Q, heads, L, P)
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(value), shapes.to(device), starts.to(device), cast(locations), cast(weights)


def brute_force(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """The definition, one sample at a time: bilinear at (x * W - 0.5, y * H - 0.5), zero outside the map."""
    B, S, heads, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    out = value.new_zeros(B, Q, heads, D)
    for b, q, h, level, p in torch.cartesian_prod(*(torch.arange(n) for n in (B, Q, heads, L, P))).tolist():
        H, W = spatial_shapes[level].tolist()
        start = int(level_start_index[level])
        x, y = sampling_locations[b, q, h, level, p].tolist()
        ix, iy = x * W - 0.5, y * H - 0.5
        x0, y0 = int(torch.floor(torch.tensor(ix))), int(torch.floor(torch.tensor(iy)))
        for cy, wy in ((y0, 1 - (iy - y0)), (y0 + 1, iy - y0)):
            for cx, wx in ((x0, 1 - (ix - x0)), (x0 + 1, ix - x0)):
                if 0 <= cy < H and 0 <= cx < W:
                    out[b, q, h] += attention_weights[b, q, h, level, p] * wy * wx * value[b, start + cy * W + cx, h]
    return out.view(B, Q, heads * D)


def test_reference_is_the_definition():
    value, shapes, starts, locations, weights = make_inputs(generator("msda brute force"), dtype=torch.float64)
    torch.testing.assert_close(reference.ms_deform_attn(value, shapes, starts, locations, weights),
                               brute_force(value, shapes, starts, locations, weights), atol=1e-12, rtol=1e-12)


def test_reference_non_finite_locations_contribute_zero():
    value, shapes, starts, locations, weights = make_inputs(generator("msda reference nan"), dtype=torch.float64)
    locations[0, 0, 0, 0, 0, 0] = float("nan")
    locations[0, 1, 0, 1, 1, 1] = float("inf")
    locations[1, 2, 2, 2, 0, 0] = -float("inf")
    expected = brute_force(value, shapes, starts, torch.nan_to_num(locations, nan=-5.0, posinf=5.0, neginf=-5.0),
                           weights)
    torch.testing.assert_close(reference.ms_deform_attn(value, shapes, starts, locations, weights), expected)


def _bad(**over):
    """The check of inputs make_inputs builds, with some replaced."""
    names = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
    good = dict(zip(names, make_inputs(generator("msda bad"))))
    return tuple({**good, **over}[name] for name in names)


BAD = [
    (dict(value=torch.randn(2, 87, 18)), ValueError, r"`value` must have shape \(B, S, heads, D\), got \(2, 87, 18\)"),
    (dict(value=torch.randn(2, 86, 3, 6)), ValueError, r"`value` must have shape \(B, S, heads, D\) with S = 87"),
    (dict(spatial_shapes=torch.tensor(LEVELS, dtype=torch.int32)), TypeError,
     r"`spatial_shapes` must be an int64 tensor, got (torch.int32|Int)"),
    (dict(spatial_shapes=torch.tensor([7, 9])), ValueError, r"`spatial_shapes` must have shape \(L, 2\)"),
    (dict(level_start_index=torch.tensor([0, 63, 83, 83])), ValueError,
     r"`level_start_index` must be the cumulative level sizes \[0, 63, 83, 84\] .*got \[0, 63, 83, 83\]"),
    (dict(level_start_index=torch.tensor([0, 63, 83])), ValueError,
     r"`level_start_index` must have shape \(L,\) with L = 4"),
    (dict(level_start_index=torch.tensor([0.0, 63, 83, 84])), TypeError, r"`level_start_index` must be an int64"),
    (dict(spatial_shapes=torch.tensor([[7, 9], [4, 5], [-1, -1], [1, 3]])), ValueError,
     r"`spatial_shapes` must hold sizes >= 0, got \(-1, -1\) at level 2"),
    (dict(sampling_locations=torch.rand(2, 5, 3, 4, 2, 3)), ValueError,
     r"`sampling_locations` must have shape \(B, Q, heads, L, P, 2\), got"),
    (dict(sampling_locations=torch.rand(2, 5, 3, 3, 2, 2)), ValueError,
     r"with B, heads = 2, 3 as in `value` and L = 4"),
    (dict(sampling_locations=torch.rand(2, 5, 3, 4, 2, 2, dtype=torch.float64)), TypeError,
     r"`sampling_locations` must have the same dtype as `value`"),
    (dict(attention_weights=torch.rand(2, 5, 3, 4, 3)), ValueError,
     r"`attention_weights` must have shape \(B, Q, heads, L, P\) = [(\[]2, 5, 3, 4, 2[)\]]"),
    (dict(attention_weights=torch.rand(2, 5, 3, 4, 2).half()), TypeError, r"`attention_weights` must have the same"),
    (dict(value=torch.randint(0, 3, (2, 87, 3, 6))), TypeError, r"`value` must be a floating-point tensor"),
    (dict(value=[[0.0]]), TypeError, r"`value` must be a torch.Tensor"),
    (dict(spatial_shapes=torch.tensor(LEVELS, device="meta")), ValueError,
     r"`spatial_shapes` must be on the same device as `value` \(cpu\), got meta"),
]


@pytest.mark.parametrize("over,error,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_checks_name_the_bad_argument(over, error, message):
    with pytest.raises(error, match=message):
        _checks.ms_deform_attn(*_bad(**over))


@pytest.mark.parametrize("over,error,message", BAD, ids=[str(i) for i in range(len(BAD))])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_bad_input_raises_a_clear_error(backend, over, error, message):
    with samdetr_ops.use_backend(backend), pytest.raises(error, match=message):
        samdetr_ops.ms_deform_attn(*_bad(**over))


@pytest.mark.skipif(not samdetr_ops.has_extension(), reason="compiled extension not built")
@pytest.mark.parametrize("over,error,message", [BAD[i] for i in (1, 2, 4, 5, 7, 9, 11, 13)],
                         ids=["S", "int32", "starts", "L", "negative", "heads", "weights", "integer"])
def test_direct_op_calls_are_checked_in_cpp(over, error, message):
    """torch.ops.samdetr_ops.ms_deform_attn skips the Python checks: the kernel checks the same, with the same
    messages, and never reads out of bounds."""
    with pytest.raises(error, match=message):
        torch.ops.samdetr_ops.ms_deform_attn(*_bad(**over))
    inputs = _bad(**over)
    grad = torch.zeros(2, 5, 18, dtype=inputs[0].dtype) if inputs[0].dim() == 4 else None
    if grad is not None:
        with pytest.raises(error, match=message):
            torch.ops.samdetr_ops.ms_deform_attn_backward(grad, *inputs, [True, True, True])


# B, Q, heads, D, levels, P
CASES = [
    (2, 5, 3, 6, LEVELS, 2),
    (1, 7, 2, 5, [(3, 4), (1, 1)], 4),            # D odd, batch 1
    (3, 4, 1, 33, [(5, 3)], 3),                   # one level; D over a SIMD vector multiple
    (5, 3, 2, 8, [(2, 2), (9, 1), (1, 6)], 1),    # batch 5, one point
    (2, 0, 3, 4, LEVELS, 2),                      # zero queries
]


@pytest.mark.parametrize("device,backend", TARGETS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("spread", [0.0, 0.3])
def test_forward_and_backward_match_the_reference(device, backend, dtype, case, spread):
    """Output and the three gradients; spread 0.3: locations up to 0.3 map sizes outside [0, 1]."""
    B, Q, heads, D, levels, P = case
    g = generator("msda", device, dtype, case, spread)
    inputs = make_inputs(g, B, Q, heads, D, levels, P, spread, dtype, device)
    check_against_reference("ms_deform_attn", inputs, (), backend, g=g)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,Q,heads,D,levels,P", [(0, 3, 2, 4, LEVELS, 2), (2, 3, 0, 4, LEVELS, 2),
                                                  (2, 3, 2, 0, LEVELS, 2), (2, 3, 2, 4, LEVELS, 0),
                                                  (2, 3, 2, 4, [(0, 5), (3, 3)], 2), (2, 3, 2, 4, [], 2),
                                                  (2, 3, 2, 4, [(0, 0)], 2)])
def test_zero_size(device, B, Q, heads, D, levels, P):
    g = generator("msda zero", device, B, Q, heads, D, str(levels), P)
    inputs = make_inputs(g, B, Q, heads, D, levels, P, 0.1, torch.float64, device)
    check_against_reference("ms_deform_attn", inputs, (), "cpp", g=g)


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_locations_contribute_zero(device):
    g = generator("msda nan", device)
    value, shapes, starts, locations, weights = make_inputs(g, dtype=torch.float64, device=device)
    bad = torch.zeros_like(locations, dtype=torch.bool)
    for index, number in (((0, 0, 0, 0, 0, 0), float("nan")), ((0, 1, 0, 1, 1, 1), float("inf")),
                          ((1, 2, 2, 2, 0, 0), -float("inf")), ((1, 4, 1, 3, 1, 1), float("nan"))):
        locations[index] = number
        bad[index[:-1]] = True
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    out = samdetr_ops.ms_deform_attn(value, shapes, starts, locations, weights)
    expected = brute_force(value.detach(), shapes, starts, torch.where(bad, -5.0, locations.detach()),
                           weights.detach())
    torch.testing.assert_close(out, expected, **FORWARD_TOL[torch.float64])
    grads = torch.autograd.grad(out, leaves, torch.randn_like(out))
    assert all(torch.isfinite(grad).all() for grad in grads)
    assert (grads[1][bad] == 0).all() and (grads[2][bad[..., 0]] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    g = generator("msda gradcheck")
    device = gradcheck_device(backend)
    value, shapes, starts, locations, weights = make_inputs(g, 2, 3, 2, 3, [(3, 4), (1, 1), (2, 3)], 2, 0.2,
                                                            torch.float64, device)
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    with samdetr_ops.use_backend(backend):
        assert torch.autograd.gradcheck(lambda v, loc, w: samdetr_ops.ms_deform_attn(v, shapes, starts, loc, w),
                                        leaves)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_precision_computes_in_float32(dtype):
    """float16/bfloat16 inputs give the float32 result of the same (rounded) inputs, rounded once."""
    g = generator("msda half", dtype)
    inputs = [t.to(dtype) if t.is_floating_point() else t for t in make_inputs(g, dtype=torch.float64)]
    out = samdetr_ops.ms_deform_attn(*inputs)
    wide = samdetr_ops.ms_deform_attn(*(t.float() if t.is_floating_point() else t for t in inputs))
    assert out.dtype == dtype
    # the float32 result rounded once to dtype: within half a unit in the last place of dtype
    torch.testing.assert_close(out, wide.to(dtype), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_autocast_computes_in_float32_and_returns_the_value_dtype(dtype):
    inputs = make_inputs(generator("msda autocast", dtype))
    low = tuple(t.to(dtype) if t.is_floating_point() else t for t in inputs)
    with torch.autocast("cpu", dtype=dtype):
        out = samdetr_ops.ms_deform_attn(*low)
    assert out.dtype == dtype
    expected = reference.ms_deform_attn(*(t.float() if t.is_floating_point() else t for t in low))
    torch.testing.assert_close(out, expected.to(dtype))


@pytest.mark.skipif(not samdetr_ops.has_extension(), reason="compiled extension not built")
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    inputs = make_inputs(generator("msda opcheck", device), dtype=torch.float64, device=device)
    value, shapes, starts, locations, weights = inputs
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    ops = torch.ops.samdetr_ops
    torch.library.opcheck(ops.ms_deform_attn.default, (leaves[0], shapes, starts, leaves[1], leaves[2]))
    grad = torch.randn(2, 5, 18, dtype=torch.float64, device=device)
    torch.library.opcheck(ops.ms_deform_attn_backward.default,
                          (grad, value.detach(), shapes, starts, locations.detach(), weights.detach(),
                           [True, False, True]))


@pytest.mark.skipif(not samdetr_ops.has_extension(), reason="compiled extension not built")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_torch_compile_fullgraph(device, dynamic):
    torch._dynamo.reset()
    value, shapes, starts, locations, weights = make_inputs(generator("msda compile", device), device=device)
    leaves = [t.requires_grad_() for t in (value, locations, weights)]

    def attend(v, loc, w):  # as in Deformable-DETR: the output projected and reduced
        return samdetr_ops.ms_deform_attn(v, shapes, starts, loc.clamp(-1, 2), w).square().sum()

    eager = attend(*leaves)
    compiled = torch.compile(attend, fullgraph=True, dynamic=dynamic)(*leaves)
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(torch.autograd.grad(compiled, leaves), torch.autograd.grad(eager, leaves)):
        torch.testing.assert_close(a, b)


def test_backward_is_bit_identical_whatever_the_thread_count():
    """CPU: each task owns its (batch, head, level) slice of every gradient, so runs and thread counts agree."""
    g = generator("msda determinism")
    value, shapes, starts, locations, weights = make_inputs(g, 2, 300, 4, 16, [(20, 30), (10, 15), (5, 8)], 4, 0.1)
    leaves = [t.requires_grad_() for t in (value, locations, weights)]
    grad = torch.randn(2, 300, 64, generator=g)

    def grads():
        return torch.autograd.grad(samdetr_ops.ms_deform_attn(value, shapes, starts, locations, weights), leaves,
                                   grad)

    first = grads()
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            assert all(torch.equal(a, b) for a, b in zip(first, grads()))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES[:2] + CASES[3:], ids=str)
def test_triton_matches_the_reference(dtype, case):
    """The Triton kernels (under the interpreter without a GPU: small shapes) against the reference."""
    pytest.importorskip("triton")
    import os
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1")
    B, Q, heads, D, levels, P = case
    g = generator("msda triton", dtype, case)
    inputs = make_inputs(g, B, Q, heads, D, levels, P, 0.3, dtype, device)
    if Q > 0:
        inputs[3][0, 0, 0, 0, 0, 0] = float("nan")  # contributes zero, as on every backend
    check_against_reference("ms_deform_attn", inputs, (), "triton", g=g)


# ---- samdetr_ops.nn.MSDeformAttn against a plain-PyTorch copy of Deformable-DETR's module --------------------------
def _official_core(value, value_spatial_shapes, sampling_locations, attention_weights):
    """Deformable-DETR's ms_deform_attn_core_pytorch (models/ops/functions/ms_deform_attn_func.py), as written."""
    import torch.nn.functional as F
    N_, S_, M_, D_ = value.shape
    _, Lq_, M_, L_, P_, _ = sampling_locations.shape
    value_list = value.split([H_ * W_ for H_, W_ in value_spatial_shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampling_value_list = []
    for lid_, (H_, W_) in enumerate(value_spatial_shapes):
        value_l_ = value_list[lid_].flatten(2).transpose(1, 2).reshape(N_ * M_, D_, H_, W_)
        sampling_grid_l_ = sampling_grids[:, :, :, lid_].transpose(1, 2).flatten(0, 1)
        sampling_value_l_ = F.grid_sample(value_l_, sampling_grid_l_, mode="bilinear", padding_mode="zeros",
                                          align_corners=False)
        sampling_value_list.append(sampling_value_l_)
    attention_weights = attention_weights.transpose(1, 2).reshape(N_ * M_, 1, Lq_, L_ * P_)
    output = (torch.stack(sampling_value_list, dim=-2).flatten(-2) * attention_weights).sum(-1).view(N_, M_ * D_, Lq_)
    return output.transpose(1, 2).contiguous()


def _official_forward(module, query, reference_points, input_flatten, input_spatial_shapes, input_level_start_index,
                      input_padding_mask=None):
    """Deformable-DETR's MSDeformAttn.forward (models/ops/modules/ms_deform_attn.py), on `module`'s parameters."""
    import torch.nn.functional as F
    N, Len_q, _ = query.shape
    N, Len_in, _ = input_flatten.shape
    assert (input_spatial_shapes[:, 0] * input_spatial_shapes[:, 1]).sum() == Len_in
    value = module.value_proj(input_flatten)
    if input_padding_mask is not None:
        value = value.masked_fill(input_padding_mask[..., None], float(0))
    value = value.view(N, Len_in, module.n_heads, module.d_model // module.n_heads)
    sampling_offsets = module.sampling_offsets(query).view(N, Len_q, module.n_heads, module.n_levels,
                                                           module.n_points, 2)
    attention_weights = module.attention_weights(query).view(N, Len_q, module.n_heads,
                                                             module.n_levels * module.n_points)
    attention_weights = F.softmax(attention_weights, -1).view(N, Len_q, module.n_heads, module.n_levels,
                                                              module.n_points)
    if reference_points.shape[-1] == 2:
        offset_normalizer = torch.stack([input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]], -1)
        sampling_locations = reference_points[:, :, None, :, None, :] \
            + sampling_offsets / offset_normalizer[None, None, None, :, None, :]
    else:
        sampling_locations = reference_points[:, :, None, :, None, :2] \
            + sampling_offsets / module.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
    output = _official_core(value, input_spatial_shapes.tolist(), sampling_locations, attention_weights)
    return module.output_proj(output)


OFFICIAL_NAMES = {  # Deformable-DETR's parameter names and shapes for d_model 32, 3 levels, 4 heads, 2 points
    "sampling_offsets.weight": (48, 32), "sampling_offsets.bias": (48,), "attention_weights.weight": (24, 32),
    "attention_weights.bias": (24,), "value_proj.weight": (32, 32), "value_proj.bias": (32,),
    "output_proj.weight": (32, 32), "output_proj.bias": (32,)}


def test_module_initialisation_is_deformable_detrs():
    from samdetr_ops.nn import MSDeformAttn
    module = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=2)
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == OFFICIAL_NAMES
    assert (module.sampling_offsets.weight == 0).all() and (module.attention_weights.weight == 0).all()
    # head h points along angle 2 pi h / 4, scaled to the square's border: (1, 0), (0, 1), (-1, 0), (0, -1)
    bias = module.sampling_offsets.bias.view(4, 3, 2, 2)
    torch.testing.assert_close(bias[:, 0, 0], torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[:, 2, 1], 2 * bias[:, 0, 0])  # point p at (p + 1) steps, on every level


@pytest.mark.parametrize("coordinates", [2, 4])
@pytest.mark.parametrize("padding", [False, True])
def test_module_loads_a_deformable_detr_state_dict_and_equals_its_forward(coordinates, padding):
    from samdetr_ops.nn import MSDeformAttn
    g = generator("msda module", coordinates, padding)
    state = {k: randn(g, *shape) * 0.2 for k, shape in OFFICIAL_NAMES.items()}  # a trained model's, say
    module = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=2).double()
    module.load_state_dict(state)  # strict: every official name, nothing else
    levels = [(6, 7), (3, 4), (1, 2)]
    shapes = torch.tensor(levels)
    starts = torch.cumsum(shapes.prod(1), 0) - shapes.prod(1)
    B, Q, S = 3, 5, int(shapes.prod(1).sum())
    query, flatten = randn(g, B, Q, 32), randn(g, B, S, 32)
    reference_points = rand(g, B, Q, 3, coordinates) * (0.5 if coordinates == 4 else 1.0)
    mask = rand(g, B, S) > 0.8 if padding else None
    leaves = [t.requires_grad_() for t in (query, flatten)]
    ours = module(query, reference_points, flatten, shapes, starts, mask)
    official = _official_forward(module, query, reference_points, flatten, shapes, starts, mask)
    torch.testing.assert_close(ours, official, **FORWARD_TOL[torch.float64])
    grad = randn(g, *ours.shape)
    params = list(module.parameters())
    for a, b in zip(torch.autograd.grad(ours, leaves + params, grad),
                    torch.autograd.grad(official, leaves + params, grad)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)
