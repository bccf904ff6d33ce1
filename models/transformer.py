"""SAM-DETR's transformer: a DETR encoder and a decoder whose cross-attention queries come from the Semantics
Aligner. Tokens are batch-first: the memory stays (B, HW, C) and the aligner reads it as a channels-last
(B, C, H, W) view. B images, N queries, M heads (= salient points per query), C channels, HW = H*W pixels."""
import torch
import torch.nn.functional as F
from torch import nn

from samdetr_ops.nn import SemanticAligner

from .base import MLP, Dropout, clones, dropout, valid_ratios_of, xavier_init
from .box_ops import inverse_sigmoid
from .position_encoding import sine_embed_of_points


class TransformerEncoderLayer(nn.Module):
    """Post-norm DETR encoder layer: self-attention with q = k = src + pos, then FFN."""

    def __init__(self, d_model, nheads, dim_feedforward, dropout):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nheads, dropout=dropout, batch_first=True)
        self.dropout1 = Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout2 = Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout3 = Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, key_padding_mask, attn_mask=None):
        """src, pos (B, HW, C); key_padding_mask (B, HW) True on padding; attn_mask: its additive form
        (attention_mask_of; computed here if None) -> (B, HW, C)."""
        if attn_mask is None:
            attn_mask = attention_mask_of(key_padding_mask, src.dtype)
        src = self.norm1(src + self.dropout1(self_attention(self.self_attn, src + pos, src, attn_mask)))
        src2 = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(src2))


def attention_mask_of(key_padding_mask, dtype):
    """key_padding_mask (B, HW) True on padding -> (B, 1, 1, HW): -inf on padding, 0 elsewhere, in `dtype` (the
    additive mask nn.MultiheadAttention makes of it)."""
    mask = torch.zeros(key_padding_mask.shape, dtype=dtype, device=key_padding_mask.device)
    return mask.masked_fill_(key_padding_mask, float("-inf"))[:, None, None, :]


def self_attention(attn, qk, v, attn_mask):
    """What attn (a batch-first nn.MultiheadAttention) computes with query = key = qk, value = v and an additive
    attn_mask (B, 1, 1, HW), on its own parameters (the state-dict keys stay nn.MultiheadAttention's): the same
    three input projections and scaled_dot_product_attention with the same dropout, without its transposes to
    the sequence-first layout and its mask conversion. qk, v (B, HW, C) -> (B, HW, C)."""
    B, HW, C = qk.shape
    M = attn.num_heads
    weights, biases = attn.in_proj_weight.chunk(3), attn.in_proj_bias.chunk(3)
    heads = [F.linear(x, w, b).view(B, HW, M, C // M).transpose(1, 2)                    # (B, M, HW, C/M)
             for x, w, b in zip((qk, qk, v), weights, biases)]
    out = F.scaled_dot_product_attention(*heads, attn_mask=attn_mask,
                                         dropout_p=attn.dropout if attn.training else 0.0)
    # nn.MultiheadAttention's output layout, sequence-first in memory: a dropout after it draws the same mask
    return attn.out_proj(out.permute(2, 0, 1, 3).reshape(HW * B, C)).view(HW, B, C).transpose(0, 1)


class TransformerEncoder(nn.Module):
    """The encoder layers in sequence: src, pos (B, HW, C), key_padding_mask (B, HW) -> memory (B, HW, C)."""

    def __init__(self, encoder_layer, num_layers):
        super().__init__()
        self.layers = clones(encoder_layer, num_layers)

    def forward(self, src, pos, key_padding_mask):
        attn_mask = attention_mask_of(key_padding_mask, src.dtype)                          # once for all layers
        for layer in self.layers:
            src = layer(src, pos, key_padding_mask, attn_mask)
        return src


class TransformerDecoderLayer(nn.Module):
    """SAM-DETR decoder layer: self-attention (q, k = content + projected sine embedding of the box centres),
    the Semantics Aligner, cross-attention with one query per head (that head's salient-point feature + its
    projected position embedding; q and k of C channels per head, v of C/M), FFN; post-norm."""

    def __init__(self, d_model, nheads, dim_feedforward, dropout, smca=False, aligner_implementation="fused"):
        super().__init__()
        self.nheads, self.dropout, self.smca = nheads, dropout, smca
        # self-attention
        self.sa_qcontent_proj = nn.Linear(d_model, d_model)
        self.sa_qpos_proj = nn.Linear(d_model, d_model)
        self.sa_kcontent_proj = nn.Linear(d_model, d_model)
        self.sa_kpos_proj = nn.Linear(d_model, d_model)
        self.sa_v_proj = nn.Linear(d_model, d_model)
        self.self_attn_out_proj = nn.Linear(d_model, d_model)
        self.dropout1 = Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        # semantics aligner and cross-attention
        self.aligner = SemanticAligner(d_model, nheads, smca=smca, implementation=aligner_implementation)
        self.ca_qcontent_proj = nn.Linear(d_model, d_model)
        self.ca_kcontent_proj = nn.Linear(d_model, d_model)
        self.ca_v_proj = nn.Linear(d_model, d_model)
        self.ca_qpos_sine_proj = MLP(d_model, d_model, d_model, 2)
        self.ca_kpos_sine_proj = MLP(d_model, d_model, d_model, 2)
        self.cross_attn_out_proj = nn.Linear(d_model, d_model)
        self.dropout2 = Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        # FFN
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout_ffn = Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout3 = Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt, memory, pos, key_padding_mask, reference_boxes, spatial_shape, valid_ratios,
                memory_kv=None):
        """tgt (B, N, C); memory, pos (B, HW, C); key_padding_mask (B, HW); reference_boxes (B, N, 4) cxcywh in
        [0, 1]; spatial_shape (H, W) Python ints; valid_ratios (B, 2) (w, h); memory_kv: this layer's cross-
        attention keys and values (B, HW, C) each if already computed (cross_attention_keys_and_values), else
        None -> tgt (B, N, C)."""
        B, N, C = tgt.shape
        M, H, W = self.nheads, *spatial_shape
        p = self.dropout if self.training else 0.0

        # self-attention among the queries, heads of C/M channels
        query_sine = sine_embed_of_points(reference_boxes[..., :2], C)                     # (B, N, C), no grad
        q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_sine)
        k = self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_sine)
        v = self.sa_v_proj(tgt)
        heads = [x.view(B, N, M, C // M).transpose(1, 2) for x in (q, k, v)]               # (B, M, N, C/M)
        tgt2 = F.scaled_dot_product_attention(*heads, dropout_p=p).transpose(1, 2).reshape(B, N, C)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn_out_proj(tgt2)))

        # semantics aligner: one query per head, from the salient points of the reference box
        features = memory.transpose(1, 2).view(B, C, H, W)                                  # channels-last view
        aligned = self.aligner(features, reference_boxes, tgt, valid_ratios)
        query_aligned, query_pos, points = aligned[:3]                                       # (B, N, M, C) x2
        q = self.ca_qcontent_proj(query_aligned) + self.ca_qpos_sine_proj(query_pos)          # (B, N, M, C)

        # cross-attention: one key tensor serves every head (never expanded per head); head-major query rows,
        # so that the attention weights come out (B, M, N, HW), contiguous for the per-head value product
        if memory_kv is None:
            memory_kv = cross_attention_keys_and_values([self], memory, pos)[0]
        k, v = memory_kv                                                                     # (B, HW, C) x2
        q = q.transpose(1, 2).reshape(B, M * N, C) * C ** -0.5                               # (B, M*N, C)
        logits = torch.matmul(q, k.transpose(1, 2))                                          # (B, M*N, HW)
        logits = logits.masked_fill(key_padding_mask[:, None, :], float("-inf"))
        if self.smca:
            logits = logits + smca_bias(reference_boxes, points, aligned[3], spatial_shape, valid_ratios)
        attn = dropout(logits.softmax(-1), p, self.training).view(B, M, N, H * W)
        v = v.view(B, H * W, M, C // M).transpose(1, 2)                                      # (B, M, HW, C/M)
        tgt2 = torch.matmul(attn, v).transpose(1, 2).reshape(B, N, C)                        # heads concatenated
        tgt = self.norm2(tgt + self.dropout2(self.cross_attn_out_proj(tgt2)))

        tgt2 = self.linear2(self.dropout_ffn(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))


def smca_bias(reference_boxes, points, scales, spatial_shape, valid_ratios):
    """SMCA's Gaussian prior on the cross-attention logits of each head: -sum_xy ((p - (g + 0.5)) * s)^2 / 8 for
    the head's salient point p (feature pixels, valid-ratio scaled), pixel g and the head's predicted scale s.
    x and y are separable, so it is built from (B, M, N, W) and (B, M, N, H) terms, never from per-pixel
    distance vectors. reference_boxes (B, N, 4), points, scales (B, N, M, 2) -> (B, M*N, H*W), head-major."""
    H, W = spatial_shape
    B, N, M = points.shape[:3]
    points, scales = points.transpose(1, 2).contiguous(), scales.transpose(1, 2).contiguous()      # (B, M, N, 2)
    position = reference_boxes[:, None, :, :2] + 0.5 * reference_boxes[:, None, :, 2:] * points     # (B, M, N, 2)
    px = position[..., 0] * W * valid_ratios[:, None, None, 0]                                     # (B, M, N)
    py = position[..., 1] * H * valid_ratios[:, None, None, 1]
    gx = torch.arange(W, dtype=px.dtype, device=px.device) + 0.5                                   # (W,)
    gy = torch.arange(H, dtype=py.dtype, device=py.device) + 0.5
    dx = (px[..., None] - gx).square() * scales[..., 0:1].square()                                 # (B, M, N, W)
    dy = (py[..., None] - gy).square() * scales[..., 1:2].square()                                 # (B, M, N, H)
    return ((dy[..., :, None] + dx[..., None, :]) / -8.0).reshape(B, M * N, H * W)


def cross_attention_keys_and_values(layers, memory, pos):
    """The cross-attention keys ca_kcontent_proj(memory) + ca_kpos_sine_proj(pos) and values ca_v_proj(memory) of
    every decoder layer (B, HW, C) each: memory and pos are the same for all layers, so the projections of all
    layers run as one matrix product each (their weights concatenated; the second layer of the key-position MLPs
    as one batched product), forward and backward, instead of one per layer and projection."""
    L, (B, HW, C) = len(layers), memory.shape
    kv_weight = torch.cat([w for layer in layers for w in (layer.ca_kcontent_proj.weight, layer.ca_v_proj.weight)])
    kv_bias = torch.cat([b for layer in layers for b in (layer.ca_kcontent_proj.bias, layer.ca_v_proj.bias)])
    kv = F.linear(memory, kv_weight, kv_bias).view(B, HW, L, 2, C)
    first, second = zip(*(layer.ca_kpos_sine_proj.layers for layer in layers))
    hidden = F.relu(F.linear(pos, torch.cat([f.weight for f in first]), torch.cat([f.bias for f in first])))
    hidden = hidden.view(B * HW, L, C).transpose(0, 1)                                   # (L, B*HW, C)
    kpos = torch.baddbmm(torch.stack([s.bias for s in second])[:, None, :], hidden,
                         torch.stack([s.weight for s in second]).transpose(1, 2))        # (L, B*HW, C)
    k = kv[:, :, :, 0] + kpos.view(L, B, HW, C).permute(1, 2, 0, 3)                     # (B, HW, L, C)
    return [(k[:, :, i], kv[:, :, i, 1]) for i in range(L)]


class TransformerDecoder(nn.Module):
    """Runs the decoder layers, refining the reference boxes after each one with that layer's box head
    (inverse-sigmoid + offset), detached between layers.

    forward(memory, pos, key_padding_mask, spatial_shape, valid_ratios, box_logits, box_heads):
        box_logits (N, 4): the learnt reference boxes before the sigmoid; box_heads: one MLP per layer
    -> hs (L, B, N, C) the output of every layer, boxes (L, B, N, 4) its predicted boxes, cxcywh in [0, 1]."""

    def __init__(self, decoder_layer, num_layers):
        super().__init__()
        self.layers = clones(decoder_layer, num_layers)

    def forward(self, memory, pos, key_padding_mask, spatial_shape, valid_ratios, box_logits, box_heads):
        B, _, C = memory.shape
        tgt = memory.new_zeros(B, box_logits.shape[0], C)                                 # (B, N, C)
        box_logits = box_logits.expand(B, -1, -1)                                        # (B, N, 4)
        reference_boxes = box_logits.sigmoid()
        hs, references, offsets = [], [], []
        memory_kv = cross_attention_keys_and_values(self.layers, memory, pos)
        for layer, box_head, kv in zip(self.layers, box_heads, memory_kv):
            tgt = layer(tgt, memory, pos, key_padding_mask, reference_boxes, spatial_shape, valid_ratios, kv)
            offset = box_head(tgt)                                                       # (B, N, 4)
            hs.append(tgt)
            references.append(reference_boxes)
            offsets.append(offset)
            box_logits = (box_logits + offset).detach()
            reference_boxes = box_logits.sigmoid()
        # every layer's boxes at once: its reference boxes refined by its offsets
        boxes = (inverse_sigmoid(torch.stack(references)) + torch.stack(offsets)).sigmoid()  # (L, B, N, 4)
        return torch.stack(hs), boxes


class Transformer(nn.Module):
    """Encoder + decoder. forward(src, mask, pos, box_logits, box_heads): src (B, C, H, W) projected backbone
    features, mask (B, H, W) True on padding, pos (B, HW, C) -> hs (L, B, N, C), boxes (L, B, N, 4)."""

    def __init__(self, d_model=256, nheads=8, enc_layers=6, dec_layers=6, dim_feedforward=2048, dropout=0.1,
                 smca=False, aligner_implementation="fused"):
        super().__init__()
        self.d_model = d_model
        self.encoder = TransformerEncoder(TransformerEncoderLayer(d_model, nheads, dim_feedforward, dropout),
                                          enc_layers)
        self.decoder = TransformerDecoder(
            TransformerDecoderLayer(d_model, nheads, dim_feedforward, dropout, smca, aligner_implementation),
            dec_layers)
        xavier_init(self)

    def forward(self, src, mask, pos, box_logits, box_heads):
        H, W = src.shape[-2:]
        valid_ratios = valid_ratios_of(mask, src.dtype)                                    # (B, 2) w, h
        key_padding_mask = mask.flatten(1)                                                 # (B, HW)
        memory = self.encoder(src.flatten(2).transpose(1, 2), pos, key_padding_mask)       # (B, HW, C)
        return self.decoder(memory, pos, key_padding_mask, (H, W), valid_ratios, box_logits, box_heads)


def build_transformer(cfg):
    return Transformer(cfg.hidden_dim, cfg.nheads, cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward,
                       cfg.dropout, cfg.smca, cfg.aligner_implementation)
