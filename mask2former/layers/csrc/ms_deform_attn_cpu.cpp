// CPU kernels of multi-scale deformable attention (float32 and float64).
//
// Forward: parallel over (batch, query); the D channels of one head are contiguous in value and
// output, so the inner loops run over channels and vectorise.
// Backward: parallel over (batch, head). Every write (grad_value[n, :, m, :] and the location and
// weight gradients of head m) belongs to exactly one task, so there are no races and the result
// does not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "ms_deform_attn.h"

#include <type_traits>

// Function multi-versioning (GCC 11+ on x86-64): the float32 kernels are compiled for
// x86-64-v3 (AVX2 + FMA) and for the default target, and the loader picks the clone the CPU
// supports: a portable build (no -march flags) that uses the vector units of the machine it
// runs on. On this project's 2-core AMD EPYC, the forward of the R50 encoder's layer
// (19,950 queries) took 141 ms before, 50 ms with the clone and the accumulator in registers.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 11
#define M2F_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define M2F_ALWAYS_INLINE __attribute__((always_inline))
#else
#define M2F_CPU_CLONES
#define M2F_ALWAYS_INLINE
#endif

namespace mask2former {
namespace {

void check_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
               const at::Tensor& level_start_index, const Sizes& s) {
  TORCH_CHECK(value.device().is_cpu() && spatial_shapes.device().is_cpu() &&
                  level_start_index.device().is_cpu(),
              "ms_deform_attn CPU kernel: all inputs must be CPU tensors");
  const auto shapes = spatial_shapes.accessor<int64_t, 2>();
  const auto starts = level_start_index.accessor<int64_t, 1>();
  for (int64_t l = 0; l < s.L; ++l) {
    TORCH_CHECK(shapes[l][0] >= 0 && shapes[l][1] >= 0 && starts[l] >= 0 &&
                    starts[l] + shapes[l][0] * shapes[l][1] <= s.S,
                "level ", l, " of size ", shapes[l][0], "x", shapes[l][1], " starting at ",
                starts[l], " does not fit in value (S = ", s.S, ")");
  }
}

// Samples one head of one query: out[0:D] = sum over levels, points and corners of
// weight * bilinear coefficient * value row. kD > 0 fixes D at compile time, so that the
// accumulator lives in registers; kD == 0 reads D from s.
template <typename scalar_t, int kD>
M2F_ALWAYS_INLINE inline void sample_head(const scalar_t* value_n, const int64_t* shapes,
                                          const int64_t* starts, const scalar_t* locations,
                                          const scalar_t* weights, int64_t item, int64_t m,
                                          scalar_t* __restrict__ out, const Sizes& s) {
  const int64_t D = kD > 0 ? kD : s.D;
  const int64_t MD = s.M * D;
  const int64_t LP = s.L * s.P;
  scalar_t acc[kD > 0 ? kD : 1];
  scalar_t* __restrict__ o = kD > 0 ? acc : out;
  for (int64_t d = 0; d < D; ++d) {
    o[d] = 0;
  }
  for (int64_t l = 0; l < s.L; ++l) {
    const int64_t height = shapes[2 * l];
    const int64_t width = shapes[2 * l + 1];
    const scalar_t* value_l = value_n + starts[l] * MD + m * D;
    for (int64_t p = 0; p < s.P; ++p) {
      const int64_t k = item * LP + l * s.P + p;  // index of (n, q, m, l, p)
      BilinearPoint<scalar_t> pt;
      if (!bilinear_point(locations[2 * k], locations[2 * k + 1], height, width, pt)) {
        continue;
      }
      for (int c = 0; c < 4; ++c) {
        if (pt.index[c] < 0) {
          continue;
        }
        const scalar_t coef = weights[k] * pt.weight[c];
        const scalar_t* __restrict__ v = value_l + pt.index[c] * MD;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          o[d] += coef * v[d];
        }
      }
    }
  }
  if (kD > 0) {
    for (int64_t d = 0; d < D; ++d) {
      out[d] = acc[d];
    }
  }
}

// The forward for queries [begin, end) of the flattened (n, q) range.
template <typename scalar_t>
M2F_ALWAYS_INLINE inline void forward_rows(int64_t begin, int64_t end, const scalar_t* value,
                                           const int64_t* shapes, const int64_t* starts,
                                           const scalar_t* locations, const scalar_t* weights,
                                           scalar_t* out, const Sizes& s) {
  const int64_t MD = s.M * s.D;
  for (int64_t nq = begin; nq < end; ++nq) {
    const scalar_t* value_n = value + (nq / s.Lq) * s.S * MD;
    for (int64_t m = 0; m < s.M; ++m) {
      const int64_t item = nq * s.M + m;  // index of (n, q, m)
      scalar_t* o = out + item * s.D;
      if (s.D == 32) {
        sample_head<scalar_t, 32>(value_n, shapes, starts, locations, weights, item, m, o, s);
      } else {
        sample_head<scalar_t, 0>(value_n, shapes, starts, locations, weights, item, m, o, s);
      }
    }
  }
}

// float32, the type that matters for speed, in two builds chosen at load time by the CPU:
// AVX2 + FMA (x86-64-v3) and the compiler's default target.
M2F_CPU_CLONES void forward_rows_float(int64_t begin, int64_t end, const float* value,
                                       const int64_t* shapes, const int64_t* starts,
                                       const float* locations, const float* weights, float* out,
                                       const Sizes& s) {
  forward_rows<float>(begin, end, value, shapes, starts, locations, weights, out, s);
}

template <typename scalar_t>
void forward_kernel(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                    const scalar_t* locations, const scalar_t* weights, scalar_t* out,
                    const Sizes s) {
  const int64_t LP = s.L * s.P;
  // Grain: about 16k multiply-adds of channels per task.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, s.M * LP * 4 * s.D));
  at::parallel_for(0, s.N * s.Lq, grain, [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      forward_rows_float(begin, end, value, shapes, starts, locations, weights, out, s);
    } else {
      forward_rows<scalar_t>(begin, end, value, shapes, starts, locations, weights, out, s);
    }
  });
}

// The backward for the (n, m) pairs [begin, end).
template <typename scalar_t>
M2F_ALWAYS_INLINE inline void backward_heads(int64_t begin, int64_t end, const scalar_t* value,
                                             const int64_t* shapes, const int64_t* starts,
                                             const scalar_t* locations, const scalar_t* weights,
                                             const scalar_t* grad_out, scalar_t* grad_value,
                                             scalar_t* grad_locations, scalar_t* grad_weights,
                                             const Sizes& s) {
  const int64_t MD = s.M * s.D;
  const int64_t LP = s.L * s.P;
  for (int64_t nm = begin; nm < end; ++nm) {
    const int64_t n = nm / s.M;
    const int64_t m = nm % s.M;
    for (int64_t q = 0; q < s.Lq; ++q) {
      const int64_t item = (n * s.Lq + q) * s.M + m;  // index of (n, q, m)
      const scalar_t* __restrict__ g = grad_out + item * s.D;
      for (int64_t l = 0; l < s.L; ++l) {
        const int64_t height = shapes[2 * l];
        const int64_t width = shapes[2 * l + 1];
        const int64_t offset_l = (n * s.S + starts[l]) * MD + m * s.D;
        for (int64_t p = 0; p < s.P; ++p) {
          const int64_t k = item * LP + l * s.P + p;  // index of (n, q, m, l, p)
          BilinearPoint<scalar_t> pt;
          if (!bilinear_point(locations[2 * k], locations[2 * k + 1], height, width, pt)) {
            continue;  // gradients stay zero
          }
          const scalar_t a = weights[k];
          scalar_t grad_a = 0;
          scalar_t grad_x = 0;
          scalar_t grad_y = 0;
          for (int c = 0; c < 4; ++c) {
            if (pt.index[c] < 0) {
              continue;
            }
            const scalar_t coef = a * pt.weight[c];
            const scalar_t* __restrict__ v = value + offset_l + pt.index[c] * MD;
            scalar_t* __restrict__ gv = grad_value + offset_l + pt.index[c] * MD;
            scalar_t dot = 0;  // <grad_out, value at the corner>
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < s.D; ++d) {
              dot += g[d] * v[d];
              gv[d] += coef * g[d];
            }
            grad_a += pt.weight[c] * dot;
            grad_x += pt.weight_dx[c] * dot;
            grad_y += pt.weight_dy[c] * dot;
          }
          grad_weights[k] = grad_a;
          // d x / d loc_x = W, d y / d loc_y = H
          grad_locations[2 * k] = a * static_cast<scalar_t>(width) * grad_x;
          grad_locations[2 * k + 1] = a * static_cast<scalar_t>(height) * grad_y;
        }
      }
    }
  }
}

M2F_CPU_CLONES void backward_heads_float(int64_t begin, int64_t end, const float* value,
                                         const int64_t* shapes, const int64_t* starts,
                                         const float* locations, const float* weights,
                                         const float* grad_out, float* grad_value,
                                         float* grad_locations, float* grad_weights,
                                         const Sizes& s) {
  backward_heads<float>(begin, end, value, shapes, starts, locations, weights, grad_out,
                        grad_value, grad_locations, grad_weights, s);
}

template <typename scalar_t>
void backward_kernel(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                     const scalar_t* locations, const scalar_t* weights,
                     const scalar_t* grad_out, scalar_t* grad_value, scalar_t* grad_locations,
                     scalar_t* grad_weights, const Sizes s) {
  at::parallel_for(0, s.N * s.M, 1, [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      backward_heads_float(begin, end, value, shapes, starts, locations, weights, grad_out,
                           grad_value, grad_locations, grad_weights, s);
    } else {
      backward_heads<scalar_t>(begin, end, value, shapes, starts, locations, weights, grad_out,
                               grad_value, grad_locations, grad_weights, s);
    }
  });
}

}  // namespace

at::Tensor forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                       const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                       const at::Tensor& attention_weights) {
  const Sizes s = check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                               attention_weights);
  check_cpu(value, spatial_shapes, level_start_index, s);
  const at::Tensor value_c = value.contiguous();
  const at::Tensor shapes_c = spatial_shapes.contiguous();
  const at::Tensor starts_c = level_start_index.contiguous();
  const at::Tensor locations_c = sampling_locations.contiguous();
  const at::Tensor weights_c = attention_weights.contiguous();
  at::Tensor out = at::empty({s.N, s.Lq, s.M * s.D}, value.options());  // (N, Lq, M*D)
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    forward_kernel<scalar_t>(value_c.const_data_ptr<scalar_t>(),
                             shapes_c.const_data_ptr<int64_t>(), starts_c.const_data_ptr<int64_t>(),
                             locations_c.const_data_ptr<scalar_t>(),
                             weights_c.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                             s);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  const Sizes s = check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                               attention_weights);
  check_cpu(value, spatial_shapes, level_start_index, s);
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == s.N &&
                  grad_output.size(1) == s.Lq && grad_output.size(2) == s.M * s.D,
              "grad_output must be (N, Lq, M*D), got ", grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == value.scalar_type() && grad_output.device().is_cpu(),
              "grad_output must be a CPU tensor of the dtype of value");
  const at::Tensor value_c = value.contiguous();
  const at::Tensor shapes_c = spatial_shapes.contiguous();
  const at::Tensor starts_c = level_start_index.contiguous();
  const at::Tensor locations_c = sampling_locations.contiguous();
  const at::Tensor weights_c = attention_weights.contiguous();
  const at::Tensor grad_c = grad_output.contiguous();
  at::Tensor grad_value = at::zeros_like(value_c);              // (N, S, M, D)
  at::Tensor grad_locations = at::zeros_like(locations_c);      // (N, Lq, M, L, P, 2)
  at::Tensor grad_weights = at::zeros_like(weights_c);          // (N, Lq, M, L, P)
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    backward_kernel<scalar_t>(
        value_c.const_data_ptr<scalar_t>(), shapes_c.const_data_ptr<int64_t>(),
        starts_c.const_data_ptr<int64_t>(), locations_c.const_data_ptr<scalar_t>(),
        weights_c.const_data_ptr<scalar_t>(), grad_c.const_data_ptr<scalar_t>(),
        grad_value.mutable_data_ptr<scalar_t>(), grad_locations.mutable_data_ptr<scalar_t>(),
        grad_weights.mutable_data_ptr<scalar_t>(), s);
  });
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace mask2former
