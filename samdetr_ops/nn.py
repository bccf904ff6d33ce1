"""nn.Modules built on the fused ops, for SAM-DETR and other DETR variants."""
import math
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

import samdetr_ops

from . import reference

# SemanticAligner's `implementation` -> the module whose roi_align, semantic_align and salient_point_pos_embed it
# calls: "fused" the samdetr_ops ops (on the current backend), "reference" the unfused official sequence.
IMPLEMENTATIONS = {"fused": samdetr_ops, "reference": reference}

# former public names of this module -> their current names (reading a former name warns)
_DEPRECATED = {"OPS": "IMPLEMENTATIONS"}


def __getattr__(name):
    if name in _DEPRECATED:
        warnings.warn(f"samdetr_ops.nn.{name} is deprecated; use samdetr_ops.nn.{_DEPRECATED[name]}",
                      DeprecationWarning, stacklevel=2)
        return globals()[_DEPRECATED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _implementation_argument(implementation, ops):
    """SemanticAligner's implementation, from `implementation` or the deprecated keyword `ops` (which warns)."""
    keyword = "implementation"
    if ops is not None:
        warnings.warn("SemanticAligner(ops=...) is deprecated; use SemanticAligner(implementation=...)",
                      DeprecationWarning, stacklevel=3)
        if implementation not in ("fused", ops):  # "fused" is the default: only an explicit other value conflicts
            raise TypeError(f"SemanticAligner: got implementation={implementation!r} and ops={ops!r} (the former "
                            "name of the same argument); give implementation only")
        implementation, keyword = ops, "ops"
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"SemanticAligner: {keyword} must be one of {sorted(IMPLEMENTATIONS)}, got {implementation!r}")
    return implementation


class SemanticAligner(nn.Module):
    """SAM-DETR's Semantics Aligner (Zhang et al., CVPR 2022), layout and parameters of the official code, so its
    checkpoints load. Per query it predicts M = num_points salient points inside the query's reference box (one
    per cross-attention head) and returns the encoder features at those points and their position embeddings,
    both reweighted by the query:

        rois   = RoIAlign(memory, box)                      7x7, aligned=True, adaptive sampling
        points = tanh(point_mlp(relu(point_conv(rois))))    first 2*M outputs, point m = (out[2m], out[2m+1])
        query_aligned = bilinear sample of rois at points * sigmoid(reweight_query(query))   (= semantic_align)
        query_pos     = sine(center + 0.5 * wh * points) * sigmoid(reweight_pos(query))      (= salient_point_pos_embed)

    Parameters (official names in brackets):
        point_conv      Conv2d(C, C/4, 1) + ReLU                               [point1]
        point_mlp       MLP 49*C/4 -> 256 -> 512 -> 512 -> 2*M (4*M with smca), ReLU between, the last layer
                        zero-initialised so that every point starts at its box centre   [point2]
        reweight_query  Linear(C, M*C)                                          [attn1]
        reweight_pos    Linear(C, M*C)                                          [attn2]

    forward(memory, reference_boxes, query, valid_ratios=None):
        memory           (B, C, H, W)  encoder features. A (B, H*W, C) token tensor viewed as
                                       `memory.transpose(1, 2).view(B, C, H, W)` (channels-last) is the fast path:
                                       no copy.
        reference_boxes  (B, N, 4)     cx, cy, w, h in [0, 1] of the valid (unpadded) image
        query            (B, N, C)     query embedding (after the decoder's self-attention)
        valid_ratios     (B, 2)        valid (unpadded) fraction of the map, (w, h); None = the whole map
    returns query_aligned (B, N, M, C), query_pos (B, N, M, C), points (B, N, M, 2) (x, y) in [-1, 1] of the box,
    and, with smca=True, a fourth tensor scales (B, N, M, 2): the per-head Gaussian scales of SMCA.

    With implementation="fused" the point predictor's input is computed as relu(RoIAlign(point_conv's 1x1
    projection of memory, without bias) + bias): the conv and RoIAlign commute, so this is the same function (tests
    check outputs and gradients against the official order), with a 4x cheaper RoIAlign and the conv over the map,
    not the RoIs.

    As in the official code (its sine embedding runs under no_grad), query_pos passes gradient only to
    reweight_pos, not to the points or the boxes; the boxes receive no gradient at all (neither does RoIAlign's).
    implementation="fused" runs samdetr_ops (the current backend); implementation="reference" the unfused official
    sequence (samdetr_ops.reference: RoIAlign, then RoIAlign again inside the sampling). `ops`, the former name of
    `implementation`, still works and warns (DeprecationWarning); so do reading and setting the attribute `ops`.
    """

    def __init__(self, d_model=256, num_points=8, roi_size=7, smca=False, implementation="fused", temperature=10000.0,
                 *, ops: Optional[str] = None):
        super().__init__()
        implementation = _implementation_argument(implementation, ops)
        self.d_model, self.num_points, self.roi_size, self.smca = d_model, num_points, roi_size, smca
        self.implementation, self.temperature = implementation, temperature
        self.point_conv = nn.Sequential(nn.Conv2d(d_model, d_model // 4, 1), nn.ReLU())
        outputs_per_point = 4 if smca else 2
        self.point_mlp = nn.Sequential(
            nn.Linear(d_model // 4 * roi_size * roi_size, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(),
            nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, outputs_per_point * num_points))
        nn.init.zeros_(self.point_mlp[-1].weight)
        nn.init.zeros_(self.point_mlp[-1].bias)
        self.reweight_query = nn.Linear(d_model, num_points * d_model)
        self.reweight_pos = nn.Linear(d_model, num_points * d_model)

    @property
    def ops(self):
        """Deprecated: the former name of `implementation`."""
        warnings.warn("SemanticAligner.ops is deprecated; use SemanticAligner.implementation", DeprecationWarning,
                      stacklevel=2)
        return self.implementation

    @ops.setter
    def ops(self, value):
        warnings.warn("SemanticAligner.ops is deprecated; use SemanticAligner.implementation", DeprecationWarning,
                      stacklevel=2)
        self.implementation = _implementation_argument(value, None)

    def __setstate__(self, state):  # a module pickled before the rename holds `ops`
        if "ops" in state and "implementation" not in state:
            state["implementation"] = state.pop("ops")
        super().__setstate__(state)

    def forward(self, memory, reference_boxes, query, valid_ratios=None):
        impl = IMPLEMENTATIONS[self.implementation]
        B, C, H, W = memory.shape
        N, M, S = reference_boxes.shape[1], self.num_points, self.roi_size
        # boxes in feature-map pixels: Python scale factors, so no constant tensor is built per call
        cx, cy, w, h = reference_boxes.unbind(-1)                                          # (B, N) each
        scale_x, scale_y = (W, H) if valid_ratios is None else (valid_ratios[:, 0:1] * W, valid_ratios[:, 1:2] * H)
        boxes = torch.stack(((cx - 0.5 * w) * scale_x, (cy - 0.5 * h) * scale_y,
                             (cx + 0.5 * w) * scale_x, (cy + 0.5 * h) * scale_y), dim=-1)  # (B, N, 4) x1 y1 x2 y2
        if self.implementation == "fused":
            # The 1x1 conv commutes with RoIAlign (one mixes channels at each pixel, the other interpolates each
            # channel), except for its bias: RoIAlign does not preserve constants at the map's edges, so the bias
            # is added after. So the B*H*W map pixels are projected to C/4 channels and those are aligned, instead
            # of projecting B*N*S*S RoI pixels of C channels: the same function with a 4x cheaper RoIAlign and a
            # conv over the map (16x16 at 512x512) instead of over the RoIs (300 x 7x7 per image).
            conv = self.point_conv[0]
            projected = F.conv2d(memory, conv.weight)                                          # (B, C/4, H, W)
            rois = impl.roi_align(projected, boxes, S, 1.0, -1, True)                            # (B, N, C/4, S, S)
            hidden = torch.relu(rois + conv.bias[:, None, None]).flatten(0, 1).flatten(1)    # (B*N, C/4*S*S)
        else:  # the official order
            rois = impl.roi_align(memory, boxes, S, 1.0, -1, True)                               # (B, N, C, S, S)
            hidden = self.point_conv(rois.flatten(0, 1)).flatten(1)                            # (B*N, C/4*S*S)
        out = self.point_mlp(hidden).view(B, N, -1)                                        # (B, N, 2M or 4M)
        points = out[..., :2 * M].view(B, N, M, 2).tanh()                                  # (B, N, M, 2) x, y
        query_aligned = impl.semantic_align(memory, boxes, points, self.reweight_query(query).view(B, N, M, C),
                                           S, 1.0, -1, True)                               # (B, N, M, C)
        query_pos = impl.salient_point_pos_embed(reference_boxes.detach(), points.detach(),
                                                self.reweight_pos(query).view(B, N, M, C), self.temperature)
        if self.smca:
            return query_aligned, query_pos, points, out[..., 2 * M:].reshape(B, N, M, 2)
        return query_aligned, query_pos, points



class MSDeformAttn(nn.Module):
    """Deformable-DETR's multi-scale deformable attention module (Zhu et al., ICLR 2021) on the fused
    `samdetr_ops.ms_deform_attn`: the official parameter names, initialisation and forward signature, so a
    Deformable-DETR state dict loads unchanged and the module replaces the official one.

    Parameters: sampling_offsets Linear(d_model, heads*L*P*2), attention_weights Linear(d_model, heads*L*P),
    value_proj and output_proj Linear(d_model, d_model). `im2col_step` (the official CUDA op's batch chunk) is
    accepted and ignored: the fused op takes any batch size in one call."""

    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4, im2col_step=64):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"MSDeformAttn: d_model must be divisible by n_heads, got {d_model} and {n_heads}")
        self.im2col_step = im2col_step  # kept for compatibility only
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self):
        """As the official code: zero offset weights, and offset biases pointing each head in its own direction
        (angle 2 pi h / heads, scaled to the unit square's border), point p at p + 1 times that step."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)                              # (heads, 2)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)                            # (heads, L, P, 2)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(self, query, reference_points, input_flatten, input_spatial_shapes, input_level_start_index,
                input_padding_mask=None):
        """query (B, Q, d_model); reference_points (B, Q, L, 2) as (x, y) in [0, 1], or (B, Q, L, 4) as boxes
        (cx, cy, w, h); input_flatten (B, S, d_model), the L maps flattened; input_spatial_shapes (L, 2) int64
        (H, W); input_level_start_index (L,); input_padding_mask (B, S), True at padding -> (B, Q, d_model)."""
        B, Q, _ = query.shape
        S = input_flatten.shape[1]
        heads, L, P = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(B, S, heads, self.d_model // heads)
        offsets = self.sampling_offsets(query).view(B, Q, heads, L, P, 2)
        weights = F.softmax(self.attention_weights(query).view(B, Q, heads, L * P), -1).view(B, Q, heads, L, P)
        if reference_points.shape[-1] == 2:  # offsets in pixels of each level: divide by its (W, H)
            normalizer = input_spatial_shapes.flip(-1).to(offsets.dtype)              # (L, 2) as (W, H)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:  # offsets relative to the box: P steps reach its half size
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError("MSDeformAttn: the last dimension of reference_points must be 2 or 4, got "
                             f"{reference_points.shape[-1]}")
        output = samdetr_ops.ms_deform_attn(value, input_spatial_shapes, input_level_start_index, locations,
                                            weights)
        return self.output_proj(output)
