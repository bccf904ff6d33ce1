"""nn.Modules built on the fused ops, for SAM-DETR and other DETR variants."""
import torch
from torch import nn

from . import roi_align, salient_point_pos_embed, semantic_align


class SemanticAligner(nn.Module):
    """SAM-DETR's Semantics Aligner: turns each query's reference box into M = num_points salient-point features
    of the encoder memory (one per attention head) and their sine position embeddings, both reweighted by the
    previous query embedding.

    forward(memory, reference_boxes, query) with
        memory           (B, C, H, W)  encoder features (a (B, H*W, C) token tensor viewed as (B, C, H, W) is the
                                       fast path: no copy)
        reference_boxes  (B, N, 4)     cx, cy, w, h normalised to [0, 1]
        query            (B, N, C)     previous query embedding
    returns
        query_aligned    (B, N, M, C)  features at the salient points * sigmoid(query W_rw1)
        query_pos        (B, N, M, C)  sine embedding of the salient points * sigmoid(query W_rw2)
        points           (B, N, M, 2)  the salient points, (x, y) in [-1, 1] inside each box
    """

    def __init__(self, d_model=256, num_points=8, roi_size=7, temperature=10000.0):
        super().__init__()
        self.d_model, self.num_points, self.roi_size, self.temperature = d_model, num_points, roi_size, temperature
        hidden = d_model // 4
        # ConvNet + MLP on the RoI features (B*N, C, S, S) -> M points
        self.point_conv = nn.Sequential(nn.Conv2d(d_model, hidden, 3, padding=1), nn.ReLU(inplace=True))
        self.point_mlp = nn.Sequential(nn.Linear(hidden * roi_size * roi_size, d_model), nn.ReLU(inplace=True),
                                       nn.Linear(d_model, 2 * num_points))
        self.reweight_query = nn.Linear(d_model, num_points * d_model)  # W_rw1
        self.reweight_pos = nn.Linear(d_model, num_points * d_model)    # W_rw2
        nn.init.zeros_(self.point_mlp[-1].weight)  # start with points spread at fixed offsets (the bias)
        with torch.no_grad():
            self.point_mlp[-1].bias.uniform_(-0.5, 0.5)

    def forward(self, memory, reference_boxes, query):
        B, C, H, W = memory.shape
        N, M, S = reference_boxes.shape[1], self.num_points, self.roi_size
        scale = reference_boxes.new_tensor([W, H, W, H])
        cx, cy, w, h = (reference_boxes * scale).unbind(-1)
        boxes_xyxy = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)  # (B, N, 4) in pixels
        rois = roi_align(memory, boxes_xyxy, S)                                              # (B, N, C, S, S)
        hidden = self.point_conv(rois.flatten(0, 1))                                          # (B*N, C/4, S, S)
        points = self.point_mlp(hidden.flatten(1)).view(B, N, M, 2).tanh()                   # (B, N, M, 2)
        query_logits = self.reweight_query(query).view(B, N, M, C)
        pos_logits = self.reweight_pos(query).view(B, N, M, C)
        query_aligned = semantic_align(memory, boxes_xyxy, points, query_logits, S)         # (B, N, M, C)
        query_pos = salient_point_pos_embed(reference_boxes, points, pos_logits, self.temperature)
        return query_aligned, query_pos, points
