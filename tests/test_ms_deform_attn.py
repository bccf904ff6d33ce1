"""samdetr_ops.ms_deform_attn against Deformable-DETR's ms_deform_attn_core_pytorch (samdetr_ops.reference)."""
import pytest
import torch

from helpers import generator, rand, randn
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
     r"`spatial_shapes` must be an int64 tensor, got torch.int32"),
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
     r"`attention_weights` must have shape \(B, Q, heads, L, P\) = \(2, 5, 3, 4, 2\)"),
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
