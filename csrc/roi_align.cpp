// Schema of samdetr_ops::roi_align: torchvision.ops.roi_align over (B, N, 4) boxes, output (B, N, C, S_h, S_w).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(samdetr_ops, m) {
  m.def(
      "roi_align(Tensor features, Tensor boxes, int[2] output_size=7, float spatial_scale=1.0, int sampling_ratio=-1, "
      "bool aligned=True) -> Tensor");
  // grad_output (B, N, C, S_h, S_w) -> grad_features (B, C, H, W) in channels-last memory.
  m.def(
      "roi_align_backward(Tensor grad_output, Tensor boxes, SymInt[] feature_shape, int[2] output_size, "
      "float spatial_scale, int sampling_ratio, bool aligned) -> Tensor");
}
