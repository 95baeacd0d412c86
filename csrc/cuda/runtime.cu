#include <cuda_runtime.h>

#include "cuda/cuda_api.h"
#include "cuda/launch_util.h"

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

namespace {

std::vector<std::string> split_archs(const std::string& raw, bool from_list) {
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

}  // namespace

std::vector<std::string> compiled_archs() {
  // The build's own list when setup.py passes it (keeps the "a" of 90a); otherwise nvcc's
  // __CUDA_ARCH_LIST__ (e.g. "800,900"), which names the virtual archs without suffixes.
#if defined(BIGPERF_CUDA_ARCHS_STR)
  return split_archs(BIGPERF_CUDA_ARCHS_STR, false);
#elif defined(__CUDA_ARCH_LIST__)
  return split_archs(BIGPERF_STR(__CUDA_ARCH_LIST__), true);
#else
  return {};
#endif
}

std::vector<std::string> compiled_ptx_archs() {
  // Only setup.py knows which -gencode lines carry PTX (code=compute_XY).
#if defined(BIGPERF_CUDA_PTX_ARCHS_STR)
  return split_archs(BIGPERF_CUDA_PTX_ARCHS_STR, false);
#else
  return {};
#endif
}

void set_pointer_checks(bool on) { util::pointer_checks_flag().store(on, std::memory_order_relaxed); }

bool pointer_checks() { return util::pointer_checks_flag().load(std::memory_order_relaxed); }

}  // namespace bigperf::cuda
