"""DETR (Carion et al., ECCV 2020): the SAM-DETR paper's baseline, on our backbone, encoder, matcher, criterion
and postprocess. Learnt query embeddings, a standard decoder (self-attention, then cross-attention with
q = content + query embedding, k = memory + pixel position, v = memory), a final LayerNorm on every layer's output,
class and box heads shared by all layers, boxes predicted directly (no reference box).

One deliberate difference from the original: the classes are scored with sigmoid focal loss (our criterion, as
Conditional/DAB/SAM-DETR), not softmax with a no-object class, so that every model of the convergence comparison
trains with the same loss and matcher. The parts every detector shares are in models/base.py.
B images, N queries, M heads, C channels, HW = H*W pixels of the feature map; tokens are batch-first."""
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import build_backbone
from .base import DetectorBase, build_postprocess, clones, xavier_init
from .config import check_no_smca
from .criterion import build_criterion
from .position_encoding import build_position_encoding
from .transformer import TransformerEncoder, TransformerEncoderLayer

__all__ = ["DETR", "DETRBase", "DETRDecoderLayer", "DETRTransformer", "build_detr", "check_no_smca", "clones",
           "xavier_init"]


class DETRDecoderLayer(nn.Module):
    """Post-norm DETR decoder layer: self-attention (q = k = tgt + query_pos), cross-attention
    (q = tgt + query_pos, k = memory + pos, v = memory), FFN."""

    def __init__(self, d_model, nheads, dim_feedforward, dropout):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout_ffn = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt, memory, pos, key_padding_mask, query_pos):
        """tgt, query_pos (B, N, C); memory, pos (B, HW, C); key_padding_mask (B, HW) True on padding -> (B, N, C)."""
        q = k = tgt + query_pos
        tgt2 = self.self_attn(q, k, tgt, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        tgt2 = self.cross_attn(tgt + query_pos, memory + pos, memory, key_padding_mask=key_padding_mask,
                               need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.linear2(self.dropout_ffn(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))


class DETRTransformer(nn.Module):
    """Our encoder + the DETR decoder. forward(src, mask, pos, query_embed): src (B, C, H, W), mask (B, H, W) True
    on padding, pos (B, HW, C), query_embed (N, C) -> hs (L, B, N, C) every layer's output after the final norm."""

    def __init__(self, d_model=256, nheads=8, enc_layers=6, dec_layers=6, dim_feedforward=2048, dropout=0.1):
        super().__init__()
        self.d_model = d_model
        self.encoder = TransformerEncoder(TransformerEncoderLayer(d_model, nheads, dim_feedforward, dropout),
                                          enc_layers)
        self.layers = nn.ModuleList(DETRDecoderLayer(d_model, nheads, dim_feedforward, dropout)
                                    for _ in range(dec_layers))
        self.norm = nn.LayerNorm(d_model)
        xavier_init(self)

    def forward(self, src, mask, pos, query_embed):
        B = src.shape[0]
        key_padding_mask = mask.flatten(1)                                                 # (B, HW)
        memory = self.encoder(src.flatten(2).transpose(1, 2), pos, key_padding_mask)       # (B, HW, C)
        query_pos = query_embed.expand(B, -1, -1)                                          # (B, N, C)
        tgt = torch.zeros_like(query_pos)
        hs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, key_padding_mask, query_pos)
            hs.append(self.norm(tgt))
        return torch.stack(hs)


class DETRBase(DetectorBase):
    """Deprecated: the base of DETR and DAB-DETR is models.base.DetectorBase (shared with SAM-DETR); this keeps
    the old constructor, which builds the input projection and the shared heads."""

    def __init__(self, backbone, position_embedding, transformer, num_classes, input_proj_groupnorm=True,
                 aux_loss=True):
        warnings.warn("models.detr.DETRBase is deprecated; subclass models.base.DetectorBase",
                      DeprecationWarning, stacklevel=2)
        super().__init__(backbone, position_embedding, transformer, aux_loss)
        self.add_input_proj_and_heads(num_classes, input_proj_groupnorm)


class DETR(DetectorBase):
    """DETR's learnt query embeddings (N, C) as the decoder's query positions; boxes predicted directly.
    forward(images, mask=None) -> the output dictionary of DetectorBase."""

    def __init__(self, backbone, position_embedding, transformer, num_classes, num_queries, input_proj_groupnorm=True,
                 aux_loss=True):
        super().__init__(backbone, position_embedding, transformer, aux_loss)
        self.add_input_proj_and_heads(num_classes, input_proj_groupnorm)
        self.query_embed = nn.Embedding(num_queries, transformer.d_model)   # learnt query positions

    def forward(self, images, mask=None):
        src, mask, pos = self.encoder_inputs(images, mask)
        hs = self.transformer(src, mask, pos, self.query_embed.weight)        # (L, B, N, C)
        return self.detection_outputs(hs, self.bbox_embed(hs).sigmoid())


def build_detr(cfg):
    """cfg: DetectorConfig (smca must be False; ops is unused) -> (model, criterion, postprocess)."""
    check_no_smca(cfg, "detr")
    transformer = DETRTransformer(cfg.hidden_dim, cfg.nheads, cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward,
                                  cfg.dropout)
    model = DETR(build_backbone(cfg), build_position_encoding(cfg), transformer, cfg.num_classes, cfg.num_queries,
                 cfg.input_proj_groupnorm, cfg.aux_loss)
    return model, build_criterion(cfg), build_postprocess(cfg)

