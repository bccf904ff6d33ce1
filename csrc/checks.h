// Argument validation shared by the CPU and CUDA kernels. The public Python functions validate first (with the
// same messages, see samdetr_ops/_checks.py, which says why both exist) so every backend rejects bad input alike;
// these checks keep a direct torch.ops.samdetr_ops.* call, which skips the Python ones, memory-safe.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymIntArrayRef.h>
#include <c10/util/Exception.h>

#include <array>
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

// points (B, N, M, 2) and weight_logits (B, N, M, `letter`) beside boxes (B, N, 4), with the device and dtype of
// `like`; channels: the required size of the logits' last dimension (< 0: any), `layout` their shape in messages.
inline void check_points_and_logits(const char* op, const at::Tensor& like, const char* like_name,
                                    const at::Tensor& boxes, const char* boxes_name, const at::Tensor& points,
                                    const at::Tensor& weight_logits, int64_t channels, const char* letter,
                                    const char* layout) {
  check_rank_and_last(op, points, "points", 4, 2, "(B, N, M, 2)");
  check_same_device_dtype(op, like, like_name, points, "points");
  check_rank_and_last(op, weight_logits, "weight_logits", 4, channels, layout);
  check_same_device_dtype(op, like, like_name, weight_logits, "weight_logits");
  TORCH_CHECK_VALUE(points.size(0) == boxes.size(0) && points.size(1) == boxes.size(1), "samdetr_ops.", op,
                    ": `points` must have shape (B, N, M, 2) with B, N = ", boxes.size(0), ", ", boxes.size(1),
                    " as in `", boxes_name, "`, got ", points.sizes());
  TORCH_CHECK_VALUE(weight_logits.sizes().slice(0, 3) == points.sizes().slice(0, 3), "samdetr_ops.", op,
                    ": `weight_logits` must have shape (B, N, M, ", letter, ") with B, N, M = ",
                    points.sizes().slice(0, 3), " as in `points`, got ", weight_logits.sizes());
}

// points (B, N, M, 2), weight_logits (B, N, M, C) for semantic_align. Returns the pooled size.
inline PooledSize check_semantic_align_inputs(const at::Tensor& features, const at::Tensor& boxes,
                                              const at::Tensor& points, const at::Tensor& weight_logits,
                                              at::IntArrayRef output_size, int64_t sampling_ratio) {
  const char* op = "semantic_align";
  const PooledSize pooled = check_roi_inputs(op, features, boxes, output_size, sampling_ratio);
  check_points_and_logits(op, features, "features", boxes, "boxes", points, weight_logits, features.size(1), "C",
                          "(B, N, M, C) with C = features.size(1)");
  return pooled;
}

// boxes_cxcywh (B, N, 4), points (B, N, M, 2), weight_logits (B, N, M, D) with D even.
inline void check_pos_embed_inputs(const at::Tensor& boxes, const at::Tensor& points, const at::Tensor& weight_logits) {
  const char* op = "salient_point_pos_embed";
  check_rank_and_last(op, boxes, "boxes_cxcywh", 3, 4, "(B, N, 4)");
  check_floating(op, boxes, "boxes_cxcywh");
  check_points_and_logits(op, boxes, "boxes_cxcywh", boxes, "boxes_cxcywh", points, weight_logits, -1, "D",
                          "(B, N, M, D)");
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

// ms_deform_attn: value (B, S, heads, D); spatial_shapes (L, 2) int64 (H, W); level_start_index (L,) int64;
// sampling_locations (B, Q, heads, L, P, 2) (x, y); attention_weights (B, Q, heads, L, P). Shapes, dtypes and
// devices only: check_ms_deform_attn_levels reads the level sizes themselves, where they are on the host.
inline void check_ms_deform_attn_inputs(const char* op, const at::Tensor& value, const at::Tensor& spatial_shapes,
                                        const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                        const at::Tensor& attention_weights) {
  check_rank_and_last(op, value, "value", 4, -1, "(B, S, heads, D)");
  check_floating(op, value, "value");
  check_rank_and_last(op, spatial_shapes, "spatial_shapes", 2, 2, "(L, 2) (H, W) per level");
  check_rank_and_last(op, level_start_index, "level_start_index", 1, -1, "(L,)");
  const auto check_index_tensor = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, "samdetr_ops.", op, ": `", name, "` must be an int64 tensor, got ",
                     t.scalar_type());
    TORCH_CHECK_VALUE(t.device() == value.device(), "samdetr_ops.", op, ": `", name,
                      "` must be on the same device as `value` (", value.device(), "), got ", t.device());
  };
  check_index_tensor(spatial_shapes, "spatial_shapes");
  check_index_tensor(level_start_index, "level_start_index");
  const int64_t L = spatial_shapes.size(0);
  TORCH_CHECK_VALUE(level_start_index.size(0) == L, "samdetr_ops.", op,
                    ": `level_start_index` must have shape (L,) with L = ", L, " as in `spatial_shapes`, got ",
                    level_start_index.sizes());
  check_rank_and_last(op, sampling_locations, "sampling_locations", 6, 2, "(B, Q, heads, L, P, 2)");
  check_same_device_dtype(op, value, "value", sampling_locations, "sampling_locations");
  TORCH_CHECK_VALUE(sampling_locations.size(0) == value.size(0) && sampling_locations.size(2) == value.size(2) &&
                        sampling_locations.size(3) == L,
                    "samdetr_ops.", op, ": `sampling_locations` must have shape (B, Q, heads, L, P, 2) with B, heads = ",
                    value.size(0), ", ", value.size(2), " as in `value` and L = ", L, " as in `spatial_shapes`, got ",
                    sampling_locations.sizes());
  check_rank_and_last(op, attention_weights, "attention_weights", 5, -1, "(B, Q, heads, L, P)");
  check_same_device_dtype(op, value, "value", attention_weights, "attention_weights");
  TORCH_CHECK_VALUE(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5), "samdetr_ops.", op,
                    ": `attention_weights` must have shape (B, Q, heads, L, P) = ", sampling_locations.sizes().slice(0, 5),
                    " as in `sampling_locations`, got ", attention_weights.sizes());
}

// The level sizes of host (CPU) tensors: non-negative, consecutive (level_start_index the exclusive cumulative sum
// of H * W) and filling the S rows of `value` exactly. Returns (H, W, start) per level.
inline std::vector<std::array<int64_t, 3>> check_ms_deform_attn_levels(const char* op, const at::Tensor& value,
                                                                      const at::Tensor& spatial_shapes,
                                                                      const at::Tensor& level_start_index) {
  const at::Tensor shapes = spatial_shapes.contiguous(), starts = level_start_index.contiguous();
  const int64_t* hw = shapes.const_data_ptr<int64_t>();
  const int64_t* start = starts.const_data_ptr<int64_t>();
  const int64_t L = shapes.size(0);
  std::vector<std::array<int64_t, 3>> levels(L);
  std::vector<int64_t> expected(L);
  int64_t total = 0;
  bool consistent = true;
  for (int64_t l = 0; l < L; ++l) {
    TORCH_CHECK_VALUE(hw[2 * l] >= 0 && hw[2 * l + 1] >= 0, "samdetr_ops.", op,
                      ": `spatial_shapes` must hold sizes >= 0, got (", hw[2 * l], ", ", hw[2 * l + 1], ") at level ",
                      l);
    expected[l] = total;
    consistent = consistent && start[l] == total;
    levels[l] = {hw[2 * l], hw[2 * l + 1], total};
    total += hw[2 * l] * hw[2 * l + 1];
  }
  TORCH_CHECK_VALUE(consistent, "samdetr_ops.", op, ": `level_start_index` must be the cumulative level sizes ",
                    at::IntArrayRef(expected), " (levels stored one after the other), got ",
                    at::IntArrayRef(start, L));
  TORCH_CHECK_VALUE(total == value.size(1), "samdetr_ops.", op,
                    ": `value` must have shape (B, S, heads, D) with S = ", total,
                    ", the sum of H * W over `spatial_shapes`, got ", value.sizes());
  return levels;
}

// ms_deform_attn_backward: grad_output (B, Q, heads * D) with the dtype and device of value (B, S, heads, D).
inline void check_ms_deform_attn_grad_output(const char* op, const at::Tensor& grad_output, const at::Tensor& value,
                                             int64_t B, int64_t Q) {
  const std::vector<int64_t> expected = {B, Q, value.size(2) * value.size(3)};
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(expected), "samdetr_ops.", op,
                    ": `grad_output` must have shape (B, Q, heads * D) = ", at::IntArrayRef(expected), ", got ",
                    grad_output.sizes());
  check_same_device_dtype(op, value, "value", grad_output, "grad_output");
}

}  // namespace samdetr
