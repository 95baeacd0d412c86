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

#define BIGPERF_STR2(...) #__VA_ARGS__
#define BIGPERF_STR(...) BIGPERF_STR2(__VA_ARGS__)

std::vector<std::string> compiled_archs() {
  // The build's own list when setup.py passes it (keeps the "a" of 90a); otherwise nvcc's
  // __CUDA_ARCH_LIST__ (e.g. "800,900"), which names the virtual archs without suffixes.
#if defined(BIGPERF_CUDA_ARCHS_STR)
  const std::string raw = BIGPERF_CUDA_ARCHS_STR;
  const bool from_list = false;
#elif defined(__CUDA_ARCH_LIST__)
  const std::string raw = BIGPERF_STR(__CUDA_ARCH_LIST__);
  const bool from_list = true;
#else
  const std::string raw;
  const bool from_list = false;
#endif
  std::vector<std::string> archs;
  std::string item;
  for (char c : raw + ";") {
    if (c == ';' || c == ',' || c == ' ') {
      if (!item.empty()) {
        // __CUDA_ARCH_LIST__ writes 900 for sm_90: drop the trailing zero.
        if (from_list && item.size() > 1 && item.back() == '0') item.pop_back();
        archs.push_back(item);
      }
      item.clear();
    } else {
      item += c;
    }
  }
  return archs;
}

}  // namespace bigperf::cuda
