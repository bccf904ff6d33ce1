"""Sine position embeddings: of the feature-map pixels (encoder keys) and of points in [0, 1] (query boxes)."""
import math

import torch
from torch import nn


def sine_features(coordinate, num_feats, temperature=10000.0):
    """coordinate (...) already multiplied by 2*pi -> (..., num_feats): sin at even, cos at odd feature index,
    frequencies temperature ** (2 * (k // 2) / num_feats)."""
    k = torch.arange(num_feats, dtype=coordinate.dtype, device=coordinate.device)
    dim_t = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / num_feats)           # (num_feats,)
    t = coordinate[..., None] / dim_t                                                         # (..., num_feats)
    return torch.stack((t[..., 0::2].sin(), t[..., 1::2].cos()), dim=-1).flatten(-2)


@torch.no_grad()
def sine_embed_of_points(points, dim):
    """points (..., 2) as (x, y) in [0, 1] -> (..., dim): dim/2 features of y, then dim/2 of x. Computed without
    gradient, as SAM-DETR does for the query positions."""
    scaled = points.flip(-1) * (2 * math.pi)                                              # (..., 2) y, x
    return sine_features(scaled, dim // 2).flatten(-2)                                    # both in one pass


class PositionEmbeddingSine(nn.Module):
    """Normalised sine embedding of the feature-map pixels, padding excluded: pixel centres (cumulative count of
    valid pixels - 0.5) divided by the valid extent, times 2*pi. mask (B, H, W) True on padding ->
    (B, H*W, 2 * num_pos_feats) tokens, y features then x features."""

    def __init__(self, num_pos_feats=128, temperature=10000.0):
        super().__init__()
        self.num_pos_feats, self.temperature = num_pos_feats, temperature

    def forward(self, mask):
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32) - 0.5                          # (B, H, W)
        x_embed = not_mask.cumsum(2, dtype=torch.float32) - 0.5
        eps, scale = 1e-6, 2 * math.pi
        y_embed = y_embed / (y_embed[:, -1:, :] + eps + 0.5) * scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps + 0.5) * scale
        pos = sine_features(torch.stack((y_embed, x_embed), dim=-1), self.num_pos_feats, self.temperature)
        return pos.flatten(-2).flatten(1, 2)                                                    # (B, H*W, 2F)


def build_position_encoding(cfg):
    return PositionEmbeddingSine(cfg.hidden_dim // 2)
