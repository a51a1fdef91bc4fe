// Operator registration of multi-scale deformable attention (namespace "mask2former") and the
// input checks shared by the CPU and CUDA kernels. The autograd formula and the shape functions
// used by torch.compile are registered from Python (mask2former/layers/ms_deform_attn_dispatch.py).
#include <torch/extension.h>
#include <torch/library.h>

#include "ms_deform_attn.h"

namespace mask2former {

Sizes check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, "value must be (N, S, M, D), got ", value.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
              "spatial_shapes must be (L, 2), got ", spatial_shapes.sizes());
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
              "spatial_shapes and level_start_index must be int64");
  const int64_t L = spatial_shapes.size(0);
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == L,
              "level_start_index must be (L,) with L = ", L, ", got ", level_start_index.sizes());
  const Sizes s{value.size(0), value.size(1), value.size(2), value.size(3),
                sampling_locations.dim() == 6 ? sampling_locations.size(1) : 0, L,
                sampling_locations.dim() == 6 ? sampling_locations.size(4) : 0};
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(0) == s.N &&
                  sampling_locations.size(2) == s.M && sampling_locations.size(3) == L &&
                  sampling_locations.size(5) == 2,
              "sampling_locations must be (N, Lq, M, L, P, 2) = (", s.N, ", Lq, ", s.M, ", ", L,
              ", P, 2), got ", sampling_locations.sizes());
  TORCH_CHECK(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5),
              "attention_weights must be (N, Lq, M, L, P) = ", sampling_locations.sizes().slice(0, 5),
              ", got ", attention_weights.sizes());
  TORCH_CHECK(sampling_locations.scalar_type() == value.scalar_type() &&
                  attention_weights.scalar_type() == value.scalar_type(),
              "value, sampling_locations and attention_weights must share one dtype, got ",
              value.scalar_type(), ", ", sampling_locations.scalar_type(), ", ",
              attention_weights.scalar_type());
  TORCH_CHECK(sampling_locations.device() == value.device() &&
                  attention_weights.device() == value.device(),
              "value, sampling_locations and attention_weights must be on one device");
  return s;
}

}  // namespace mask2former

TORCH_LIBRARY(mask2former, m) {
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, Tensor grad_output) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mask2former, CPU, m) {
  m.impl("ms_deform_attn", &mask2former::forward_cpu);
  m.impl("ms_deform_attn_backward", &mask2former::backward_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(mask2former, CUDA, m) {
  m.impl("ms_deform_attn", &mask2former::forward_cuda);
  m.impl("ms_deform_attn_backward", &mask2former::backward_cuda);
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "Compiled multi-scale deformable attention (ops in torch.ops.mask2former)";
#ifdef WITH_CUDA
  module.attr("WITH_CUDA") = true;
#else
  module.attr("WITH_CUDA") = false;
#endif
}
