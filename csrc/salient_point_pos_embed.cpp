// Schema of samdetr_ops::salient_point_pos_embed: sine embedding of box-relative salient points, reweighted.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(samdetr_ops, m) {
  m.def(
      "salient_point_pos_embed(Tensor boxes_cxcywh, Tensor points, Tensor weight_logits, "
      "float temperature=10000.0) -> Tensor");
  // Returns (grad_boxes_cxcywh (B, N, 4), grad_points (B, N, M, 2), grad_weight_logits (B, N, M, D)).
  m.def(
      "salient_point_pos_embed_backward(Tensor grad_output, Tensor boxes_cxcywh, Tensor points, "
      "Tensor weight_logits, float temperature) -> (Tensor, Tensor, Tensor)");
}
