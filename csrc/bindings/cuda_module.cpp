// bigperf._C_cuda: CUDA kernels behind a raw-pointer interface (no torch headers).
#include <pybind11/pybind11.h>

#include "cuda/cuda_api.h"

namespace py = pybind11;

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "bigperf CUDA kernels (raw-pointer interface; see bigperf/ops for the torch ops)";
  m.def("device_count", &bigperf::cuda::device_count, "CUDA devices visible (0 without a driver)");
  m.def("runtime_info", &bigperf::cuda::runtime_info);
}
