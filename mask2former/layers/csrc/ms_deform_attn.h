// Multi-scale deformable attention: declarations shared by the CPU and CUDA kernels.
//
// Notation: N batch, S = sum_l H_l * W_l value positions, M heads, D channels per head,
// Lq queries, L levels, P sampling points per head and level.
//   value               (N, S, M, D)
//   spatial_shapes      (L, 2) int64, (H_l, W_l)
//   level_start_index   (L,) int64, first position of level l in S
//   sampling_locations  (N, Lq, M, L, P, 2), normalised (x, y); pixel x = loc_x * W_l - 0.5
//   attention_weights   (N, Lq, M, L, P)
//   output              (N, Lq, M * D)
// out[n, q, m, :] = sum_{l, p} a[n, q, m, l, p] * bilinear(value level l, head m, loc[n, q, m, l, p])
// with bilinear sampling as grid_sample(align_corners=False, padding_mode="zeros").
#pragma once

#include <math.h>
#include <stdint.h>

#include <tuple>

#include <ATen/core/Tensor.h>

#if defined(__CUDACC__)
#define M2F_HOST_DEVICE __host__ __device__
#else
#define M2F_HOST_DEVICE
#endif

namespace mask2former {

M2F_HOST_DEVICE inline float floor_value(float x) { return floorf(x); }
M2F_HOST_DEVICE inline double floor_value(double x) { return floor(x); }

// The four corners of one bilinear sample, in the order (y0, x0), (y0, x1), (y1, x0), (y1, x1)
// where x1 = x0 + 1 and y1 = y0 + 1.
template <typename acc_t>
struct BilinearPoint {
  int64_t index[4];    // y * W + x of the corner within its level; -1 when outside the level
  acc_t weight[4];     // bilinear weight of the corner
  acc_t weight_dx[4];  // d weight / d x, x in pixels
  acc_t weight_dy[4];  // d weight / d y, y in pixels
};

// Fills `pt` for the normalised location (loc_x, loc_y) on a level of size height x width.
// Returns false when no corner lies inside the level (NaN locations included); the sample and
// all its gradients are zero then.
template <typename acc_t>
M2F_HOST_DEVICE inline bool bilinear_point(acc_t loc_x, acc_t loc_y, int64_t height,
                                           int64_t width, BilinearPoint<acc_t>& pt) {
  const acc_t x = loc_x * static_cast<acc_t>(width) - acc_t(0.5);
  const acc_t y = loc_y * static_cast<acc_t>(height) - acc_t(0.5);
  // x0 = floor(x) must be in [-1, W - 1] for a corner to be inside; written so NaN fails.
  if (!(x >= acc_t(-1) && x < static_cast<acc_t>(width) && y >= acc_t(-1) &&
        y < static_cast<acc_t>(height))) {
    return false;
  }
  const acc_t x0f = floor_value(x);
  const acc_t y0f = floor_value(y);
  const acc_t fx = x - x0f;  // exact in floating point
  const acc_t fy = y - y0f;
  const acc_t gx = acc_t(1) - fx;
  const acc_t gy = acc_t(1) - fy;
  const int64_t x0 = static_cast<int64_t>(x0f);
  const int64_t y0 = static_cast<int64_t>(y0f);
  const bool x0_in = x0 >= 0;
  const bool x1_in = x0 + 1 < width;
  const bool y0_in = y0 >= 0;
  const bool y1_in = y0 + 1 < height;
  pt.index[0] = (y0_in && x0_in) ? y0 * width + x0 : -1;
  pt.index[1] = (y0_in && x1_in) ? y0 * width + x0 + 1 : -1;
  pt.index[2] = (y1_in && x0_in) ? (y0 + 1) * width + x0 : -1;
  pt.index[3] = (y1_in && x1_in) ? (y0 + 1) * width + x0 + 1 : -1;
  pt.weight[0] = gy * gx;
  pt.weight[1] = gy * fx;
  pt.weight[2] = fy * gx;
  pt.weight[3] = fy * fx;
  pt.weight_dx[0] = -gy;
  pt.weight_dx[1] = gy;
  pt.weight_dx[2] = -fy;
  pt.weight_dx[3] = fy;
  pt.weight_dy[0] = -gx;
  pt.weight_dy[1] = -fx;
  pt.weight_dy[2] = gx;
  pt.weight_dy[3] = fx;
  return true;
}

// Sizes of one call, read from the validated inputs.
struct Sizes {
  int64_t N, S, M, D, Lq, L, P;
};

// Checks shapes, dtypes and devices (throws c10::Error) and returns the sizes.
Sizes check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights);

at::Tensor forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                       const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                       const at::Tensor& attention_weights);

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output);

#ifdef WITH_CUDA
at::Tensor forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                        const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                        const at::Tensor& attention_weights);

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output);
#endif

}  // namespace mask2former
