#include <cuda_runtime.h>

#include "cuda/cuda_api.h"

namespace bigperf::cuda {

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

std::string runtime_info() {
  int runtime = 0, driver = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);
  return "runtime " + std::to_string(runtime) + ", driver " + std::to_string(driver);
}

}  // namespace bigperf::cuda
