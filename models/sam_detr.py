"""The SAM-DETR detector (Zhang et al., CVPR 2022): backbone -> input projection -> transformer -> class and box
heads per decoder layer; PostProcess; SAMDETRConfig and build."""
import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from .backbone import build_backbone
from .box_ops import box_cxcywh_to_xyxy
from .criterion import build_criterion
from .position_encoding import build_position_encoding
from .transformer import MLP, build_transformer


@dataclass
class SAMDETRConfig:
    """The official defaults. dilation=True is the DC5 variant; smca=True adds SMCA's Gaussian prior;
    input_proj_groupnorm follows the official code's schedules under 25 epochs (both checkpoint forms load);
    backbone_weights: path of a local torchvision state dict of the chosen ResNet (else random init); backbone:
    resnet50 (official), resnet34 or resnet18; backbone_norm: "frozen" (official FrozenBatchNorm2d) or "batch"
    (trainable BatchNorm, for training a small backbone from scratch); ops: "fused" runs the aligner on samdetr_ops,
    "reference" on the unfused official sequence (samdetr_ops.reference)."""
    num_classes: int = 91
    hidden_dim: int = 256
    nheads: int = 8
    num_queries: int = 300
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    dilation: bool = False
    smca: bool = False
    input_proj_groupnorm: bool = True
    aux_loss: bool = True
    backbone_weights: str = None
    ops: str = "fused"
    backbone: str = "resnet50"
    backbone_norm: str = "frozen"


class SAMDETR(nn.Module):
    """forward(images, mask=None): images (B, 3, H, W), mask (B, H, W) bool, True on padding ->
    {"pred_logits": (B, Q, num_classes), "pred_boxes": (B, Q, 4) cxcywh in [0, 1] of each image's valid size,
     "aux_outputs": [{"pred_logits", "pred_boxes"}] of the other decoder layers (aux_loss)}."""

    def __init__(self, backbone, position_embedding, transformer, num_classes, num_queries, dec_layers,
                 input_proj_groupnorm=True, aux_loss=True):
        super().__init__()
        hidden_dim = transformer.d_model
        self.backbone, self.position_embedding, self.transformer = backbone, position_embedding, transformer
        self.aux_loss = aux_loss
        self.query_embed = nn.Embedding(num_queries, 4)        # reference boxes before the sigmoid, cxcywh
        projection = [nn.Conv2d(backbone.num_channels, hidden_dim, 1)]
        if input_proj_groupnorm:
            projection.append(nn.GroupNorm(32, hidden_dim))
        self.input_proj = nn.Sequential(*projection)
        class_embed = nn.Linear(hidden_dim, num_classes)
        nn.init.constant_(class_embed.bias, -math.log((1 - 0.01) / 0.01))   # focal-loss prior 0.01
        bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        nn.init.zeros_(bbox_embed.layers[-1].weight)
        nn.init.zeros_(bbox_embed.layers[-1].bias)
        self.class_embed = nn.ModuleList(_copies(class_embed, dec_layers))
        self.bbox_embed = nn.ModuleList(_copies(bbox_embed, dec_layers))

    def forward(self, images, mask=None):
        if mask is None:
            mask = images.new_zeros(images.shape[0], *images.shape[2:], dtype=torch.bool)
        features, mask = self.backbone(images, mask)                    # (B, 2048, H, W), (B, H, W)
        src = self.input_proj(features)                                  # (B, C, H, W)
        pos = self.position_embedding(mask).to(src.dtype)                # (B, HW, C)
        hs, boxes = self.transformer(src, mask, pos, self.query_embed.weight, self.bbox_embed)  # (L, B, Q, C|4)
        logits = torch.stack([head(h) for head, h in zip(self.class_embed, hs)])               # (L, B, Q, K)
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        return out


def _copies(module, n):
    return [copy.deepcopy(module) for _ in range(n)]


class PostProcess(nn.Module):
    """forward(outputs, target_sizes): target_sizes (B, 2) (height, width) of each image in pixels -> a list of B
    {"scores": (100,), "labels": (100,), "boxes": (100, 4) x1 y1 x2 y2 in pixels}: the top 100 over
    queries x classes of the sigmoid scores (fewer if there are fewer pairs)."""

    def __init__(self, num_top=100):
        super().__init__()
        self.num_top = num_top

    @torch.no_grad()
    def forward(self, outputs, target_sizes):
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]   # (B, Q, K), (B, Q, 4)
        B, Q, K = logits.shape
        if len(target_sizes) != B:
            raise ValueError(f"PostProcess: target_sizes must be (B={B}, 2), got {tuple(target_sizes.shape)}")
        scores, index = logits.sigmoid().view(B, -1).topk(min(self.num_top, Q * K), dim=1)     # (B, T)
        boxes = box_cxcywh_to_xyxy(boxes).gather(1, (index // K)[..., None].expand(-1, -1, 4))  # (B, T, 4)
        height, width = torch.as_tensor(target_sizes, device=boxes.device).to(boxes.dtype).unbind(1)
        boxes = boxes * torch.stack((width, height, width, height), dim=1)[:, None, :]
        return [{"scores": s, "labels": c, "boxes": b} for s, c, b in zip(scores, index % K, boxes)]


def build_postprocess(cfg=None):
    return PostProcess()


def build(cfg):
    """cfg: SAMDETRConfig -> (model, criterion, postprocess)."""
    if cfg.ops not in ("fused", "reference"):
        raise ValueError(f"SAMDETRConfig.ops must be 'fused' or 'reference', got {cfg.ops!r}")
    model = SAMDETR(build_backbone(cfg), build_position_encoding(cfg), build_transformer(cfg), cfg.num_classes,
                    cfg.num_queries, cfg.dec_layers, cfg.input_proj_groupnorm, cfg.aux_loss)
    return model, build_criterion(cfg), build_postprocess(cfg)
