// CUDA kernels of multi-scale deformable attention: float32, float16, bfloat16 (and float64)
// inputs, arithmetic in at::opmath_type (float for the 16-bit types).
//
// One warp handles one (batch, query, head) item; lane i handles channels i, i + 32, ... of the
// head, so value and output reads are coalesced along D. The loop over items is warp-uniform
// (all lanes of a warp share the item), so the full-mask shuffles below always see 32 active
// lanes, whatever D, L and P are.
// Backward: the location and weight gradients are dot products over D, reduced across the warp
// with shuffles and written once by lane 0 (no atomics). grad_value receives contributions from
// any query, so it is accumulated with atomicAdd into an opmath-typed buffer (float atomics,
// also for 16-bit inputs), cast to the input dtype at the end.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "ms_deform_attn.h"

namespace mask2former {
namespace {

constexpr int kWarpSize = 32;
constexpr int kThreadsPerBlock = 256;
constexpr int kWarpsPerBlock = kThreadsPerBlock / kWarpSize;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t x) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    x += __shfl_xor_sync(kFullMask, x, offset);
  }
  return x;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                   const int64_t* __restrict__ starts, const scalar_t* __restrict__ locations,
                   const scalar_t* __restrict__ weights, scalar_t* __restrict__ out,
                   const Sizes s) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t num_items = s.N * s.Lq * s.M;
  const int64_t MD = s.M * s.D;
  const int64_t LP = s.L * s.P;
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
       item < num_items; item += warp_stride) {
    const int64_t m = item % s.M;
    const int64_t n = item / (s.Lq * s.M);
    const scalar_t* value_nm = value + n * s.S * MD + m * s.D;
    for (int64_t d = lane; d < s.D; d += kWarpSize) {
      acc_t acc = 0;
      for (int64_t l = 0; l < s.L; ++l) {
        const int64_t height = shapes[2 * l];
        const int64_t width = shapes[2 * l + 1];
        const scalar_t* value_l = value_nm + starts[l] * MD + d;
        for (int64_t p = 0; p < s.P; ++p) {
          const int64_t k = item * LP + l * s.P + p;  // index of (n, q, m, l, p)
          BilinearPoint<acc_t> pt;
          if (!bilinear_point(static_cast<acc_t>(locations[2 * k]),
                              static_cast<acc_t>(locations[2 * k + 1]), height, width, pt)) {
            continue;
          }
          acc_t sample = 0;
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            if (pt.index[c] >= 0) {
              sample += pt.weight[c] * static_cast<acc_t>(value_l[pt.index[c] * MD]);
            }
          }
          acc += static_cast<acc_t>(weights[k]) * sample;
        }
      }
      out[item * s.D + d] = static_cast<scalar_t>(acc);
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    backward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                    const int64_t* __restrict__ starts, const scalar_t* __restrict__ locations,
                    const scalar_t* __restrict__ weights, const scalar_t* __restrict__ grad_out,
                    acc_t* __restrict__ grad_value, scalar_t* __restrict__ grad_locations,
                    scalar_t* __restrict__ grad_weights, const Sizes s) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t num_items = s.N * s.Lq * s.M;
  const int64_t MD = s.M * s.D;
  const int64_t LP = s.L * s.P;
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
       item < num_items; item += warp_stride) {
    const int64_t m = item % s.M;
    const int64_t n = item / (s.Lq * s.M);
    const int64_t offset_nm = n * s.S * MD + m * s.D;
    const scalar_t* g = grad_out + item * s.D;
    for (int64_t l = 0; l < s.L; ++l) {
      const int64_t height = shapes[2 * l];
      const int64_t width = shapes[2 * l + 1];
      const int64_t offset_l = offset_nm + starts[l] * MD;
      for (int64_t p = 0; p < s.P; ++p) {
        const int64_t k = item * LP + l * s.P + p;  // index of (n, q, m, l, p)
        const acc_t a = static_cast<acc_t>(weights[k]);
        BilinearPoint<acc_t> pt;
        // Same value on every lane: the branch is warp-uniform.
        const bool inside = bilinear_point(static_cast<acc_t>(locations[2 * k]),
                                           static_cast<acc_t>(locations[2 * k + 1]), height,
                                           width, pt);
        acc_t grad_a = 0;  // this lane's part of the dot products over D
        acc_t grad_x = 0;
        acc_t grad_y = 0;
        if (inside) {
          for (int64_t d = lane; d < s.D; d += kWarpSize) {
            const acc_t gd = static_cast<acc_t>(g[d]);
#pragma unroll
            for (int c = 0; c < 4; ++c) {
              if (pt.index[c] >= 0) {
                const int64_t offset = offset_l + pt.index[c] * MD + d;
                const acc_t dot = gd * static_cast<acc_t>(value[offset]);
                grad_a += pt.weight[c] * dot;
                grad_x += pt.weight_dx[c] * dot;
                grad_y += pt.weight_dy[c] * dot;
                atomicAdd(grad_value + offset, a * pt.weight[c] * gd);
              }
            }
          }
        }
        // Every lane of the warp reaches this point (uniform control flow above).
        grad_a = warp_sum(grad_a);
        grad_x = warp_sum(grad_x);
        grad_y = warp_sum(grad_y);
        if (lane == 0) {
          grad_weights[k] = static_cast<scalar_t>(grad_a);
          // d x / d loc_x = W, d y / d loc_y = H
          grad_locations[2 * k] = static_cast<scalar_t>(a * static_cast<acc_t>(width) * grad_x);
          grad_locations[2 * k + 1] =
              static_cast<scalar_t>(a * static_cast<acc_t>(height) * grad_y);
        }
      }
    }
  }
}

// Blocks for `num_items` warps; the kernels loop when the grid is capped.
unsigned int num_blocks(int64_t num_items) {
  const int64_t blocks = (num_items + kWarpsPerBlock - 1) / kWarpsPerBlock;
  return static_cast<unsigned int>(std::min<int64_t>(blocks, int64_t{1} << 20));
}

void check_cuda(const at::Tensor& value) {
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn CUDA kernel: value must be a CUDA tensor");
}

}  // namespace

at::Tensor forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                        const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                        const at::Tensor& attention_weights) {
  const Sizes s = check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                               attention_weights);
  check_cuda(value);
  const c10::cuda::CUDAGuard device_guard(value.device());
  const at::Tensor value_c = value.contiguous();
  const at::Tensor shapes_c = spatial_shapes.to(value.device()).contiguous();
  const at::Tensor starts_c = level_start_index.to(value.device()).contiguous();
  const at::Tensor locations_c = sampling_locations.contiguous();
  const at::Tensor weights_c = attention_weights.contiguous();
  at::Tensor out = at::empty({s.N, s.Lq, s.M * s.D}, value.options());  // (N, Lq, M*D)
  const int64_t num_items = s.N * s.Lq * s.M;
  if (num_items == 0 || s.D == 0) {
    return out.zero_();
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, value.scalar_type(),
      "ms_deform_attn_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        forward_kernel<scalar_t, acc_t><<<num_blocks(num_items), kThreadsPerBlock, 0, stream>>>(
            value_c.const_data_ptr<scalar_t>(), shapes_c.const_data_ptr<int64_t>(),
            starts_c.const_data_ptr<int64_t>(), locations_c.const_data_ptr<scalar_t>(),
            weights_c.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), s);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  const Sizes s = check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                               attention_weights);
  check_cuda(value);
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == s.N &&
                  grad_output.size(1) == s.Lq && grad_output.size(2) == s.M * s.D,
              "grad_output must be (N, Lq, M*D), got ", grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == value.scalar_type() &&
                  grad_output.device() == value.device(),
              "grad_output must have the dtype and device of value");
  const c10::cuda::CUDAGuard device_guard(value.device());
  const at::Tensor value_c = value.contiguous();
  const at::Tensor shapes_c = spatial_shapes.to(value.device()).contiguous();
  const at::Tensor starts_c = level_start_index.to(value.device()).contiguous();
  const at::Tensor locations_c = sampling_locations.contiguous();
  const at::Tensor weights_c = attention_weights.contiguous();
  const at::Tensor grad_c = grad_output.contiguous();
  const auto acc_dtype = at::toOpMathType(value.scalar_type());
  // (N, S, M, D) accumulated in opmath precision, cast to value's dtype at the end
  at::Tensor grad_value_acc = at::zeros(value_c.sizes(), value_c.options().dtype(acc_dtype));
  at::Tensor grad_locations = at::zeros_like(locations_c);  // (N, Lq, M, L, P, 2)
  at::Tensor grad_weights = at::zeros_like(weights_c);      // (N, Lq, M, L, P)
  const int64_t num_items = s.N * s.Lq * s.M;
  if (num_items > 0) {
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::ScalarType::Half, at::ScalarType::BFloat16, value.scalar_type(),
        "ms_deform_attn_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          backward_kernel<scalar_t, acc_t><<<num_blocks(num_items), kThreadsPerBlock, 0, stream>>>(
              value_c.const_data_ptr<scalar_t>(), shapes_c.const_data_ptr<int64_t>(),
              starts_c.const_data_ptr<int64_t>(), locations_c.const_data_ptr<scalar_t>(),
              weights_c.const_data_ptr<scalar_t>(), grad_c.const_data_ptr<scalar_t>(),
              grad_value_acc.mutable_data_ptr<acc_t>(), grad_locations.mutable_data_ptr<scalar_t>(),
              grad_weights.mutable_data_ptr<scalar_t>(), s);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  return {grad_value_acc.to(value.scalar_type()), grad_locations, grad_weights};
}

}  // namespace mask2former
