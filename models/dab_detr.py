"""DAB-DETR (Liu et al., ICLR 2022, "Dynamic Anchor Boxes are Better Queries for DETR"), with and without
SAM-DETR's Semantics Aligner, on our backbone, encoder, matcher, criterion and postprocess.

DAB-DETR, as the public code (IDEA-Research/DAB-DETR, models/DAB_DETR) defaults: learnt 4-D anchor boxes
(cx, cy, w, h before the sigmoid); per layer the query position is MLP(sine embedding of the anchor) (2C -> C);
the cross-attention concatenates, per head, a content part and a positional part (query: content, and the sine of
the anchor centre scaled by MLP(content) and width/height-modulated by w_ref / w, h_ref / h; key: memory content
and pixel position), the query and key positions added to the contents in the first layer only; a final
LayerNorm; one box head refines the anchors layer by layer (inverse sigmoid + offset, detached between layers);
class and box heads shared by the layers; PReLU in the decoder's FFN; pixel position temperature 20.
Differences: our encoder (DAB-DETR's also rescales the pixel positions by an MLP of the content), our sine pixel
embedding (pixel centres), our focal loss weights (class 2, not 1), the input projection's GroupNorm as
DetectorConfig says (DAB-DETR: none; `--no_input_proj_groupnorm`), no pattern embeddings, 100 detections kept.

dab_detr_aligner: the same model whose cross-attention *query* comes from samdetr_ops.nn.SemanticAligner: for
each head m, the content part is the encoder feature at the head's salient point inside the anchor box and the
positional part the sine embedding of that point (both reweighted by the query), instead of the query's content
and the anchor-centre sine shared by all heads. Keys, values, self-attention and anchor refinement are unchanged.
The whole change is the `if self.aligner is None ... else ...` block of DABDecoderLayer.forward.

B images, N queries, M heads, C channels, HW = H*W pixels of the feature map; tokens are batch-first."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from samdetr_ops.nn import SemanticAligner

from .backbone import build_backbone
from .base import (
    MLP,
    DetectorBase,
    build_postprocess,
    clones,
    valid_ratios_of,
    xavier_init,
)
from .box_ops import inverse_sigmoid
from .config import check_aligner_implementation, check_no_smca
from .criterion import build_criterion
from .position_encoding import PositionEmbeddingSine, sine_features
from .transformer import TransformerEncoder, TransformerEncoderLayer


def sine_embed_of_boxes(boxes, dim):
    """boxes (..., 4) cx, cy, w, h in [0, 1] -> (..., 2 * dim): dim/2 sine features each of y, x, w, h (DAB-DETR's
    layout; the first dim features are the centre's, as sine_embed_of_points). With gradient: the learnt anchors
    train through it."""
    scaled = boxes * (2 * math.pi)
    return torch.cat([sine_features(scaled[..., i], dim // 2) for i in (1, 0, 2, 3)], dim=-1)


def split_heads(x, num_heads):
    """(..., C) -> (..., M, C/M)."""
    return x.unflatten(-1, (num_heads, -1))


def per_head_linear(linear, x):
    """Head m's slice of `linear` applied to head m's own input: x (B, N, M, C_in) -> (B, N, M, C_out/M), equal to
    split_heads(linear(x[:, :, m]), M)[:, :, m] for every m, without computing the M - 1 slices not kept. With
    one input per head this is what a multi-head attention's query projection becomes."""
    M = x.shape[-2]
    weight = linear.weight.view(M, linear.out_features // M, linear.in_features)          # (M, C_out/M, C_in)
    return torch.einsum("bnmc,mdc->bnmd", x, weight) + linear.bias.view(M, -1)


def multihead_attention(q, k, v, key_padding_mask, dropout_p):
    """q (B, N, M, D), k (B, S, M, D), v (B, S, M, Dv), key_padding_mask (B, S) True on keys to ignore, or None
    -> (B, N, M*Dv), heads concatenated; softmax(q k / sqrt(D)) v per head."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))                                      # (B, M, *, D)
    mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]      # (B, 1, 1, S) True: attend
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)     # (B, M, N, Dv)
    return out.transpose(1, 2).flatten(2)


class DABDecoderLayer(nn.Module):
    """DAB-DETR decoder layer (Conditional-DETR-style concatenated cross-attention), post-norm. aligner=True
    replaces the cross-attention query construction by the Semantics Aligner (one query per head);
    aligner_implementation is SemanticAligner's implementation. first_layer=True adds the projected query position
    to the cross-attention's query content and the pixel position to its key content (DAB-DETR's
    keep_query_pos=False: first layer only)."""

    def __init__(self, d_model, nheads, dim_feedforward, dropout, aligner=False, aligner_implementation="fused",
                 first_layer=False):
        super().__init__()
        self.nheads, self.dropout = nheads, dropout
        # self-attention
        self.sa_qcontent_proj = nn.Linear(d_model, d_model)
        self.sa_qpos_proj = nn.Linear(d_model, d_model)
        self.sa_kcontent_proj = nn.Linear(d_model, d_model)
        self.sa_kpos_proj = nn.Linear(d_model, d_model)
        self.sa_v_proj = nn.Linear(d_model, d_model)
        self.self_attn_out_proj = nn.Linear(d_model, d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        # cross-attention
        self.aligner = SemanticAligner(d_model, nheads, implementation=aligner_implementation) if aligner else None
        self.ca_qcontent_proj = nn.Linear(d_model, d_model)
        self.ca_qpos_proj = nn.Linear(d_model, d_model) if first_layer else None
        self.ca_qpos_sine_proj = nn.Linear(d_model, d_model)
        self.ca_kcontent_proj = nn.Linear(d_model, d_model)
        self.ca_kpos_proj = nn.Linear(d_model, d_model)
        self.ca_v_proj = nn.Linear(d_model, d_model)
        self.cross_attn_out_proj = nn.Linear(d_model, d_model)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        # FFN
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = nn.PReLU()
        self.dropout_ffn = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt, memory, pos, key_padding_mask, query_pos, anchor_position, anchors, spatial_shape,
                valid_ratios):
        """tgt, query_pos (B, N, C); memory, pos (B, HW, C); key_padding_mask (B, HW) True on padding;
        anchor_position (B, N, C) the modulated sine of the anchor centres (unused with the aligner); anchors
        (B, N, 4) cxcywh in [0, 1]; spatial_shape (H, W) Python ints; valid_ratios (B, 2) (w, h) -> (B, N, C)."""
        B, N, C = tgt.shape
        M, (H, W) = self.nheads, spatial_shape
        p = self.dropout if self.training else 0.0

        # self-attention among the queries
        q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_pos)
        k = self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_pos)
        v = self.sa_v_proj(tgt)
        tgt2 = multihead_attention(split_heads(q, M), split_heads(k, M), split_heads(v, M), None, p)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn_out_proj(tgt2)))

        # cross-attention queries: a content and a positional part per head, (B, N, M, C/M) each
        if self.aligner is None:   # DAB-DETR: the query's content and its anchor centre, split across the heads
            q_content = split_heads(self.ca_qcontent_proj(tgt), M)
            q_position = split_heads(self.ca_qpos_sine_proj(anchor_position), M)
        else:                      # Semantics Aligner: head m's query from its own salient point in the anchor box
            features = memory.transpose(1, 2).view(B, C, H, W)                             # channels-last view
            aligned, point_position, _ = self.aligner(features, anchors, tgt, valid_ratios)  # (B, N, M, C) each
            q_content = per_head_linear(self.ca_qcontent_proj, aligned)
            q_position = per_head_linear(self.ca_qpos_sine_proj, point_position)

        k_content, k_position = self.ca_kcontent_proj(memory), self.ca_kpos_proj(pos)      # (B, HW, C)
        if self.ca_qpos_proj is not None:
            q_content = q_content + split_heads(self.ca_qpos_proj(query_pos), M)
            k_content = k_content + k_position
        q = torch.cat((q_content, q_position), dim=-1)                                     # (B, N, M, 2C/M)
        k = torch.cat((split_heads(k_content, M), split_heads(k_position, M)), dim=-1)    # (B, HW, M, 2C/M)
        v = split_heads(self.ca_v_proj(memory), M)                                         # (B, HW, M, C/M)
        tgt2 = multihead_attention(q, k, v, key_padding_mask, p)                           # (B, N, C)
        tgt = self.norm2(tgt + self.dropout2(self.cross_attn_out_proj(tgt2)))

        tgt2 = self.linear2(self.dropout_ffn(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))


class DABDecoder(nn.Module):
    """Runs the layers, building each layer's query position from its anchors and refining the anchors after it.

    forward(memory, pos, key_padding_mask, spatial_shape, valid_ratios, anchor_logits, box_head):
        anchor_logits (N, 4) the learnt anchors before the sigmoid; box_head the (shared) box MLP
    -> hs (L, B, N, C) every layer's output after the final norm, references (L, B, N, 4): the anchors each layer's
       boxes are predicted from (the first with gradient to the learnt anchors, the others to the previous layer's
       box head, as DAB-DETR; each layer itself receives its anchors detached)."""

    def __init__(self, decoder_layer, num_layers, d_model, aligner=False):
        super().__init__()
        self.layers = clones(decoder_layer, num_layers)
        for layer in self.layers[1:]:
            layer.ca_qpos_proj = None
        self.norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)     # anchor sine (y, x, w, h) -> query position
        # the anchor-centre positional query of the cross-attention; the aligner makes its own
        self.query_scale = None if aligner else MLP(d_model, d_model, d_model, 2)
        self.ref_anchor_head = None if aligner else MLP(d_model, d_model, 2, 2)

    def anchor_position(self, tgt, anchor_sine, anchors, first_layer):
        """DAB-DETR's positional query: the sine of the anchor centre (B, N, C), times MLP(content) after the
        first layer, its x features times w_ref / w and its y features times h_ref / h, (w_ref, h_ref) =
        sigmoid(MLP(content)) (width/height-modulated attention)."""
        C = tgt.shape[-1]
        position = anchor_sine[..., :C]                                                    # (B, N, C) y then x
        if not first_layer:
            position = position * self.query_scale(tgt)
        reference_wh = self.ref_anchor_head(tgt).sigmoid()                                 # (B, N, 2) w, h
        modulation = torch.stack((reference_wh[..., 1] / anchors[..., 3], reference_wh[..., 0] / anchors[..., 2]),
                                 dim=-1)                                                   # (B, N, 2) y, x
        return position * modulation.repeat_interleave(C // 2, dim=-1)

    def forward(self, memory, pos, key_padding_mask, spatial_shape, valid_ratios, anchor_logits, box_head):
        B, _, C = memory.shape
        anchors = anchor_logits.sigmoid().expand(B, -1, -1)                                # (B, N, 4)
        tgt = memory.new_zeros(anchors.shape[:2] + (C,))                                   # (B, N, C)
        hs, references = [], [anchors]
        for index, layer in enumerate(self.layers):
            anchor_sine = sine_embed_of_boxes(anchors, C)                                  # (B, N, 2C)
            query_pos = self.ref_point_head(anchor_sine)                                   # (B, N, C)
            anchor_position = (None if self.query_scale is None
                               else self.anchor_position(tgt, anchor_sine, anchors, index == 0))
            tgt = layer(tgt, memory, pos, key_padding_mask, query_pos, anchor_position, anchors, spatial_shape,
                        valid_ratios)
            refined = (inverse_sigmoid(anchors) + box_head(tgt)).sigmoid()                # (B, N, 4)
            hs.append(self.norm(tgt))
            if index < len(self.layers) - 1:
                references.append(refined)
            anchors = refined.detach()
        return torch.stack(hs), torch.stack(references)


class DABTransformer(nn.Module):
    """Our encoder + the DAB-DETR decoder. forward(src, mask, pos, anchor_logits, box_head): src (B, C, H, W),
    mask (B, H, W) True on padding, pos (B, HW, C) -> hs (L, B, N, C), references (L, B, N, 4)."""

    def __init__(self, d_model=256, nheads=8, enc_layers=6, dec_layers=6, dim_feedforward=2048, dropout=0.0,
                 aligner=False, aligner_implementation="fused"):
        super().__init__()
        self.d_model = d_model
        self.encoder = TransformerEncoder(TransformerEncoderLayer(d_model, nheads, dim_feedforward, dropout),
                                          enc_layers)
        layer = DABDecoderLayer(d_model, nheads, dim_feedforward, dropout, aligner, aligner_implementation,
                                first_layer=True)
        self.decoder = DABDecoder(layer, dec_layers, d_model, aligner)
        xavier_init(self)

    def forward(self, src, mask, pos, anchor_logits, box_head):
        H, W = src.shape[-2:]
        key_padding_mask = mask.flatten(1)                                                 # (B, HW)
        memory = self.encoder(src.flatten(2).transpose(1, 2), pos, key_padding_mask)       # (B, HW, C)
        return self.decoder(memory, pos, key_padding_mask, (H, W), valid_ratios_of(mask, src.dtype), anchor_logits,
                            box_head)


class DABDETR(DetectorBase):
    """DAB-DETR's learnt anchor boxes (N, 4), refined layer by layer by the shared box head.
    forward(images, mask=None) -> the output dictionary of DetectorBase."""

    def __init__(self, backbone, position_embedding, transformer, num_classes, num_queries, input_proj_groupnorm=True,
                 aux_loss=True):
        super().__init__(backbone, position_embedding, transformer, aux_loss)
        self.add_input_proj_and_heads(num_classes, input_proj_groupnorm)
        self.anchor_embed = nn.Embedding(num_queries, 4)       # anchor boxes before the sigmoid, cxcywh

    def forward(self, images, mask=None):
        src, mask, pos = self.encoder_inputs(images, mask)
        hs, references = self.transformer(src, mask, pos, self.anchor_embed.weight, self.bbox_embed)
        boxes = (inverse_sigmoid(references) + self.bbox_embed(hs)).sigmoid()               # (L, B, N, 4)
        return self.detection_outputs(hs, boxes)


def build_dab_detr(cfg, aligner=False):
    """cfg: DetectorConfig (smca must be False; aligner_implementation is the aligner's) -> (model, criterion,
    postprocess)."""
    check_no_smca(cfg, "dab_detr_aligner" if aligner else "dab_detr")
    check_aligner_implementation(cfg)
    transformer = DABTransformer(cfg.hidden_dim, cfg.nheads, cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward,
                                 cfg.dropout, aligner, cfg.aligner_implementation)
    model = DABDETR(build_backbone(cfg), PositionEmbeddingSine(cfg.hidden_dim // 2, temperature=20.0), transformer,
                    cfg.num_classes, cfg.num_queries, cfg.input_proj_groupnorm, cfg.aux_loss)
    return model, build_criterion(cfg), build_postprocess(cfg)


def build_dab_detr_aligner(cfg):
    return build_dab_detr(cfg, aligner=True)
