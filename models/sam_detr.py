"""The SAM-DETR detector (Zhang et al., CVPR 2022): backbone -> input projection -> transformer -> class and box
heads per decoder layer; SAMDETRConfig and build. The parts every detector shares are in models/base.py."""
from dataclasses import dataclass

from torch import nn

from .backbone import build_backbone
from .base import DetectorBase, PostProcess, build_postprocess, check_aligner_ops, detection_heads, input_projection
from .criterion import build_criterion
from .position_encoding import build_position_encoding
from .transformer import build_transformer

__all__ = ["SAMDETR", "SAMDETRConfig", "PostProcess", "build", "build_postprocess"]


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


class SAMDETR(DetectorBase):
    """forward(images, mask=None): images (B, 3, H, W), mask (B, H, W) bool, True on padding ->
    {"pred_logits": (B, Q, num_classes), "pred_boxes": (B, Q, 4) cxcywh in [0, 1] of each image's valid size,
     "aux_outputs": [{"pred_logits", "pred_boxes"}] of the other decoder layers (aux_loss)}."""

    def __init__(self, backbone, position_embedding, transformer, num_classes, num_queries, dec_layers,
                 input_proj_groupnorm=True, aux_loss=True):
        super().__init__(backbone, position_embedding, transformer, aux_loss)
        self.query_embed = nn.Embedding(num_queries, 4)        # reference boxes before the sigmoid, cxcywh
        self.input_proj = input_projection(backbone.num_channels, transformer.d_model, input_proj_groupnorm)
        self.class_embed, self.bbox_embed = detection_heads(transformer.d_model, num_classes, copies=dec_layers)

    def forward(self, images, mask=None):
        src, mask, pos = self.encoder_inputs(images, mask)
        hs, boxes = self.transformer(src, mask, pos, self.query_embed.weight, self.bbox_embed)  # (L, B, Q, C|4)
        return self.detection_outputs(hs, boxes)


def build(cfg):
    """cfg: SAMDETRConfig -> (model, criterion, postprocess)."""
    check_aligner_ops(cfg)
    model = SAMDETR(build_backbone(cfg), build_position_encoding(cfg), build_transformer(cfg), cfg.num_classes,
                    cfg.num_queries, cfg.dec_layers, cfg.input_proj_groupnorm, cfg.aux_loss)
    return model, build_criterion(cfg), build_postprocess(cfg)
