"""Property-based tests (hypothesis) of the three ops against samdetr_ops.reference, their specification.

Each property draws a whole case: shapes (B, N, M, C odd and wide, H and W down to 1, zero sizes), the RoI
geometry (output size, sampling ratio, spatial scale, aligned), the dtype (float64, float32, bfloat16), the memory
layout of the features and of the other inputs (views), a kind for each box and for the points, and a seed for
the values. It then checks the output and the gradient of every differentiable input, for one random output
gradient, within the documented tolerances: helpers.FORWARD_TOL / BACKWARD_TOL for float64 and float32; for
bfloat16, as tests/test_cpu_dtypes.py, the float32 reference on the same rounded inputs, within the float32 bound
plus two unit roundoffs (the kernel computes in float32 and rounds once).

Inputs that the reference cannot take are replaced in the reference's copy only by inputs of the documented
meaning (README: "NaN/Inf boxes or points contribute zeros"): a NaN/Inf box, or a NaN/Inf/absurd point, by one
far off the map, which reads nothing and gets no gradient (torchvision casts a NaN sample position to int, which
is undefined behaviour, and grid_sample likewise for an absurd point); so is a box that torchvision refuses and
that reads nothing (see reference_boxes). Absurd (1e6 to 1e30 pixel) boxes are drawn only with a fixed sampling
ratio: with the adaptive one torchvision would visit O(box area) samples.

derandomize=True: the same examples on every run, so CI is reproducible. SAMDETR_PROPERTY_EXAMPLES=k multiplies
every example budget (a longer search by hand)."""
import math
import os
from dataclasses import dataclass, replace

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import samdetr_ops
from helpers import BACKWARD_TOL, DEVICES, FORWARD_TOL, HAS_CUDA, assert_close, rand, randn
from samdetr_ops import reference

# Under the Triton interpreter every kernel runs in Python: small shapes and a small example budget there.
INTERPRETED_TRITON = not HAS_CUDA and os.environ.get("TRITON_INTERPRET") == "1"
CPP_TARGETS = [(device, "cpp") for device in DEVICES]
if HAS_CUDA:
    TRITON_TARGETS = [("cuda", "triton")]
elif INTERPRETED_TRITON and "triton" in samdetr_ops.available_backends("roi_align", torch.device("cpu")):
    TRITON_TARGETS = [("cpu", "triton")]
else:
    TRITON_TARGETS = []

SCALE_BUDGET = float(os.environ.get("SAMDETR_PROPERTY_EXAMPLES", "1"))


def budget(examples):
    return max(1, round(examples * SCALE_BUDGET))


# One profile for every property: reproducible (derandomize, no example database), no deadline (the first call of a
# Triton kernel compiles or, interpreted, is slow), and no complaint that drawing a case is slow or large.
PROFILE = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.large_base_example])

DTYPES = (torch.float64, torch.float32, torch.bfloat16)
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8}
FEATURE_LAYOUTS = ("contiguous", "channels_last", "strided", "offset")
VIEWS = ("contiguous", "interleaved", "transposed")
# Box kinds, in feature pixels before the spatial scale: see box_of_kind.
ADAPTIVE_BOX_KINDS = ("mixed", "tiny", "degenerate", "flipped", "edge", "outside", "huge", "nonfinite")
FIXED_RATIO_BOX_KINDS = ADAPTIVE_BOX_KINDS + ("absurd",)
POINT_KINDS = ("uniform", "lattice", "nonfinite")
# A box and a point that read nothing (off the map / the RoI grid for every spatial scale drawn, >= 1/32): what a
# non-finite one means.
FAR_OFF_BOX = (-1e6, -1e6, -1e6 + 8.0, -1e6 + 8.0)
FAR_OFF_POINT = 5.0
ABSURD_POINT = 1e6  # beyond this a point is substituted (grid_sample would cast it to int)


@dataclass(frozen=True)
class Limits:
    """Largest shapes drawn (the Triton interpreter gets smaller ones)."""
    batch: int
    queries: int
    points: int
    side: int
    bins: int
    narrow_channels: int
    wide_channels: tuple
    half_embed: int


FULL = Limits(batch=3, queries=6, points=9, side=16, bins=7, narrow_channels=40, wide_channels=(64, 129, 520),
              half_embed=20)
SMALL = Limits(batch=2, queries=3, points=4, side=7, bins=4, narrow_channels=9, wide_channels=(33, 130),
               half_embed=9)


@dataclass(frozen=True)
class AlignCase:
    """One roi_align / semantic_align case (semantic_align only reads the point fields)."""
    batch: int
    channels: int
    height: int
    width: int
    output_size: object  # S or (S_h, S_w)
    spatial_scale: float
    sampling_ratio: int
    aligned: bool
    dtype: torch.dtype
    layout: str
    view: str
    box_kinds: tuple  # one kind per query (N = len(box_kinds)), each image drawing its own box of that kind
    points: int = 4
    point_kind: str = "uniform"
    point_spread: float = 1.2
    logit_scale: float = 1.0
    seed: int = 0

    @property
    def queries(self):
        return len(self.box_kinds)


@dataclass(frozen=True)
class EmbedCase:
    batch: int
    queries: int
    points: int
    dim: int
    temperature: float
    dtype: torch.dtype
    view: str
    point_spread: float = 1.0
    logit_scale: float = 1.0
    seed: int = 0


def at_least_one(most):
    """1..most: zero sizes run as explicit examples (ALIGN_CORNERS, EMBED_CORNERS) instead of taking a large share
    of the drawn ones (hypothesis favours the bounds)."""
    return st.integers(1, most)


def channel_counts(limits):
    """Odd and even narrow counts, and a few wide ones (more channel vectors than a work item has lanes)."""
    return st.one_of(st.integers(1, limits.narrow_channels), st.sampled_from(limits.wide_channels))


@st.composite
def align_cases(draw, limits):
    side = st.integers(1, limits.side)
    bins = st.integers(1, limits.bins)
    sampling_ratio = draw(st.sampled_from([-1, 1, 2, 3]))
    kinds = FIXED_RATIO_BOX_KINDS if sampling_ratio > 0 else ADAPTIVE_BOX_KINDS
    return AlignCase(
        batch=draw(at_least_one(limits.batch)), channels=draw(channel_counts(limits)),
        height=draw(side), width=draw(side), output_size=draw(st.one_of(bins, st.tuples(bins, bins))),
        spatial_scale=draw(st.sampled_from([1.0, 0.5, 1 / 3, 0.125]) | st.floats(1 / 32, 2.0)),
        sampling_ratio=sampling_ratio, aligned=draw(st.booleans()), dtype=draw(st.sampled_from(DTYPES)),
        layout=draw(st.sampled_from(FEATURE_LAYOUTS)), view=draw(st.sampled_from(VIEWS)),
        box_kinds=tuple(draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=limits.queries))),
        points=draw(at_least_one(limits.points)), point_kind=draw(st.sampled_from(POINT_KINDS)),
        point_spread=draw(st.floats(0.1, 3.0)), logit_scale=draw(st.sampled_from([1.0, 8.0])),
        seed=draw(st.integers(0, 2**31 - 1)))


@st.composite
def embed_cases(draw, limits):
    return EmbedCase(
        batch=draw(at_least_one(limits.batch)), queries=draw(at_least_one(limits.queries)),
        points=draw(at_least_one(limits.points)),
        dim=2 * draw(st.integers(1, limits.half_embed) | st.sampled_from([64, 129])),  # D/2 odd and even, wide
        temperature=draw(st.sampled_from([10000.0, 20.0]) | st.floats(1.5, 1e5)),
        dtype=draw(st.sampled_from(DTYPES)), view=draw(st.sampled_from(VIEWS)),
        point_spread=draw(st.floats(0.1, 3.0)), logit_scale=draw(st.sampled_from([1.0, 8.0])),
        seed=draw(st.integers(0, 2**31 - 1)))


# ---------------------------------------------------------------------------------------------------------------
# Inputs of a case. Values are drawn in float64 from the case's seed and rounded once to the case's dtype.
# ---------------------------------------------------------------------------------------------------------------

def features_in_layout(g, B, C, H, W, layout, dtype, device):
    """(B, C, H, W) features. Cast and moved before the view is taken, so that the layout survives (a cast or a
    copy of a non-dense view comes back dense):
    contiguous     plain NCHW
    channels_last  a (B, H*W, C) token tensor viewed as (B, C, H, W), as a DETR encoder produces
    strided        every other channel of a wider tensor, spatially transposed: no dense layout at all
    offset         channels-last starting one element into its storage (misaligned for vector loads)"""
    def draw(*shape):
        return randn(g, *shape).to(device=device, dtype=dtype)

    if layout == "contiguous":
        return draw(B, C, H, W)
    if layout == "channels_last":
        return draw(B, H * W, C).transpose(1, 2).reshape(B, C, H, W)
    if layout == "strided":
        return draw(B, 2 * C, W, H + 1).transpose(2, 3)[:, ::2, :H]
    if layout == "offset":
        return draw(B * H * W * C + 1)[1:].view(B, H, W, C).permute(0, 3, 1, 2)
    raise ValueError(layout)


def as_view(t, view):
    """The same values as a non-contiguous view: `interleaved` has its last dimension at stride 2, `transposed`
    has every stride reversed."""
    if view == "contiguous":
        return t
    if view == "interleaved":
        return torch.stack([t, torch.full_like(t, 7.0)], dim=-1)[..., 0]
    if view == "transposed":
        order = list(reversed(range(t.dim())))
        return t.permute(order).contiguous().permute(order)
    raise ValueError(view)


def axes_of_one_box(g, B):
    """(B, 2) bools: x alone, y alone or both, a third of the boxes each."""
    mode = torch.randint(0, 3, (B, 1), generator=g)
    return torch.cat([mode != 1, mode != 0], dim=-1)


def box_of_kind(g, kind, B, H, W):
    """(B, 4) x1 y1 x2 y2 in feature pixels, one box of `kind` per image:
    mixed       a tenth of a pixel to the whole map, centre up to 3 pixels outside it
    tiny        under half a pixel         degenerate  zero width or height (or both)
    flipped     x2 < x1 or y2 < y1 or both edge        across the map's border, partly outside
    outside     wholly off the map, on either side       huge        10 to 30 times the map
    absurd      corners of 1e6 to 1e30 pixels, covering the map or far from it
    nonfinite   a mixed box with one to four corners NaN, +Inf or -Inf"""
    size = torch.tensor([W, H], dtype=torch.float64)
    centre = rand(g, B, 2) * size
    if kind == "mixed":
        centre, wh = rand(g, B, 2) * (size + 6) - 3, torch.exp(rand(g, B, 2, low=-2.3, high=0.0)) * size
    elif kind == "tiny":
        wh = rand(g, B, 2, low=0.01, high=0.5)
    elif kind == "degenerate":
        wh = torch.where(axes_of_one_box(g, B), 0.0, rand(g, B, 2) * size)
    elif kind == "flipped":
        wh = torch.where(axes_of_one_box(g, B), -1.0, 1.0) * rand(g, B, 2, low=0.5, high=4)
    elif kind == "edge":
        centre = size * (rand(g, B, 2) < 0.5) + rand(g, B, 2, low=-1, high=1)
        wh = rand(g, B, 2, low=0.5, high=1.5) * size
    elif kind == "outside":
        centre = torch.where(rand(g, B, 2) < 0.5, -1.0, 1.0) * (size * 3 + rand(g, B, 2) * size)
        wh = rand(g, B, 2, low=0.5, high=4)
    elif kind == "huge":
        wh = rand(g, B, 2, low=10, high=30) * size
    elif kind == "absurd":
        magnitude = 10 ** rand(g, B, 1, low=6, high=30)
        covering = rand(g, B, 1) < 0.5
        return torch.where(covering, torch.cat([-magnitude, -magnitude, magnitude, 2 * magnitude], -1),
                           torch.cat([magnitude, magnitude, 2 * magnitude, 3 * magnitude], -1))
    elif kind == "nonfinite":
        box = box_of_kind(g, "mixed", B, H, W)
        specials = torch.tensor([math.nan, math.inf, -math.inf], dtype=torch.float64)
        pick = specials[torch.randint(0, 3, (B, 4), generator=g)]
        hit = rand(g, B, 4) < 0.4
        hit[torch.arange(B), torch.randint(0, 4, (B,), generator=g)] = True  # at least one corner
        return torch.where(hit, pick, box)
    else:
        raise ValueError(kind)
    return torch.cat([centre - wh / 2, centre + wh / 2], dim=-1)


def align_boxes(g, case):
    """(B, N, 4) boxes of the case's kinds, in input pixels (feature pixels / spatial_scale)."""
    B, H, W = case.batch, case.height, case.width
    boxes = [box_of_kind(g, kind, B, H, W) for kind in case.box_kinds]
    boxes = torch.stack(boxes, dim=1) if boxes else torch.zeros(B, 0, 4, dtype=torch.float64)
    return boxes / case.spatial_scale


def grid_lattice(size):
    """The normalised coordinates along one axis of a `size`-cell RoI grid where grid_sample's bilinear taps change
    (align_corners=False): the cell centres (2k + 1) / size - 1, k = -1 .. size (the outer two have only one tap on
    the grid), and the grid's borders -1 and 1."""
    centres = [(2 * k + 1) / size - 1 for k in range(-1, size + 1)]
    return torch.tensor(centres + [-1.0, 1.0], dtype=torch.float64)


def salient_points(g, B, N, M, case):
    """(B, N, M, 2) normalised (x, y) points, uniform in [-spread, spread]; `lattice` moves about half of the
    coordinates onto grid_lattice (where the gradient of a tap jumps), `nonfinite` about a quarter to NaN, +-Inf or
    +-1e30."""
    points = rand(g, B, N, M, 2, low=-case.point_spread, high=case.point_spread)
    chosen = rand(g, B, N, M, 2) < (0.25 if case.point_kind == "nonfinite" else 0.5)
    if case.point_kind == "uniform":
        return points
    if case.point_kind == "lattice":
        S_h, S_w = (case.output_size,) * 2 if isinstance(case.output_size, int) else case.output_size
        values = [grid_lattice(S_w), grid_lattice(S_h)]
    elif case.point_kind == "nonfinite":
        values = [torch.tensor([math.nan, math.inf, -math.inf, 1e30, -1e30], dtype=torch.float64)] * 2
    else:
        raise ValueError(case.point_kind)
    snapped = torch.stack([v[torch.randint(0, len(v), (B, N, M), generator=g)] for v in values], dim=-1)
    return torch.where(chosen, snapped, points)


def reference_boxes(boxes, case):
    """The boxes for the reference: a box that reads nothing but that torchvision cannot take becomes FAR_OFF_BOX,
    which reads nothing too:
    - a NaN/Inf box (torchvision casts its NaN sample positions to int);
    - with aligned=True and the adaptive count, a box flipped along one axis alone: its sample counts per axis,
      ceil(extent / bins), have opposite signs and torchvision sizes a std::vector by their negative product
      ("cannot create std::vector larger than max_size()"). A box flipped along both axes (a positive product)
      torchvision takes, and reads nothing from it, as our kernels."""
    unreadable = ~torch.isfinite(boxes).all(dim=-1)
    if case.aligned and case.sampling_ratio <= 0:
        unreadable |= (boxes[..., 2] < boxes[..., 0]) != (boxes[..., 3] < boxes[..., 1])
    return torch.where(unreadable[..., None], boxes.new_tensor(FAR_OFF_BOX), boxes)


def reference_points(points):
    """The points for the reference: a NaN/Inf or absurd point becomes FAR_OFF_POINT (both read nothing)."""
    absurd = ~(torch.isfinite(points) & (points.abs() < ABSURD_POINT)).all(dim=-1, keepdim=True)
    return torch.where(absurd, torch.full_like(points, FAR_OFF_POINT), points)


# ---------------------------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------------------------

def tolerance(table, dtype, scale=1.0):
    """table's bound (FORWARD_TOL or BACKWARD_TOL) for dtype, widened `scale` times; bfloat16 gets the float32 bound
    plus two unit roundoffs relative, as in tests/test_cpu_dtypes.py."""
    if dtype in UNIT_ROUNDOFF:
        base = table[torch.float32]
        return dict(atol=base["atol"] * scale, rtol=base["rtol"] * scale + 2 * UNIT_ROUNDOFF[dtype])
    return {key: value * scale for key, value in table[dtype].items()}


def assert_matches_reference(op, inputs, reference_inputs, args, differentiable, backend, g, grad_scales=None):
    """samdetr_ops.<op>(*inputs) on `backend` against reference.<op>(*reference_inputs): the output, and the
    gradient of each input whose index is in `differentiable` for one random output gradient.

    reference_inputs equal inputs but for substitutions of the same meaning; bfloat16 ones are computed in float32
    (the reference of the rounded values). grad_scales: {index: factor} widening a gradient's bound, as the
    existing tests do for the same gradient."""
    dtype = inputs[0].dtype
    compute = torch.float32 if dtype in UNIT_ROUNDOFF else dtype
    leaves = [t.detach().requires_grad_(i in differentiable) for i, t in enumerate(inputs)]
    reference_leaves = [t.detach().to(compute).requires_grad_(i in differentiable)
                        for i, t in enumerate(reference_inputs)]
    with samdetr_ops.use_backend(backend):
        out = getattr(samdetr_ops, op)(*leaves, *args)
    expected = getattr(reference, op)(*reference_leaves, *args)
    assert (out.shape, out.dtype, out.device) == (expected.shape, dtype, expected.device), \
        f"{op}: got {out.shape} {out.dtype} on {out.device}, expected {expected.shape} {dtype}"
    assert_close(out.to(compute), expected, tolerance(FORWARD_TOL, dtype), f"{op} forward ({backend})")

    grad_output = randn(g, *out.shape).to(device=out.device, dtype=dtype)  # random: ones would hide a transpose
    wrt = sorted(differentiable)
    grads = torch.autograd.grad(out, [leaves[i] for i in wrt], grad_output, allow_unused=True)
    expected_grads = torch.autograd.grad(expected, [reference_leaves[i] for i in wrt], grad_output.to(compute),
                                         allow_unused=True)
    for i, actual, wanted in zip(wrt, grads, expected_grads):
        what = f"{op} gradient of input {i} ({backend})"
        assert actual is not None, f"{what}: None"
        assert (actual.shape, actual.dtype) == (inputs[i].shape, dtype), f"{what}: {actual.shape} {actual.dtype}"
        # The reference may return None for an input that did not influence a zero-size output: that is zeros.
        wanted = torch.zeros_like(reference_leaves[i]) if wanted is None else wanted
        scale = (grad_scales or {}).get(i, 1.0)
        assert_close(actual.to(compute), wanted, tolerance(BACKWARD_TOL, dtype, scale), what)


# ---------------------------------------------------------------------------------------------------------------
# The properties of each op
# ---------------------------------------------------------------------------------------------------------------

def geometry(case):
    return (case.output_size, case.spatial_scale, case.sampling_ratio, case.aligned)


def roi_inputs(g, case, device):
    features = features_in_layout(g, case.batch, case.channels, case.height, case.width, case.layout, case.dtype,
                                  device)
    boxes = as_view(align_boxes(g, case).to(device=device, dtype=case.dtype), case.view)
    return features, boxes


def check_roi_align(case, device, backend):
    g = torch.Generator().manual_seed(case.seed)
    features, boxes = roi_inputs(g, case, device)
    assert_matches_reference("roi_align", [features, boxes], [features, reference_boxes(boxes, case)], geometry(case),
                             {0}, backend, g)


def check_semantic_align(case, device, backend):
    g = torch.Generator().manual_seed(case.seed)
    features, boxes = roi_inputs(g, case, device)
    B, N, M, C = case.batch, case.queries, case.points, case.channels
    points = salient_points(g, B, N, M, case)
    points = as_view(points.to(device=device, dtype=case.dtype), case.view)
    logits = as_view((randn(g, B, N, M, C) * case.logit_scale).to(device=device, dtype=case.dtype), case.view)
    assert_matches_reference("semantic_align", [features, boxes, points, logits],
                             [features, reference_boxes(boxes, case), reference_points(points), logits], geometry(case),
                             {0, 2, 3}, backend, g)


def check_pos_embed(case, device, backend):
    g = torch.Generator().manual_seed(case.seed)
    B, N, M, D = case.batch, case.queries, case.points, case.dim
    centre = rand(g, B, N, 2, low=-0.5, high=1.5)
    wh = rand(g, B, N, 2, low=0.0, high=1.5) * (rand(g, B, N, 2) < 0.8)  # a fifth degenerate (zero extent)
    points = rand(g, B, N, M, 2, low=-case.point_spread, high=case.point_spread)
    logits = randn(g, B, N, M, D) * case.logit_scale
    inputs = [as_view(t.to(device=device, dtype=case.dtype), case.view)
              for t in (torch.cat([centre, wh], dim=-1), points, logits)]
    # d/d p of sin(p * 2 pi * f) is O(2 pi) with f up to 1, summed over D/2 features: the box and point gradients
    # get a bound D times wider (as in test_pos_embed.py and test_cpu_dtypes.py)
    assert_matches_reference("salient_point_pos_embed", inputs, inputs, (case.temperature,), {0, 1, 2}, backend, g,
                             grad_scales={0: D, 1: D})


# ---------------------------------------------------------------------------------------------------------------
# The tests: the compiled kernels on every device here, the Triton ones on CUDA or in the interpreter. Corner cases
# run every time as explicit examples, besides the drawn ones.
# ---------------------------------------------------------------------------------------------------------------

# Drawn examples per test. The interpreter runs each Triton kernel in Python: a small budget there.
CPP_EXAMPLES = 500
TRITON_EXAMPLES = 6 if INTERPRETED_TRITON else 30  # on a GPU each new shape compiles
TRITON_LIMITS = SMALL if INTERPRETED_TRITON else FULL
# The interpreter computes NaN * 0 for the lanes of a non-finite box or point (see test_triton.py)
INTERPRETER_NAN_WARNING = "ignore:invalid value encountered:RuntimeWarning"

ALIGN = AlignCase(batch=2, channels=5, height=6, width=7, output_size=3, spatial_scale=1.0, sampling_ratio=-1,
                  aligned=True, dtype=torch.float32, layout="channels_last", view="contiguous",
                  box_kinds=("mixed", "tiny"), points=3, seed=1)
ALIGN_CORNERS = [
    replace(ALIGN, height=1, width=1, channels=1, box_kinds=("mixed", "huge", "flipped", "edge")),  # 1x1 map, C=1
    # NaN/Inf boxes; aligned=False clamps a box to 1x1, which must not make a NaN box read a pixel
    replace(ALIGN, box_kinds=("nonfinite", "mixed", "nonfinite"), aligned=False, layout="strided"),
    replace(ALIGN, box_kinds=("nonfinite", "huge"), point_kind="nonfinite", points=4, dtype=torch.float64),
    replace(ALIGN, box_kinds=("huge", "outside"), output_size=(2, 5), view="transposed"),  # huge, adaptive count
    replace(ALIGN, box_kinds=("absurd", "absurd", "degenerate"), sampling_ratio=2, dtype=torch.bfloat16,
            layout="offset", view="interleaved"),
    replace(ALIGN, channels=130, box_kinds=("mixed", "edge"), dtype=torch.float64, point_kind="lattice"),  # wide C
    replace(ALIGN, box_kinds=()),  # N = 0
    replace(ALIGN, batch=0),
]
SEMANTIC_CORNERS = ALIGN_CORNERS + [replace(ALIGN, points=0)]
EMBED = EmbedCase(batch=2, queries=3, points=4, dim=6, temperature=10000.0, dtype=torch.float32,
                  view="contiguous", seed=1)
EMBED_CORNERS = [
    replace(EMBED, dim=2),
    replace(EMBED, dim=258, dtype=torch.bfloat16, view="transposed", point_spread=3.0),  # wide, odd D/2
    replace(EMBED, dim=34, dtype=torch.float64, temperature=20.0, view="interleaved"),
    replace(EMBED, queries=0),
    replace(EMBED, batch=0),
    replace(EMBED, points=0),
]


def with_examples(cases):
    """@example(case=c) for every c in cases."""
    def decorate(test):
        for case in cases:
            test = example(case=case)(test)
        return test
    return decorate


@pytest.mark.parametrize("device,backend", CPP_TARGETS)
@with_examples(ALIGN_CORNERS)
@settings(PROFILE, max_examples=budget(CPP_EXAMPLES))
@given(case=align_cases(FULL))
def test_roi_align_matches_reference(device, backend, case):
    check_roi_align(case, device, backend)


@pytest.mark.parametrize("device,backend", CPP_TARGETS)
@with_examples(SEMANTIC_CORNERS)
@settings(PROFILE, max_examples=budget(CPP_EXAMPLES))
@given(case=align_cases(FULL))
def test_semantic_align_matches_reference(device, backend, case):
    check_semantic_align(case, device, backend)


@pytest.mark.parametrize("device,backend", CPP_TARGETS)
@with_examples(EMBED_CORNERS)
@settings(PROFILE, max_examples=budget(CPP_EXAMPLES))
@given(case=embed_cases(FULL))
def test_pos_embed_matches_reference(device, backend, case):
    check_pos_embed(case, device, backend)


@pytest.mark.filterwarnings(INTERPRETER_NAN_WARNING)
@pytest.mark.parametrize("device,backend", TRITON_TARGETS)
@with_examples(ALIGN_CORNERS)
@settings(PROFILE, max_examples=budget(TRITON_EXAMPLES))
@given(case=align_cases(TRITON_LIMITS))
def test_triton_roi_align_matches_reference(device, backend, case):
    check_roi_align(case, device, backend)


@pytest.mark.filterwarnings(INTERPRETER_NAN_WARNING)
@pytest.mark.parametrize("device,backend", TRITON_TARGETS)
@with_examples(SEMANTIC_CORNERS)
@settings(PROFILE, max_examples=budget(TRITON_EXAMPLES))
@given(case=align_cases(TRITON_LIMITS))
def test_triton_semantic_align_matches_reference(device, backend, case):
    check_semantic_align(case, device, backend)


@pytest.mark.parametrize("device,backend", TRITON_TARGETS)
@with_examples(EMBED_CORNERS)
@settings(PROFILE, max_examples=budget(TRITON_EXAMPLES))
@given(case=embed_cases(TRITON_LIMITS))
def test_triton_pos_embed_matches_reference(device, backend, case):
    check_pos_embed(case, device, backend)


# ---------------------------------------------------------------------------------------------------------------
# Found by the properties above
# ---------------------------------------------------------------------------------------------------------------

def test_sample_on_the_map_border_is_counted_as_torchvision_counts_it():
    """Shrunk from a semantic_align property failure (a huge box, aligned=False, scale 1/3). With all-ones features
    each bin is (samples on the map) / (samples): bin (3, 3) has 9 x 13 of 18 x 39 in exact arithmetic with the
    14th column at x = 12.0 exactly; torchvision computes 12.000000000000004 (off the map), the kernel
    11.999999999999996 (on it): 9 samples too many, 9 / 702 = 0.0128 too much. The cause: GCC contracted the
    position arithmetic into FMAs under -mfma; setup.py compiles the CPU kernels with -ffp-contract=off."""
    features = torch.ones(1, 1, 8, 12, dtype=torch.float64)
    boxes = torch.tensor([[[-370.0, -175.0, 442.0, 189.0]]], dtype=torch.float64)
    with samdetr_ops.use_backend("cpp"):
        out = samdetr_ops.roi_align(features, boxes, 7, 1 / 3, -1, False)
    assert_close(out, reference.roi_align(features, boxes, 7, 1 / 3, -1, False), FORWARD_TOL[torch.float64],
                 "bin (3, 3)")
