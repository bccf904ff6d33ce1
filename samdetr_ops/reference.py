"""The unfused PyTorch sequences: the specification of every samdetr_ops op.

Each function here is what the corresponding fused op must equal up to float rounding. They are also the
fallback when the compiled extension is missing and the baseline of every test and benchmark. Shapes:
B images, N queries (boxes) per image, M salient points per query, C (or D) channels, S_h x S_w = output_size
(an int S means S x S, as in torchvision).
"""
import math

import torch
import torch.nn.functional as F
import torchvision

from . import _checks


def roi_align(features, boxes, output_size=7, spatial_scale=1.0, sampling_ratio=-1, aligned=True):
    """features (B, C, H, W), boxes (B, N, 4) x1 y1 x2 y2 in input pixels -> (B, N, C, S_h, S_w)."""
    B, N = boxes.shape[:2]
    C, H, W = features.shape[1:]
    S_h, S_w = _checks.pooled_size("roi_align", output_size)  # an int S or an (h, w) pair, as torchvision
    if B == 0 or H == 0 or W == 0:
        # torchvision takes no empty box list and reads out of bounds on an empty map; the answer is zeros.
        # (+ features.sum(), itself 0 here, keeps the result on the autograd graph.)
        return features.new_zeros((B, N, C, S_h, S_w)) + features.sum()
    geometry = ((S_h, S_w), spatial_scale, sampling_ratio, aligned)
    if features.dtype in (torch.float16, torch.bfloat16):
        # Half precision is computed in float32 and rounded once, as autocast runs torchvision's roi_align and as
        # our kernels accumulate; torchvision has no half/bfloat16 roi_align on some builds (0.26 on CUDA, 0.29 on
        # CPU), and deciding by a failed call would not survive torch.compile.
        rois = torchvision.ops.roi_align(features.float(), list(boxes.float().unbind(0)), *geometry)
        return rois.to(features.dtype).view(B, N, C, S_h, S_w)
    rois = torchvision.ops.roi_align(features, list(boxes.unbind(0)), *geometry)
    return rois.view(B, N, C, S_h, S_w)


def semantic_align(features, boxes, points, weight_logits, output_size=7, spatial_scale=1.0, sampling_ratio=-1,
                   aligned=True):
    """SAM-DETR's semantics aligner after the point predictor.

    features (B, C, H, W), boxes (B, N, 4), points (B, N, M, 2) as grid_sample (x, y) in [-1, 1] over the S_h x S_w
    RoI grid, weight_logits (B, N, M, C) -> (B, N, M, C): the C features at each salient point, times
    sigmoid(weight_logits).
    """
    B, N, M = points.shape[:3]
    C = features.shape[1]
    rois = roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned)  # (B, N, C, S_h, S_w)
    rois = rois.flatten(0, 1)                                                               # (B*N, C, S_h, S_w)
    q = F.grid_sample(rois, points.reshape(B * N, 1, M, 2), mode="bilinear", padding_mode="zeros",
                      align_corners=False)                                                  # (B*N, C, 1, M)
    return q.view(B, N, C, M).permute(0, 1, 3, 2) * weight_logits.sigmoid()                # (B, N, M, C)


def salient_point_pos_embed(boxes_cxcywh, points, weight_logits, temperature=10000.0):
    """Sine embedding of the salient points, reweighted.

    boxes_cxcywh (B, N, 4) normalised, points (B, N, M, 2) (x, y) in [-1, 1] relative to the box,
    weight_logits (B, N, M, D) -> (B, N, M, D): D/2 features of y then D/2 of x (gen_sineembed_for_position
    layout), sin for even and cos for odd feature index, times sigmoid(weight_logits).
    """
    D = weight_logits.shape[-1]
    half = D // 2
    position = boxes_cxcywh[..., None, :2] + 0.5 * boxes_cxcywh[..., None, 2:] * points  # (B, N, M, 2) x, y
    k = torch.arange(half, dtype=position.dtype, device=position.device)
    dim_t = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / half)                # (half,)
    even = (torch.arange(half, device=position.device) % 2) == 0

    def embed(coordinate):  # (B, N, M) -> (B, N, M, half)
        t = (coordinate * (2 * math.pi))[..., None] / dim_t
        return torch.where(even, t.sin(), t.cos())

    embedding = torch.cat((embed(position[..., 1]), embed(position[..., 0])), dim=-1)  # (B, N, M, D)
    return embedding * weight_logits.sigmoid()


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Multi-scale deformable attention (Deformable-DETR's ms_deform_attn_core_pytorch): one grid_sample per level.

    value (B, S, heads, D) with S = sum of H_l * W_l over the L levels (flattened row-major, level after level),
    spatial_shapes (L, 2) int64 (H_l, W_l), level_start_index (L,) (unused: the levels are consecutive),
    sampling_locations (B, Q, heads, L, P, 2) as (x, y) in [0, 1] of each level's map, attention_weights
    (B, Q, heads, L, P) -> (B, Q, heads * D): sum over levels and points of weight * value bilinearly sampled at
    (x * W_l - 0.5, y * H_l - 0.5), zero outside the map. NaN/Inf locations contribute zero (grid_sample would cast
    them to int): they are moved off the map, which also gives them a zero gradient.
    """
    B, S, heads, D = value.shape
    Q, L, P = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    finite = torch.isfinite(sampling_locations).all(dim=-1, keepdim=True)
    grids = torch.where(finite, 2 * sampling_locations - 1, -3.0)  # (B, Q, heads, L, P, 2); -3: off any map
    sampled = []
    for level, (H, W) in enumerate(spatial_shapes.tolist()):
        start = sum(sizes[:level])
        # (B, H*W, heads, D) -> (B*heads, D, H, W)
        value_l = value[:, start:start + H * W].permute(0, 2, 3, 1).reshape(B * heads, D, H, W)
        # (B, Q, heads, P, 2) -> (B*heads, Q, P, 2)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        if H * W == 0:  # grid_sample refuses an empty map; an empty level reads nothing
            sampled.append(value.new_zeros((B * heads, D, Q, P)) + value_l.sum())
            continue
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))                                # (B*heads, D, Q, P)
    # (B, Q, heads, L, P) -> (B*heads, 1, Q, L*P)
    weights = attention_weights.transpose(1, 2).reshape(B * heads, 1, Q, L * P)
    if L == 0:
        out = value.new_zeros((B * heads, D, Q)) + (value.sum() + weights.sum()) * 0
    else:
        out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)                   # (B*heads, D, Q)
    return out.view(B, heads * D, Q).transpose(1, 2).contiguous()                          # (B, Q, heads*D)
