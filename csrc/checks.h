// Argument validation shared by the CPU and CUDA kernels. The public Python functions validate first (with the
// same messages, see samdetr_ops/_checks.py) so every backend rejects bad input alike; these checks keep a
// direct torch.ops.samdetr_ops.* call memory-safe.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymIntArrayRef.h>
#include <c10/util/Exception.h>

#include <vector>

namespace samdetr {

inline void check_same_device_dtype(const char* op, const at::Tensor& ref, const char* ref_name,
                                    const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), "samdetr_ops.", op, ": `", name, "` must be on the same device as `",
                    ref_name, "` (", ref.device(), "), got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "samdetr_ops.", op, ": `", name,
                   "` must have the same dtype as `", ref_name, "` (", ref.scalar_type(), "), got ", t.scalar_type());
}

inline void check_rank_and_last(const char* op, const at::Tensor& t, const char* name, int64_t rank,
                                int64_t last, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == rank && (last < 0 || t.size(-1) == last), "samdetr_ops.", op, ": `", name,
                    "` must have shape ", layout, ", got ", t.sizes());
}

inline void check_floating(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "samdetr_ops.", op, ": `", name,
                   "` must be a floating-point tensor, got ", t.scalar_type());
}

// The S_h x S_w grid of RoI bins. The schemas take `int[2] output_size`, so an int from Python arrives as (S, S).
struct PooledSize {
  int64_t h, w;
};

inline PooledSize check_output_size(const char* op, at::IntArrayRef output_size) {
  TORCH_CHECK_VALUE(output_size.size() == 2 && output_size[0] >= 1 && output_size[1] >= 1, "samdetr_ops.", op,
                    ": `output_size` must be an int or an (h, w) pair of ints >= 1, got ", output_size);
  return {output_size[0], output_size[1]};
}

// features (B, C, H, W), boxes (B, N, 4) x1 y1 x2 y2. Returns the pooled size.
inline PooledSize check_roi_inputs(const char* op, const at::Tensor& features, const at::Tensor& boxes,
                                   at::IntArrayRef output_size, int64_t sampling_ratio) {
  check_rank_and_last(op, features, "features", 4, -1, "(B, C, H, W)");
  check_floating(op, features, "features");
  check_rank_and_last(op, boxes, "boxes", 3, 4, "(B, N, 4)");
  check_same_device_dtype(op, features, "features", boxes, "boxes");
  TORCH_CHECK_VALUE(boxes.size(0) == features.size(0), "samdetr_ops.", op, ": `boxes` must have shape (B, N, 4) with B = ",
                    features.size(0), " as in `features`, got ", boxes.sizes());
  const PooledSize pooled = check_output_size(op, output_size);
  TORCH_CHECK_VALUE(sampling_ratio != 0 && sampling_ratio >= -1, "samdetr_ops.", op,
                    ": `sampling_ratio` must be a positive int or -1 (adaptive), got ", sampling_ratio);
  return pooled;
}

// points (B, N, M, 2), weight_logits (B, N, M, C) for semantic_align. Returns the pooled size.
inline PooledSize check_semantic_align_inputs(const at::Tensor& features, const at::Tensor& boxes,
                                              const at::Tensor& points, const at::Tensor& weight_logits,
                                              at::IntArrayRef output_size, int64_t sampling_ratio) {
  const char* op = "semantic_align";
  const PooledSize pooled = check_roi_inputs(op, features, boxes, output_size, sampling_ratio);
  check_rank_and_last(op, points, "points", 4, 2, "(B, N, M, 2)");
  check_same_device_dtype(op, features, "features", points, "points");
  check_rank_and_last(op, weight_logits, "weight_logits", 4, features.size(1), "(B, N, M, C) with C = features.size(1)");
  check_same_device_dtype(op, features, "features", weight_logits, "weight_logits");
  TORCH_CHECK_VALUE(points.size(0) == boxes.size(0) && points.size(1) == boxes.size(1), "samdetr_ops.", op,
                    ": `points` must have shape (B, N, M, 2) with B, N = ", boxes.size(0), ", ", boxes.size(1),
                    " as in `boxes`, got ", points.sizes());
  TORCH_CHECK_VALUE(weight_logits.sizes().slice(0, 3) == points.sizes().slice(0, 3), "samdetr_ops.", op,
                    ": `weight_logits` must have shape (B, N, M, C) with B, N, M = ", points.sizes().slice(0, 3),
                    " as in `points`, got ", weight_logits.sizes());
  return pooled;
}

// boxes_cxcywh (B, N, 4), points (B, N, M, 2), weight_logits (B, N, M, D) with D even.
inline void check_pos_embed_inputs(const at::Tensor& boxes, const at::Tensor& points, const at::Tensor& weight_logits) {
  const char* op = "salient_point_pos_embed";
  check_rank_and_last(op, boxes, "boxes_cxcywh", 3, 4, "(B, N, 4)");
  check_floating(op, boxes, "boxes_cxcywh");
  check_rank_and_last(op, points, "points", 4, 2, "(B, N, M, 2)");
  check_same_device_dtype(op, boxes, "boxes_cxcywh", points, "points");
  check_rank_and_last(op, weight_logits, "weight_logits", 4, -1, "(B, N, M, D)");
  check_same_device_dtype(op, boxes, "boxes_cxcywh", weight_logits, "weight_logits");
  TORCH_CHECK_VALUE(points.size(0) == boxes.size(0) && points.size(1) == boxes.size(1), "samdetr_ops.", op,
                    ": `points` must have shape (B, N, M, 2) with B, N = ", boxes.size(0), ", ", boxes.size(1),
                    " as in `boxes_cxcywh`, got ", points.sizes());
  TORCH_CHECK_VALUE(weight_logits.sizes().slice(0, 3) == points.sizes().slice(0, 3), "samdetr_ops.", op,
                    ": `weight_logits` must have shape (B, N, M, D) with B, N, M = ", points.sizes().slice(0, 3),
                    " as in `points`, got ", weight_logits.sizes());
  TORCH_CHECK_VALUE(weight_logits.size(3) % 2 == 0, "samdetr_ops.", op,
                    ": `weight_logits` must have an even last dimension D (half for y, half for x), got D = ",
                    weight_logits.size(3));
}

// roi_align_backward: grad_output (B, N, C, S_h, S_w), boxes (B, N, 4), feature_shape (B, C, H, W). Returns the
// feature shape; *pooled receives the pooled size.
inline at::IntArrayRef check_roi_align_backward_inputs(const at::Tensor& grad_output, const at::Tensor& boxes,
                                                       c10::SymIntArrayRef feature_shape, at::IntArrayRef output_size,
                                                       PooledSize* pooled) {
  const char* op = "roi_align_backward";
  *pooled = check_output_size(op, output_size);
  const at::IntArrayRef shape = C10_AS_INTARRAYREF_SLOW(feature_shape);
  TORCH_CHECK_VALUE(shape.size() == 4, "samdetr_ops.", op, ": `feature_shape` must be (B, C, H, W), got ", shape);
  check_rank_and_last(op, boxes, "boxes", 3, 4, "(B, N, 4)");
  TORCH_CHECK_VALUE(boxes.size(0) == shape[0], "samdetr_ops.", op, ": `boxes` must have B = ", shape[0], ", got ",
                    boxes.sizes());
  const std::vector<int64_t> expected = {shape[0], boxes.size(1), shape[1], pooled->h, pooled->w};
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(expected), "samdetr_ops.", op,
                    ": `grad_output` must have shape (B, N, C, S_h, S_w) = ", at::IntArrayRef(expected), ", got ",
                    grad_output.sizes());
  check_same_device_dtype(op, grad_output, "grad_output", boxes, "boxes");
  return shape;
}

// The backward of semantic_align or salient_point_pos_embed: grad_output has the forward output's shape, which
// is weight_logits' shape, and the dtype and device of `ref` (the forward's first input).
inline void check_grad_output(const char* op, const at::Tensor& grad_output, const at::Tensor& weight_logits,
                              const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_VALUE(grad_output.sizes() == weight_logits.sizes(), "samdetr_ops.", op,
                    ": `grad_output` must have the shape of `weight_logits`, ", weight_logits.sizes(), ", got ",
                    grad_output.sizes());
  check_same_device_dtype(op, ref, ref_name, grad_output, "grad_output");
}

}  // namespace samdetr
