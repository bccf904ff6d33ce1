"""Argument validation of the public functions, shared by every backend (the C++ kernels check the same things
with the same messages, csrc/checks.h, to stay memory-safe when called directly through torch.ops)."""
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


def roi_inputs(op, features, boxes, output_size, sampling_ratio):
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


def semantic_align_inputs(features, boxes, points, weight_logits, output_size, sampling_ratio):
    """features (B, C, H, W), boxes (B, N, 4), points (B, N, M, 2), weight_logits (B, N, M, C). Returns the pooled
    size (h, w)."""
    op = "semantic_align"
    size = roi_inputs(op, features, boxes, output_size, sampling_ratio)
    _check_rank_and_last(op, points, "points", 4, 2, "(B, N, M, 2)")
    _check_same_device_dtype(op, features, "features", points, "points")
    _check_rank_and_last(op, weight_logits, "weight_logits", 4, features.shape[1],
                         "(B, N, M, C) with C = features.size(1)")
    _check_same_device_dtype(op, features, "features", weight_logits, "weight_logits")
    if points.shape[:2] != boxes.shape[:2]:
        _fail_value(op, f"`points` must have shape (B, N, M, 2) with B, N = {tuple(boxes.shape[:2])} as in `boxes`, "
                        f"got {tuple(points.shape)}")
    if weight_logits.shape[:3] != points.shape[:3]:
        _fail_value(op, f"`weight_logits` must have shape (B, N, M, C) with B, N, M = {tuple(points.shape[:3])} "
                        f"as in `points`, got {tuple(weight_logits.shape)}")
    return size


def pos_embed_inputs(boxes_cxcywh, points, weight_logits):
    """boxes_cxcywh (B, N, 4), points (B, N, M, 2), weight_logits (B, N, M, D), D even."""
    op = "salient_point_pos_embed"
    _check_rank_and_last(op, boxes_cxcywh, "boxes_cxcywh", 3, 4, "(B, N, 4)")
    _check_floating(op, boxes_cxcywh, "boxes_cxcywh")
    _check_rank_and_last(op, points, "points", 4, 2, "(B, N, M, 2)")
    _check_same_device_dtype(op, boxes_cxcywh, "boxes_cxcywh", points, "points")
    _check_rank_and_last(op, weight_logits, "weight_logits", 4, None, "(B, N, M, D)")
    _check_same_device_dtype(op, boxes_cxcywh, "boxes_cxcywh", weight_logits, "weight_logits")
    if points.shape[:2] != boxes_cxcywh.shape[:2]:
        _fail_value(op, f"`points` must have shape (B, N, M, 2) with B, N = {tuple(boxes_cxcywh.shape[:2])} as in "
                        f"`boxes_cxcywh`, got {tuple(points.shape)}")
    if weight_logits.shape[:3] != points.shape[:3]:
        _fail_value(op, f"`weight_logits` must have shape (B, N, M, D) with B, N, M = {tuple(points.shape[:3])} "
                        f"as in `points`, got {tuple(weight_logits.shape)}")
    if weight_logits.shape[3] % 2 != 0:
        _fail_value(op, "`weight_logits` must have an even last dimension D (half for y, half for x), "
                        f"got D = {weight_logits.shape[3]}")
