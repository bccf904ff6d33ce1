// Schema of samdetr_ops::semantic_align: RoIAlign + grid_sample of M salient points + sigmoid reweighting, fused.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(samdetr_ops, m) {
  m.def(
      "semantic_align(Tensor features, Tensor boxes, Tensor points, Tensor weight_logits, int[2] output_size=7, "
      "float spatial_scale=1.0, int sampling_ratio=-1, bool aligned=True) -> Tensor");
  // Returns (grad_features (B, C, H, W) channels-last, grad_points (B, N, M, 2), grad_weight_logits (B, N, M, C));
  // a gradient whose output_mask entry is false comes back as zeros without being computed.
  m.def(
      "semantic_align_backward(Tensor grad_output, Tensor features, Tensor boxes, Tensor points, "
      "Tensor weight_logits, int[2] output_size, float spatial_scale, int sampling_ratio, bool aligned, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}
