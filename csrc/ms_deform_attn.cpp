// Schema of samdetr_ops::ms_deform_attn: Deformable-DETR's multi-scale deformable attention (MSDeformAttnFunction).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(samdetr_ops, m) {
  // value (B, S, heads, D), spatial_shapes (L, 2) int64, level_start_index (L,) int64, sampling_locations
  // (B, Q, heads, L, P, 2), attention_weights (B, Q, heads, L, P) -> (B, Q, heads * D).
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, Tensor sampling_locations, "
      "Tensor attention_weights) -> Tensor");
  // grad_output (B, Q, heads * D) -> (grad_value, grad_sampling_locations, grad_attention_weights), each shaped as
  // its input; a gradient whose output_mask entry is false comes back as zeros without being computed.
  m.def(
      "ms_deform_attn_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}
