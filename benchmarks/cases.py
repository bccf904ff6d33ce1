"""Benchmark cases: shapes from SAM-DETR configurations and the variants (implementations) of each op.

Shapes: an 800 x 1216 image gives a stride-32 map of 25 x 38 (SAM-DETR) and a stride-16 map of 50 x 76 (the DC5
variant); N = 100 / 300 / 900 queries (SAM-DETR uses 300, its SMCA variant 300, 900 appears in DINO-style
setups); M = 8 heads; C = 256.
"""
import dataclasses
import itertools
import types

import torch

import samdetr_ops

# Every registered op, plus the whole aligner block (nn.SemanticAligner). An op needs an entry in OP_CALLS below.
OPS = tuple(samdetr_ops.OP_SPECS) + ("aligner_block",)
MODES = ("forward", "forward+backward", "inference")


@dataclasses.dataclass(frozen=True)
class Shape:
    B: int
    N: int
    H: int
    W: int
    M: int = 8
    C: int = 256

    def __str__(self):
        return f"B{self.B} N{self.N} {self.H}x{self.W}"


def shapes(device: str, preset: str):
    if preset == "quick":
        if device == "cpu":  # a 32 x 32 map at batch 2 (a square 1024 x 1024 image), and SAM-DETR's 25 x 38 at batch 1
            return [Shape(2, 300, 32, 32), Shape(1, 300, 25, 38)]
        return [Shape(4, 300, 25, 38), Shape(4, 300, 50, 76)]
    maps = [(25, 38), (50, 76)]
    return [Shape(B, N, H, W) for (H, W), B, N in itertools.product(maps, (1, 4, 8), (100, 300, 900))]


def make_inputs(shape: Shape, device, dtype, seed):
    """One input set; features as a (B, H*W, C) encoder token tensor viewed as (B, C, H, W), boxes covering
    realistic object sizes (5 % to 60 % of the map), points in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    B, N, H, W, M, C = shape.B, shape.N, shape.H, shape.W, shape.M, shape.C
    tokens = torch.randn(B, H * W, C, generator=g)
    features = tokens.transpose(1, 2).reshape(B, C, H, W)
    size = torch.tensor([W, H], dtype=torch.float32)
    centre = torch.rand(B, N, 2, generator=g) * size
    wh = (torch.rand(B, N, 2, generator=g) * 0.55 + 0.05) * size
    boxes = torch.cat([centre - wh / 2, centre + wh / 2], -1)
    cxcywh = torch.cat([centre / size, wh / size], -1)
    points = torch.rand(B, N, M, 2, generator=g) * 2 - 1
    logits = torch.randn(B, N, M, C, generator=g)
    query = torch.randn(B, N, C, generator=g)
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    msda = {k: cast(v) if v.is_floating_point() else v.to(device) for k, v in msda_inputs(shape, g).items()}
    return dict(features=cast(features), boxes=cast(boxes), cxcywh=cast(cxcywh), points=cast(points),
                logits=cast(logits), query=cast(query), **msda)


def msda_levels(shape: Shape):
    """A Deformable-DETR encoder over the map and two coarser ones: levels (H, W), (H/2, W/2), (H/4, W/4)."""
    return [(shape.H, shape.W), ((shape.H + 1) // 2, (shape.W + 1) // 2), ((shape.H + 3) // 4, (shape.W + 3) // 4)]


def msda_inputs(shape: Shape, g, levels=None, points=4):
    """ms_deform_attn's encoder inputs: every token a query (Q = S), heads = M, D = C / M, P points per level, each
    location a few pixels (normal, sd 2) around the query's own position, as trained Deformable-DETR offsets are."""
    levels = levels or msda_levels(shape)
    spatial_shapes = torch.tensor(levels, dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    B, S, heads, L = shape.B, int(sizes.sum()), shape.M, len(levels)
    centres = torch.cat([torch.stack(torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w,
                                                    indexing="ij")[::-1], -1).view(-1, 2) for h, w in levels])
    pixel = 1.0 / spatial_shapes.flip(1).float()                                            # (L, 2) x, y
    offsets = torch.randn(B, S, heads, L, points, 2, generator=g) * 2 * pixel[:, None, :]
    return dict(msda_value=torch.randn(B, S, heads, shape.C // heads, generator=g), msda_shapes=spatial_shapes,
                msda_starts=torch.cumsum(sizes, 0) - sizes,
                msda_locations=centres[None, :, None, None, None, :] + offsets,
                msda_weights=torch.softmax(torch.randn(B, S, heads, L * points, generator=g), -1).view(
                    B, S, heads, L, points))


# op name -> (fn(impl, inputs) -> output, names of the differentiable inputs); impl is an object with the op as an
# attribute (REFERENCE or a BackendOps), inputs the dict of make_inputs.
OP_CALLS = {
    "roi_align": (lambda impl, x: impl.roi_align(x["features"], x["boxes"], 7), ("features",)),
    "semantic_align": (lambda impl, x: impl.semantic_align(x["features"], x["boxes"], x["points"], x["logits"], 7),
                       ("features", "points", "logits")),
    "salient_point_pos_embed": (lambda impl, x: impl.salient_point_pos_embed(x["cxcywh"], x["points"], x["logits"]),
                                ("cxcywh", "points", "logits")),
    "ms_deform_attn": (lambda impl, x: impl.ms_deform_attn(x["msda_value"], x["msda_shapes"], x["msda_starts"],
                                                           x["msda_locations"], x["msda_weights"]),
                       ("msda_value", "msda_locations", "msda_weights")),
}


def op_call(op: str):
    """(fn(impl, inputs) -> output, names of the differentiable inputs)."""
    return OP_CALLS[op]


def min_bytes(op: str, shape: Shape, itemsize: int) -> int:
    """Bytes any forward implementation must move at least: read the inputs it needs, write the output once.
    semantic_align: the features (each touched at most once), the logits and the output; roi_align: features,
    output; pos embed: logits and output (boxes and points are negligible); ms_deform_attn: value, output,
    locations and weights."""
    B, N, H, W, M, C = shape.B, shape.N, shape.H, shape.W, shape.M, shape.C
    features, per_point = B * C * H * W, B * N * M * C
    if op == "semantic_align":
        return itemsize * (features + 2 * per_point)
    if op == "roi_align":
        return itemsize * (features + B * N * C * 49)
    if op == "salient_point_pos_embed":
        return itemsize * 2 * per_point
    if op == "ms_deform_attn":  # value read once, output written once, 3 numbers per sample (x, y, weight)
        tokens = B * sum(h * w for h, w in msda_levels(shape))
        return itemsize * (2 * tokens * C + tokens * M * len(msda_levels(shape)) * 4 * 3)
    return 0


# The unfused sequences (each registered op's reference), called the way the fused ops are.
REFERENCE = types.SimpleNamespace(**{name: spec.reference for name, spec in samdetr_ops.OP_SPECS.items()})


class BackendOps:
    """The public samdetr_ops functions under one backend."""

    def __init__(self, backend):
        self.backend = backend

    def __getattr__(self, name):
        fn = getattr(samdetr_ops, name)

        def call(*args, **kwargs):
            with samdetr_ops.use_backend(self.backend):
                return fn(*args, **kwargs)
        return call
