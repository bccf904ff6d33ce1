"""What every detector of models/ shares: the layer helpers (MLP, clones, xavier_init, valid_ratios_of), the
detector base (backbone -> input projection -> position embedding; class and box heads; the output dictionary)
and PostProcess.

B images, N queries, K classes, L decoder layers, C channels, HW = H*W pixels of the feature map."""
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .box_ops import box_cxcywh_to_xyxy


class MLP(nn.Module):
    """Linear layers with ReLU between them (a feed-forward network)."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def dropout(x, p, training):
    """F.dropout(x, p, training) as one operation on every device: aten.native_dropout, which F.dropout runs on
    CUDA, draws the same mask from the same random numbers on a CPU (where F.dropout takes four operations)."""
    if not training or p == 0 or p == 1 or x.numel() == 0:
        return F.dropout(x, p, training)
    return torch.native_dropout(x, p, True)[0]


class Dropout(nn.Dropout):
    """nn.Dropout computed by `dropout` (the same mask and output; one operation on a CPU too)."""

    def forward(self, x):
        return F.dropout(x, self.p, True, True) if self.inplace and self.training else dropout(
            x, self.p, self.training)


def clones(module, n):
    """n independent deep copies of `module` (same initial weights), as an nn.ModuleList."""
    return nn.ModuleList(copy.deepcopy(module) for _ in range(n))


def xavier_init(transformer):
    """xavier_uniform_ on every weight matrix, as DETR, except the Semantics Aligner's zero-initialised last point
    layer (its points start at the box centres)."""
    for name, p in transformer.named_parameters():
        if p.dim() > 1 and "point_mlp.6." not in name:
            nn.init.xavier_uniform_(p)


def valid_ratios_of(mask, dtype):
    """mask (B, H, W) True on padding -> (B, 2): the valid fraction of the width and of the height, in `dtype`
    promoted to at least float32 (never bfloat16: the aligner scales box coordinates by it)."""
    H, W = mask.shape[-2:]
    ratio_dtype = torch.promote_types(dtype, torch.float32)
    return torch.stack(((~mask[:, 0, :]).sum(1).to(ratio_dtype) / W, (~mask[:, :, 0]).sum(1).to(ratio_dtype) / H),
                       dim=-1)


def input_projection(in_channels, hidden_dim, groupnorm):
    """1x1 convolution from the backbone's channels to the transformer's, then (groupnorm) GroupNorm(32, C): the
    official code's form for schedules under 25 epochs; its state-dict keys are input_proj.0 / input_proj.1."""
    projection = [nn.Conv2d(in_channels, hidden_dim, 1)]
    if groupnorm:
        projection.append(nn.GroupNorm(32, hidden_dim))
    return nn.Sequential(*projection)


def detection_heads(hidden_dim, num_classes, copies=None):
    """(class head, box head): a linear class head with its bias at the focal-loss prior 0.01, and a 3-layer box
    MLP whose last layer starts at zero (the first boxes are the reference boxes). copies=None: one head of each
    for every decoder layer (DETR, DAB-DETR); copies=L: L independent copies of each (SAM-DETR)."""
    class_embed = nn.Linear(hidden_dim, num_classes)
    nn.init.constant_(class_embed.bias, -math.log((1 - 0.01) / 0.01))
    bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
    nn.init.zeros_(bbox_embed.layers[-1].weight)
    nn.init.zeros_(bbox_embed.layers[-1].bias)
    if copies is None:
        return class_embed, bbox_embed
    return clones(class_embed, copies), clones(bbox_embed, copies)


class DetectorBase(nn.Module):
    """The detector around a transformer: backbone -> input projection -> position embedding (encoder_inputs),
    and the class head over the decoder's outputs (detection_outputs).

    Every detector's forward(images, mask=None): images (B, 3, H, W), mask (B, H, W) bool, True on padding (None:
    no padding) -> {"pred_logits": (B, N, num_classes), "pred_boxes": (B, N, 4) cxcywh in [0, 1] of each image's
    valid size, "aux_outputs": [{"pred_logits", "pred_boxes"}] of the other decoder layers (aux_loss)}.

    Each subclass's __init__ registers its learnt queries and calls add_input_proj_and_heads in its family's
    order (SAM-DETR: queries first; DETR, DAB-DETR: queries last): the parameter order is the order of a
    checkpoint's optimizer state, and the creation order decides a seed's initial weights, so neither may
    change."""

    def __init__(self, backbone, position_embedding, transformer, aux_loss=True):
        super().__init__()
        self.backbone, self.position_embedding, self.transformer = backbone, position_embedding, transformer
        self.aux_loss = aux_loss

    def add_input_proj_and_heads(self, num_classes, input_proj_groupnorm, head_copies=None):
        """input_proj (see input_projection), class_embed and bbox_embed (see detection_heads)."""
        hidden_dim = self.transformer.d_model
        self.input_proj = input_projection(self.backbone.num_channels, hidden_dim, input_proj_groupnorm)
        self.class_embed, self.bbox_embed = detection_heads(hidden_dim, num_classes, head_copies)

    def encoder_inputs(self, images, mask):
        """images (B, 3, H, W), mask (B, H, W) or None -> src (B, C, h, w), mask (B, h, w), pos (B, hw, C)."""
        if mask is None:
            mask = images.new_zeros(images.shape[0], *images.shape[2:], dtype=torch.bool)
        features, mask = self.backbone(images, mask)                    # (B, 2048, h, w), (B, h, w)
        src = self.input_proj(features)                                  # (B, C, h, w)
        return src, mask, self.position_embedding(mask).to(src.dtype)

    def detection_outputs(self, hs, boxes):
        """hs (L, B, N, C), boxes (L, B, N, 4) cxcywh in [0, 1] -> {"pred_logits": (B, N, K), "pred_boxes":
        (B, N, 4), "aux_outputs": the same of layers 0 .. L-2 (aux_loss)}."""
        if isinstance(self.class_embed, nn.ModuleList):                  # one class head per layer
            logits = torch.stack([head(h) for head, h in zip(self.class_embed, hs)])
        else:
            logits = self.class_embed(hs)                                # (L, B, N, K)
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        return out


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

