// Plain C++ interface of the CUDA kernels (no torch, no CUDA headers needed by callers).
#pragma once
#include <cstdint>
#include <string>

namespace bigperf::cuda {

// Returns "" on success or a message naming what failed (device, launch, arch).
int device_count();
std::string runtime_info();
}  // namespace bigperf::cuda
