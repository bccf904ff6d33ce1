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
