"""The SAM-DETR detector (Zhang et al., CVPR 2022): backbone -> input projection -> transformer -> class and box
heads per decoder layer; build. The parts every detector shares are in models/base.py, its configuration in
models/config.py (SAMDETRConfig, its old name, is kept importable from here as a deprecated alias)."""
from torch import nn

from .backbone import build_backbone
from .base import DetectorBase, PostProcess, build_postprocess
from .config import SAMDETRConfig, check_aligner_implementation
from .criterion import build_criterion
from .position_encoding import build_position_encoding
from .transformer import build_transformer

__all__ = ["SAMDETR", "SAMDETRConfig", "PostProcess", "build", "build_postprocess"]


class SAMDETR(DetectorBase):
    """SAM-DETR's learnt reference boxes (N, 4), refined layer by layer by each layer's own box head.
    forward(images, mask=None) -> the output dictionary of DetectorBase."""

    def __init__(self, backbone, position_embedding, transformer, num_classes, num_queries, dec_layers,
                 input_proj_groupnorm=True, aux_loss=True):
        super().__init__(backbone, position_embedding, transformer, aux_loss)
        self.query_embed = nn.Embedding(num_queries, 4)        # reference boxes before the sigmoid, cxcywh
        self.add_input_proj_and_heads(num_classes, input_proj_groupnorm, head_copies=dec_layers)

    def forward(self, images, mask=None):
        src, mask, pos = self.encoder_inputs(images, mask)
        hs, boxes = self.transformer(src, mask, pos, self.query_embed.weight, self.bbox_embed)  # (L, B, Q, C|4)
        return self.detection_outputs(hs, boxes)


def build(cfg):
    """cfg: DetectorConfig -> (model, criterion, postprocess)."""
    check_aligner_implementation(cfg)
    model = SAMDETR(build_backbone(cfg), build_position_encoding(cfg), build_transformer(cfg), cfg.num_classes,
                    cfg.num_queries, cfg.dec_layers, cfg.input_proj_groupnorm, cfg.aux_loss)
    return model, build_criterion(cfg), build_postprocess(cfg)
