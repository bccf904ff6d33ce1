"""Argument validation of the public functions, one function per op with the op's own signature, shared by every
backend and by the fake kernels.

Why the same checks also live in C++ (csrc/checks.h): the public functions must reject bad input for every backend
(the reference and Triton ones included, which have no C++ code), under torch.compile's fake tensors, and before
any dtype cast, so they check here, in Python; a direct torch.ops.samdetr_ops.* call skips this module, so the C++
kernels check again to stay memory-safe. Both give the same messages (tests/test_api.py holds them to it)."""
import torch


def _fail_value(op, message):
    raise ValueError(f"samdetr_ops.{op}: {message}")


def _fail_type(op, message):
    raise TypeError(f"samdetr_ops.{op}: {message}")


def _check_tensor(op, t, name):
    if not isinstance(t, torch.Tensor):
        _fail_type(op, f"`{name}` must be a torch.Tensor, got {type(t).__name__}")


def _check_rank_and_last(op, t, name, rank, last, layout):
    _check_tensor(op, t, name)
    if t.dim() != rank or (last is not None and t.shape[-1] != last):
        _fail_value(op, f"`{name}` must have shape {layout}, got {tuple(t.shape)}")


def _check_same_device_dtype(op, ref, ref_name, t, name):
    if t.device != ref.device:
        _fail_value(op, f"`{name}` must be on the same device as `{ref_name}` ({ref.device}), got {t.device}")
    if t.dtype != ref.dtype:
        _fail_type(op, f"`{name}` must have the same dtype as `{ref_name}` ({ref.dtype}), got {t.dtype}")


def _check_floating(op, t, name):
    if not t.is_floating_point():
        _fail_type(op, f"`{name}` must be a floating-point tensor, got {t.dtype}")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def pooled_size(op, output_size):
    """`output_size` as torchvision takes it, an int S (S x S bins) or an (h, w) pair -> the (h, w) tuple."""
    if _is_int(output_size):
        size = (output_size, output_size)
    elif isinstance(output_size, (tuple, list)) and len(output_size) == 2 and all(map(_is_int, output_size)):
        size = tuple(output_size)
    else:
        size = (0, 0)
    if min(size) < 1:
        _fail_value(op, f"`output_size` must be an int or an (h, w) pair of ints >= 1, got {output_size!r}")
    return size


def _check_points_and_logits(op, like, like_name, boxes, boxes_name, points, weight_logits, channels, letter,
                             note=""):
    """points (B, N, M, 2) and weight_logits (B, N, M, `letter`) beside boxes (B, N, 4), with the device and dtype of
    `like`; channels: the required size of the last dimension (None: any), `note` says where it comes from."""
    _check_rank_and_last(op, points, "points", 4, 2, "(B, N, M, 2)")
    _check_same_device_dtype(op, like, like_name, points, "points")
    _check_rank_and_last(op, weight_logits, "weight_logits", 4, channels, f"(B, N, M, {letter}){note}")
    _check_same_device_dtype(op, like, like_name, weight_logits, "weight_logits")
    if points.shape[:2] != boxes.shape[:2]:
        _fail_value(op, f"`points` must have shape (B, N, M, 2) with B, N = {tuple(boxes.shape[:2])} as in "
                        f"`{boxes_name}`, got {tuple(points.shape)}")
    if weight_logits.shape[:3] != points.shape[:3]:
        _fail_value(op, f"`weight_logits` must have shape (B, N, M, {letter}) with B, N, M = "
                        f"{tuple(points.shape[:3])} as in `points`, got {tuple(weight_logits.shape)}")


def _roi_inputs(op, features, boxes, output_size, sampling_ratio):
    """features (B, C, H, W), boxes (B, N, 4). Returns the pooled size (h, w)."""
    _check_rank_and_last(op, features, "features", 4, None, "(B, C, H, W)")
    _check_floating(op, features, "features")
    _check_rank_and_last(op, boxes, "boxes", 3, 4, "(B, N, 4)")
    _check_same_device_dtype(op, features, "features", boxes, "boxes")
    if boxes.shape[0] != features.shape[0]:
        _fail_value(op, f"`boxes` must have shape (B, N, 4) with B = {features.shape[0]} as in `features`, "
                        f"got {tuple(boxes.shape)}")
    size = pooled_size(op, output_size)
    if not isinstance(sampling_ratio, int) or sampling_ratio == 0 or sampling_ratio < -1:
        _fail_value(op, f"`sampling_ratio` must be a positive int or -1 (adaptive), got {sampling_ratio}")
    return size


def roi_align(features, boxes, output_size=7, spatial_scale=1.0, sampling_ratio=-1, aligned=True):
    """Returns the pooled size (h, w)."""
    return _roi_inputs("roi_align", features, boxes, output_size, sampling_ratio)


def semantic_align(features, boxes, points, weight_logits, output_size=7, spatial_scale=1.0, sampling_ratio=-1,
                   aligned=True):
    """Returns the pooled size (h, w)."""
    size = _roi_inputs("semantic_align", features, boxes, output_size, sampling_ratio)
    _check_points_and_logits("semantic_align", features, "features", boxes, "boxes", points, weight_logits,
                             features.shape[1], "C", " with C = features.size(1)")
    return size


def salient_point_pos_embed(boxes_cxcywh, points, weight_logits, temperature=10000.0):
    op = "salient_point_pos_embed"
    _check_rank_and_last(op, boxes_cxcywh, "boxes_cxcywh", 3, 4, "(B, N, 4)")
    _check_floating(op, boxes_cxcywh, "boxes_cxcywh")
    _check_points_and_logits(op, boxes_cxcywh, "boxes_cxcywh", boxes_cxcywh, "boxes_cxcywh", points, weight_logits,
                             None, "D")
    if weight_logits.shape[3] % 2 != 0:
        _fail_value(op, "`weight_logits` must have an even last dimension D (half for y, half for x), "
                        f"got D = {weight_logits.shape[3]}")


def _has_data(t):
    """Whether t's values can be read here without a host sync or a trace break: a real (not fake, not meta) CPU
    tensor outside torch.compile's tracing."""
    if torch.compiler.is_compiling() or t.device.type != "cpu":
        return False
    from torch._subclasses.fake_tensor import is_fake
    return not is_fake(t)


def _check_levels(op, value, spatial_shapes, level_start_index):
    """spatial_shapes (L, 2) int64 and level_start_index (L,) int64 beside value (B, S, heads, D); when their values
    are readable for free (see _has_data), that the levels are non-negative, consecutive and fill S exactly. On
    other devices the kernels read them on the device: an inconsistent level there reads nothing instead of
    raising (checking would cost a host sync per call)."""
    _check_rank_and_last(op, spatial_shapes, "spatial_shapes", 2, 2, "(L, 2) (H, W) per level")
    _check_rank_and_last(op, level_start_index, "level_start_index", 1, None, "(L,)")
    for t, name in ((spatial_shapes, "spatial_shapes"), (level_start_index, "level_start_index")):
        if t.dtype != torch.int64:
            _fail_type(op, f"`{name}` must be an int64 tensor, got {t.dtype}")
        if t.device != value.device:
            _fail_value(op, f"`{name}` must be on the same device as `value` ({value.device}), got {t.device}")
    L = spatial_shapes.shape[0]
    if level_start_index.shape[0] != L:
        _fail_value(op, f"`level_start_index` must have shape (L,) with L = {L} as in `spatial_shapes`, got "
                        f"{tuple(level_start_index.shape)}")
    if not (_has_data(spatial_shapes) and _has_data(level_start_index)):
        return
    for level, (H, W) in enumerate(spatial_shapes.tolist()):
        if H < 0 or W < 0:
            _fail_value(op, f"`spatial_shapes` must hold sizes >= 0, got ({H}, {W}) at level {level}")
    sizes = spatial_shapes.prod(1)
    starts = torch.cumsum(sizes, 0) - sizes
    if not torch.equal(level_start_index, starts):
        _fail_value(op, f"`level_start_index` must be the cumulative level sizes {starts.tolist()} (levels stored "
                        f"one after the other), got {level_start_index.tolist()}")
    if int(sizes.sum()) != value.shape[1]:
        _fail_value(op, f"`value` must have shape (B, S, heads, D) with S = {int(sizes.sum())}, the sum of H * W over "
                        f"`spatial_shapes`, got {tuple(value.shape)}")


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    op = "ms_deform_attn"
    _check_rank_and_last(op, value, "value", 4, None, "(B, S, heads, D)")
    _check_floating(op, value, "value")
    _check_levels(op, value, spatial_shapes, level_start_index)
    B, _, heads, _ = value.shape
    L = spatial_shapes.shape[0]
    _check_rank_and_last(op, sampling_locations, "sampling_locations", 6, 2, "(B, Q, heads, L, P, 2)")
    _check_same_device_dtype(op, value, "value", sampling_locations, "sampling_locations")
    if (sampling_locations.shape[0], sampling_locations.shape[2], sampling_locations.shape[3]) != (B, heads, L):
        _fail_value(op, f"`sampling_locations` must have shape (B, Q, heads, L, P, 2) with B, heads = {B}, {heads} as "
                        f"in `value` and L = {L} as in `spatial_shapes`, got {tuple(sampling_locations.shape)}")
    _check_rank_and_last(op, attention_weights, "attention_weights", 5, None, "(B, Q, heads, L, P)")
    _check_same_device_dtype(op, value, "value", attention_weights, "attention_weights")
    if attention_weights.shape != sampling_locations.shape[:5]:
        _fail_value(op, f"`attention_weights` must have shape (B, Q, heads, L, P) = "
                        f"{tuple(sampling_locations.shape[:5])} as in `sampling_locations`, got "
                        f"{tuple(attention_weights.shape)}")
